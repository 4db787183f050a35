"""Every preset: parameter counts from the reference widths, shapes, and which weights move."""

from __future__ import annotations

import pytest
import torch

import gankit
from gankit.nets import count_parameters
from gankit.presets import DEFAULT_NAMES, preset_names
from gankit.runs import read_metrics
from gankit.training import Trainer


def fc(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def conv(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k + c_out


def mlp(*widths: int) -> int:
    return sum(fc(a, b) for a, b in zip(widths, widths[1:], strict=False))


# Counts implied by PRESETS.md, written from its widths (not from gankit's layer lists).
# tf-slim's batch norm learns a shift β per channel and no scale; the TF tutorial's own
# batch norm (dcgan-001) learns both γ and β.
EXPECTED = {
    "ae-000": {"encoder": mlp(784, 128, 64, 12, 3), "generator": mlp(3, 12, 64, 128, 784)},
    "vae-000": {"encoder": mlp(784, 128, 64, 12, 6), "generator": mlp(3, 12, 64, 128, 784)},
    "gan-000": {"generator": mlp(96, 1024, 1024, 784), "discriminator": mlp(784, 256, 256, 1)},
    "dcgan-000": {
        "generator": fc(96, 1024)
        + 1024
        + fc(1024, 7 * 7 * 128)
        + 7 * 7 * 128
        + conv(128, 64, 4)
        + 64
        + conv(64, 1, 4),  # transposed convs: one bias per output
        "discriminator": conv(1, 32, 5) + conv(32, 64, 5) + fc(7 * 7 * 64, 1024) + fc(1024, 1),
    },
    "gan-001": {"generator": mlp(128, 256, 784), "discriminator": mlp(784, 256, 1)},
    "dcgan-001": {
        "generator": fc(4608, 4608) + 128 * 64 * 16 + 64 + 2 * 64 + 64 * 1 * 4 + 1 + 2 * 1,
        "discriminator": conv(1, 64, 5) + conv(64, 128, 5) + fc(7 * 7 * 128, 512) + fc(512, 1),
    },
    "wgan-001": {"generator": mlp(128, 256, 784), "discriminator": mlp(784, 256, 1)},
    "gan-002": {"generator": mlp(100, 128, 784), "discriminator": mlp(784, 128, 1)},
    "bigan-004": {
        "encoder": mlp(784, 128, 64),
        "generator": mlp(64, 128, 784),
        "discriminator": mlp(784 + 64, 128, 1),
    },
}


def test_every_reference_preset_and_default_exists():
    names = preset_names()
    assert set(EXPECTED) | set(DEFAULT_NAMES) == set(names)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_reference_parameter_counts(name):
    model = gankit.build(name)
    counts = {net: count_parameters(module) for net, module in model.nets.items()}
    assert counts == EXPECTED[name]


@pytest.mark.parametrize("name", preset_names())
def test_shapes_for_28x28_input(name):
    model = gankit.build(name).eval()
    z = model.sample_latent(3)
    y = model.sample_labels(3)
    assert z.shape == (3, model.config.latent.dim)
    images = model.generate(z, y)
    assert images.shape == (3, 1, 28, 28) and images.dtype == torch.uint8
    x = model.prepare(images)
    lo, hi = (-1.0, 1.0) if model.config.data_range == "tanh" else (0.0, 1.0)
    assert x.min() >= lo and x.max() <= hi
    if "discriminator" in model.nets:
        logits = model.critic(x, y if model.config.family == "gan" else model.encode(x)[0])
        assert logits.shape == (3,)
    if "encoder" in model.nets:
        code, _ = model.encode(x)
        assert code.shape == (3, model.config.latent.dim)


def test_noise_distributions_follow_the_preset():
    torch.manual_seed(0)
    uniform = gankit.build("gan-000").sample_latent(20000)
    assert uniform.min() >= -1 and uniform.max() <= 1 and abs(uniform.std() - 3**-0.5) < 0.01
    normal = gankit.build("dcgan-001").sample_latent(100)
    assert abs(normal.std().item() - 0.2) < 0.01


def _snapshot(model):
    return {
        (net, k): p.detach().clone()
        for net, module in model.nets.items()
        for k, p in module.named_parameters()
    }


@pytest.mark.parametrize("name", preset_names())
def test_each_phase_updates_exactly_its_networks(name, tiny_data, tmp_path):
    config = gankit.configure(name, steps=1, batch_size=64, data_limit=0)
    trainer = Trainer(config, tmp_path, data=tiny_data, progress=False, tensorboard=False)
    exempt = set()
    if config.model.loss.gan == "wasserstein":
        # E[C(G(z))] − E[C(x)] and the gradient penalty ignore a constant shift of C: the
        # critic's output bias gets exactly zero gradient (only clipping can move it).
        last = [k for k, _ in trainer.model.nets["discriminator"].named_parameters()][-1]
        exempt.add(("discriminator", last))
    for phase in trainer.phases:
        before = _snapshot(trainer.model)
        trainer.update(phase, None)
        after = _snapshot(trainer.model)
        for (net, key), value in before.items():
            if (net, key) in exempt:
                continue
            changed = not torch.equal(value, after[(net, key)])
            assert changed == (net in phase.nets), (
                f"{name} phase {phase.name}: {net}.{key} "
                f"{'changed' if changed else 'did not change'}"
            )


# ------------------------------------------------------------- what defines each family
# The defaults are retuned for quality per minute; these pieces may not be tuned away.


def _trained_one_step(name: str, tiny_data, tmp_path) -> Trainer:
    config = gankit.configure(name, steps=1, batch_size=32, log_every=1)
    trainer = Trainer(config, tmp_path, data=tiny_data, progress=False, tensorboard=False)
    trainer.fit()
    return trainer


def test_the_wgan_default_clips_its_critic(tiny_data, tmp_path):
    trainer = _trained_one_step("wgan", tiny_data, tmp_path)
    loss = trainer.config.model.loss
    assert loss.gan == "wasserstein" and loss.clip > 0 and loss.gp_weight == 0
    weights = torch.cat([p.flatten() for p in trainer.model.nets["discriminator"].parameters()])
    assert float(weights.abs().max()) <= loss.clip  # clipped after every critic update
    assert float(weights.abs().max()) == pytest.approx(loss.clip)  # and clipping bites


def test_the_wgan_gp_default_penalises_the_critics_gradient(tiny_data, tmp_path):
    trainer = _trained_one_step("wgan-gp", tiny_data, tmp_path)
    loss = trainer.config.model.loss
    assert loss.gan == "wasserstein" and loss.gp_weight > 0 and loss.clip == 0
    rows = [row for row in read_metrics(tmp_path) if "gp" in row]
    assert rows and rows[-1]["gp"] > 0  # the penalty was computed and logged


def test_a_lazy_penalty_is_computed_on_every_kth_critic_update_of_a_run(
    tiny_data, tmp_path, monkeypatch
):
    from gankit import losses

    calls = []
    penalty = losses.gradient_penalty
    monkeypatch.setattr(
        losses, "gradient_penalty", lambda *a, **k: calls.append(1) or penalty(*a, **k)
    )
    config = gankit.configure("wgan-gp", steps=3, batch_size=16, n_critic=2, gp_every=4)
    Trainer(config, tmp_path, data=tiny_data, progress=False, tensorboard=False).fit()
    assert len(calls) == 2  # critic updates 0 and 4 of 0..5


def test_the_bigan_default_has_an_encoder_a_generator_and_a_joint_critic(tiny_data, tmp_path):
    from gankit.nets import JointCritic

    trainer = _trained_one_step("bigan", tiny_data, tmp_path)
    model = trainer.model
    assert set(model.nets) == {"encoder", "generator", "discriminator"}
    assert isinstance(model.nets["discriminator"], JointCritic)
    x = model.prepare(tiny_data.images[:4])
    z = model.encode(x)[0]
    logits = model.critic(x, z)
    assert logits.shape == (4,)
    assert not torch.equal(logits, model.critic(x, torch.zeros_like(z)))  # it reads z too


def test_the_cgan_default_conditions_both_networks_on_the_label():
    model = gankit.build("cgan").eval()
    assert model.config.conditional and model.config.num_classes == 10
    gen = torch.Generator().manual_seed(0)
    z = model.sample_latent(8, gen)
    shirts, boots = torch.full((8,), 6), torch.full((8,), 9)
    with torch.no_grad():
        assert not torch.equal(model.generate(z, shirts), model.generate(z, boots))
        x = model.prepare(model.generate(z, shirts))
        # the projection discriminator scores an image against the label it is shown with
        assert not torch.equal(model.critic(x, shirts), model.critic(x, boots))


def test_the_gan_default_is_made_of_fully_connected_layers_only():
    model = gankit.build("gan")
    for name in ("generator", "discriminator"):
        layers = [m for m in model.nets[name].modules() if not list(m.children())]
        assert any(isinstance(m, torch.nn.Linear) for m in layers), name
        assert not [m for m in layers if isinstance(m, torch.nn.modules.conv._ConvNd)], name


def test_the_vae_default_has_a_gaussian_code_and_trains_on_the_elbo(tiny_data, tmp_path):
    trainer = _trained_one_step("vae", tiny_data, tmp_path)
    config = trainer.config.model
    assert config.family == "vae" and config.loss.kl_weight == 1.0
    # a log-likelihood summed over each image's pixels
    assert config.loss.recon in ("bce-sum", "mse-sum", "gaussian")
    mu, logvar = trainer.model.encode(trainer.model.prepare(tiny_data.images[:4]))
    assert mu.shape == logvar.shape == (4, config.latent.dim)
