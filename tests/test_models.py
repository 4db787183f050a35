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


def _train_generator_a_little(model, steps: int = 3) -> None:
    """Move G's weights and batch-norm statistics, folding each step into the EMA."""
    g = model.nets["generator"]
    for i in range(steps):
        with torch.no_grad():
            for p in g.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 0.05)
        g.train()
        model.decode(model.noise(16), model.sample_labels(16), use_ema=False)  # G's statistics
        model.update_ema()


@pytest.mark.parametrize("preset", ["dcgan", "cgan", "bigan"])
def test_ema_batch_norm_statistics_are_those_of_the_ema_weights(preset):
    model = gankit.build(preset)
    _train_generator_a_little(model)
    first_bn = next(m for m in model.ema.modules() if isinstance(m, torch.nn.BatchNorm1d))
    copied = first_bn.running_mean.clone()
    assert torch.equal(copied, next(
        m for m in model.nets["generator"].modules() if isinstance(m, torch.nn.BatchNorm1d)
    ).running_mean)  # fmt: skip
    images = model.sample(4, rng=torch.Generator().manual_seed(0))
    # the statistics now are the mean of the EMA's own first layer over the fixed draws
    rng = torch.Generator().manual_seed(0)
    pre_norm = []
    for _ in range(1024 // 256):
        z, y = model.noise(256, rng), model.sample_labels(256, rng)
        if y is not None:  # a conditional G reads z beside a one-hot label
            z = torch.cat([z, torch.nn.functional.one_hot(y, model.config.num_classes)], 1)
        pre_norm.append(model.ema.body[0](z))  # the first layer, "fc N nobias"
    expected = torch.cat(pre_norm).mean(0)
    torch.testing.assert_close(first_bn.running_mean, expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(copied, expected, atol=1e-3)
    assert images.dtype == torch.uint8 and first_bn.momentum == 0.1  # restored
    # they depend on the EMA weights alone: other G statistics give the same samples
    again = model.sample(4, rng=torch.Generator().manual_seed(0))
    model.nets["generator"].apply(
        lambda m: m.reset_running_stats() if isinstance(m, torch.nn.BatchNorm1d) else None
    )
    model.recompute_ema_stats()
    assert torch.equal(images, again)
    assert torch.equal(images, model.sample(4, rng=torch.Generator().manual_seed(0)))


def test_ema_statistics_copied_on_request_and_for_a_decoder():
    model = gankit.build(gankit.configure("dcgan", ema_stats="copy"))
    _train_generator_a_little(model)
    g_bn, ema_bn = (
        next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm1d))
        for net in (model.nets["generator"], model.ema)
    )
    model.sample(4, rng=torch.Generator().manual_seed(0))
    assert torch.equal(g_bn.running_mean, ema_bn.running_mean)
    ae = gankit.build(gankit.configure("ae", ema=0.9))
    assert ae.ema is not None and not ae._recomputes_ema_stats  # fed codes, not noise


def test_a_checkpoint_holds_the_statistics_samples_use():
    model = gankit.build("dcgan")
    _train_generator_a_little(model)
    saved = model.weights()
    key = next(k for k in saved if k.startswith("ema/") and k.endswith("running_var"))
    g_key = "net/generator/" + key[len("ema/") :]
    assert not torch.allclose(saved[key], saved[g_key])  # estimated, not G's copy
    images = model.sample(4, rng=torch.Generator().manual_seed(0))
    fresh = gankit.build("dcgan")
    fresh.load_weights(saved)
    assert torch.equal(fresh.sample(4, rng=torch.Generator().manual_seed(0)), images)
    # loading keeps the saved estimate, bit for bit, whatever layout the loader computes in
    fresh = gankit.build("dcgan").to(memory_format=torch.channels_last)
    fresh.load_weights(saved)
    assert all(torch.equal(v, saved[k]) for k, v in fresh.weights().items())
    # a checkpoint written before the estimate (statistics copied from G) gets one
    old = {k: v for k, v in saved.items() if k != "ema/ema_stats_for"}
    old |= {
        k: saved["net/generator/" + k[len("ema/") :]]
        for k in saved
        if k.startswith("ema/") and "running_" in k
    }
    fresh = gankit.build("dcgan")
    fresh.load_weights(old)
    torch.testing.assert_close(fresh.weights()[key], saved[key])


def test_estimating_ema_statistics_draws_no_global_random_numbers():
    layers = gankit.configure("dcgan").model.generator.layers
    with_dropout = [*layers[:3], "dropout 0.5", *layers[3:]]  # after the first batch norm
    model = gankit.build(gankit.configure("dcgan", model__generator__layers=with_dropout))
    _train_generator_a_little(model, steps=1)
    before = torch.random.get_rng_state()
    model.recompute_ema_stats()
    assert torch.equal(torch.random.get_rng_state(), before)  # a resume stays exact
    assert model.ema.training  # and the mode is as it was
