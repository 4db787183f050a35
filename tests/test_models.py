"""Models are pure descriptions: phases, contexts and networks, with no knowledge of
processes or of the training loop."""

from __future__ import annotations

import math

import pytest
import torch

import gankit
from gankit.errors import ConfigError
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


@pytest.mark.parametrize("preset", ["dcgan", "cgan"])
def test_temperature_scales_the_draws_samples_come_from_and_nothing_training_draws(preset):
    cool, warm = (
        gankit.build(gankit.configure(preset, temperature=t, ema=0.9)) for t in (1.0, 1.5)
    )
    warm.load_state_dict(cool.state_dict())
    for model in (cool, warm):
        _train_generator_a_little(model)  # the same steps: the same weights
    seeded = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    z = cool.sample_latent(6, seeded())
    torch.testing.assert_close(warm.sample_latent(6, seeded()), 1.5 * z)
    assert torch.equal(warm.noise(6, seeded()), cool.noise(6, seeded()))  # training's draws
    images = warm.sample(6, rng=seeded())
    assert not torch.equal(images, cool.sample(6, rng=seeded()))
    # the EMA's batch-norm statistics are estimated on the training distribution, so the
    # samples are those of the cool model from its latents times the temperature
    rng = seeded()
    labels = cool.sample_labels(6, rng)  # drawn before the latents, as `sample` does
    assert torch.equal(images, cool.generate(1.5 * cool.noise(6, rng), labels))


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


@pytest.mark.parametrize("preset", ["gan", "dcgan", "wgan-gp", "bigan"])
def test_a_packing_discriminator_judges_consecutive_images_together(preset):
    torch.manual_seed(0)
    model = gankit.build(gankit.configure(preset, pack=2))
    d = model.nets["discriminator"].eval()  # batch statistics would mix the packs
    x = batch(8)
    if preset == "bigan":
        z = model.noise(8)
        logits = model.critic(x, z)
        first = d(torch.cat([x[0], x[1]])[None], torch.cat([z[0], z[1]])[None])
    else:
        logits = model.critic(x)
        first = d(torch.cat([x[0], x[1]])[None])
    assert logits.shape == (4,)
    torch.testing.assert_close(logits[0], first.reshape(()))
    # whole packs reordered: the same verdicts reordered; images swapped between packs: new
    order = [2, 3, 0, 1, 4, 5, 6, 7]
    swap = [0, 2, 1, 3, 4, 5, 6, 7]
    if preset == "bigan":
        torch.testing.assert_close(model.critic(x[order], z[order]), logits[[1, 0, 2, 3]])
        assert not torch.allclose(model.critic(x[swap], z[swap])[:2], logits[:2])
    else:
        torch.testing.assert_close(model.critic(x[order]), logits[[1, 0, 2, 3]])
        assert not torch.allclose(model.critic(x[swap])[:2], logits[:2])
    # both phases run on packs, the penalty included
    ctx = model.context(x, None, torch.Generator().manual_seed(0))
    for phase in model.phases(reuse=False):
        loss, _ = phase.loss(ctx)
        assert torch.isfinite(loss)


def test_packing_is_refused_where_it_cannot_apply():
    with pytest.raises(ConfigError, match="model.pack = 2 is for an unconditional"):
        gankit.configure("cgan", pack=2)
    with pytest.raises(ConfigError, match="model.pack = 2 is for an unconditional"):
        gankit.configure("vae", pack=2)
    with pytest.raises(ConfigError, match="not a multiple of model.pack = 3"):
        gankit.configure("gan", pack=3, batch_size=64)
    with pytest.raises(ConfigError, match="model.pack"):
        gankit.configure("gan", pack=0)


@torch.no_grad()
def test_a_calibrated_gaussian_vae_reports_its_elbo_at_the_fitted_variance():
    torch.manual_seed(0)
    model = gankit.build(gankit.configure("vae", recon="gaussian")).eval()
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    metrics = model.reconstruction_metrics(images, batch_size=4)
    # by hand: one seeded draw of z per image, σ² the mean squared error over all images
    x = model.prepare(images)
    mu, logvar = model.encode(x)
    gen = torch.Generator().manual_seed(0)  # drawn batch by batch, as the metric does
    eps = torch.cat(
        [torch.randn(mu[:4].shape, generator=gen), torch.randn(mu[4:].shape, generator=gen)]
    )
    means = model.decode(mu + torch.exp(0.5 * logvar) * eps, use_ema=False)
    variance = float((means - x).square().mean())
    nll = 0.5 * 784 * (math.log(2 * math.pi * variance) + 1)
    kl = float(0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(1).mean())
    assert metrics["kl"] == pytest.approx(kl, rel=1e-5)
    assert metrics["elbo"] == pytest.approx(-nll - kl, rel=1e-5)


@pytest.mark.parametrize("preset", ["gan", "dcgan", "cgan"])
def test_feature_matching_adds_the_gap_between_d_feature_means_to_g_loss(preset):
    torch.manual_seed(0)
    plain = gankit.build(gankit.configure(preset, feature_matching=0))
    model = gankit.build(gankit.configure(preset, feature_matching=0.5))
    model.load_state_dict(plain.state_dict())
    d = model.nets["discriminator"].eval()  # one batch's statistics would differ from another's
    plain.nets["discriminator"].eval()
    x = batch(8)
    features = d.features(x)
    assert features.dim() == 2 and features.shape[0] == 8 and features.shape[1] > 1
    assert float(model.feature_gap(x, x, d).detach()) == 0.0  # the real batch matches itself
    losses = {}
    for name, m in (("plain", plain), ("matching", model)):
        ctx = m.context(x, None, torch.Generator().manual_seed(4))
        losses[name] = m.phases(reuse=False)[1].loss(ctx)
    (loss, stats), (base, _) = losses["matching"], losses["plain"]
    gap = stats["feature_gap"]
    assert gap > 0
    torch.testing.assert_close(loss, base + 0.5 * gap)
    # G is pulled towards the real means: the gap's gradient reaches G's weights
    g = model.nets["generator"]
    fake = model._run_generator(g, model.noise(8), model.sample_labels(8))
    (grad,) = torch.autograd.grad(model.feature_gap(x, fake, d), [next(g.parameters())])
    assert grad.abs().sum() > 0


def test_feature_matching_is_refused_without_a_discriminator_to_match():
    for preset in ("bigan", "vae"):
        with pytest.raises(ConfigError, match="feature_matching is for family 'gan'"):
            gankit.configure(preset, feature_matching=1.0)
    with pytest.raises(ConfigError, match="loss.feature_matching"):
        gankit.configure("gan", feature_matching=-1.0)
