"""Models are pure descriptions: phases, contexts and networks, with no knowledge of
processes or of the training loop."""

from __future__ import annotations

import pytest
import torch

import gankit
from gankit.models import Context


def batch(n: int = 8) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28) * 2 - 1


def test_phases_describe_without_changing_the_model():
    model = gankit.build("gan")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    keeping = model.phases(reuse=True)
    plain = model.phases(reuse=False)
    assert keeping[0].keeps == ("generator",) and plain[0].keeps == ()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert set(vars(model)) == set(vars(gankit.build("gan")))  # no attribute set by phases()
    # each list behaves as it says, whichever was asked for last
    ctx = model.context(batch(), None, torch.Generator().manual_seed(0))
    keeping[0].loss(ctx)
    assert "fake" in ctx.kept
    ctx = model.context(batch(), None, torch.Generator().manual_seed(0))
    plain[0].loss(ctx)
    assert ctx.kept == {}


def test_a_model_draws_its_noise_through_the_context():
    model = gankit.build("cgan")
    calls = []

    def half(n, sample):  # a stand-in for a process keeping its share of a global draw
        calls.append(n)
        return sample(2 * n)[n:]

    ctx = model.context(batch(4), None, torch.Generator().manual_seed(1), draw=half)
    whole = model.context(batch(8), None, torch.Generator().manual_seed(1))
    assert calls == [4, 4]  # the noise, then the fake labels
    assert torch.equal(ctx.z, whole.z[4:]) and torch.equal(ctx.y_fake, whole.y_fake[4:])
    assert not hasattr(model, "shard") and not hasattr(model, "routed")


def test_a_loss_calls_the_networks_the_context_names():
    model = gankit.build("wgan-gp")
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, *args):
            seen.append("discriminator")
            return self.net(*args)

    ctx = model.context(batch(), None, torch.Generator().manual_seed(2))
    ctx.nets = dict(ctx.nets) | {"discriminator": Spy(model.nets["discriminator"])}
    phase = model.phases()[0]
    loss, stats = phase.loss(ctx)
    assert torch.isfinite(loss) and "gp" in stats
    assert len(seen) == 3  # real, fake and the penalty's interpolates
    assert isinstance(ctx, Context)


def test_a_lazy_penalty_comes_every_kth_critic_update_at_k_times_the_weight():
    every = gankit.configure("wgan-gp", gp_every=1)
    lazy = gankit.configure("wgan-gp", gp_every=3)
    torch.manual_seed(0)
    model = gankit.build(every)
    x = batch()

    def critic_loss(config, index):
        model.config = config.model
        ctx = model.context(x, None, torch.Generator().manual_seed(3))
        ctx.index = index
        loss, stats = model.phases(reuse=False)[0].loss(ctx)
        return float(loss.detach()), stats

    full, stats = critic_loss(every, 0)
    gp = float(stats["gp"])
    assert gp > 0
    for index in (0, 3, 6):  # the penalty's updates: weight 3λ
        loss, stats = critic_loss(lazy, index)
        assert float(stats["gp"]) == gp
        assert loss == pytest.approx(full + 2 * 10.0 * gp, rel=1e-5)
    for index in (1, 2, 4):  # the others: the Wasserstein loss alone, no double backward
        loss, stats = critic_loss(lazy, index)
        assert "gp" not in stats
        assert loss == pytest.approx(full - 10.0 * gp, rel=1e-5, abs=1e-5)
