"""gankit's defaults are built for the data's shape (C, S, S): at 1×28×28 they are the tuned
configs unchanged; at 3×32×32 and 3×64×64 every network fits, trains the right parameters
and keeps what defines its family. Reference presets take only their 28×28 grey images."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import gankit
import gankit.data
from gankit.cli import main
from gankit.config import RunConfig, from_dict, load_toml, save_toml
from gankit.data import Dataset
from gankit.errors import ConfigError
from gankit.nets import JointCritic, count_parameters
from gankit.presets import (
    DEFAULT_NAMES,
    conv_plan,
    folder_image_size,
    get_preset,
    preset_names,
    reachable_sizes,
)
from gankit.runs import read_metrics
from gankit.training import Trainer

SNAPSHOT = Path(__file__).parent / "fixtures" / "default_presets_1x28.json"
SHAPES = [(1, 28), (3, 32), (3, 64)]
REFERENCES = [name for name in preset_names() if name not in DEFAULT_NAMES]


def stored_shape(monkeypatch, shape: tuple[int, int]) -> list[tuple]:
    """Make every data set report ``shape`` as stored; returns the calls it receives."""
    calls = []

    def fake(name, data_dir=None):
        calls.append((name, data_dir))
        return shape

    monkeypatch.setattr(gankit.data, "data_shape", fake)
    return calls


def images(channels: int, size: int, n: int = 16) -> Dataset:
    """``n`` random labelled uint8 images (n, channels, size, size)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, channels, size, size), generator=gen, dtype=torch.uint8)
    return Dataset(x, torch.arange(n) % 10, "random", [str(i) for i in range(10)])


def sized(name: str, shape: tuple[int, int], **overrides) -> RunConfig:
    channels, size = shape
    return gankit.configure(name, channels=channels, image_size=size, **overrides)


# ------------------------------------------------------------------ 1×28×28: the tuned configs
# The preset dicts as they were before the defaults were sized (generated from that code).


@pytest.mark.parametrize("name", DEFAULT_NAMES)
def test_at_1x28_the_defaults_are_exactly_the_tuned_configs(name):
    before = json.loads(SNAPSHOT.read_text())[name]
    assert gankit.configure(name) == from_dict(RunConfig, before)  # fashion-mnist: 1×28×28
    now = get_preset(name)
    for net in ("generator", "discriminator", "encoder"):
        assert now["model"].get(net) == before["model"].get(net), net
    assert now["description"] == before["description"] and now["train"] == before["train"]


def test_the_28x28_dcgan_stacks_are_written_out():
    model = gankit.configure("dcgan").model
    assert model.generator.layers == [
        "fc 6272 nobias", "bn", "relu", "reshape 128 7 7",
        "convT 64 k4 s2 p1 nobias", "bn", "relu",
        "convT 32 k4 s2 p1 nobias", "bn", "relu",
        "conv 1 k3 p1", "tanh", "reshape 1 28 28",
    ]  # fmt: skip
    assert model.discriminator.layers == [
        "conv 64 k4 s2 p1", "lrelu 0.2", "conv 128 k4 s2 p1 nobias", "bn", "lrelu 0.2",
        "flatten", "fc 128", "lrelu 0.2", "fc 1",
    ]  # fmt: skip
    assert gankit.configure("bigan").model.encoder.layers == [
        "conv 32 k4 s2 p1", "lrelu 0.2", "conv 64 k4 s2 p1 nobias", "bn", "lrelu 0.2", "flatten"
    ]  # fmt: skip


# ------------------------------------------------------------------ the sizes the designs reach


def test_the_conv_designs_reach_b_times_a_power_of_two():
    assert reachable_sizes(128) == [16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128]
    assert (conv_plan(28), conv_plan(32), conv_plan(64)) == ((7, 2), (4, 3), (4, 4))
    assert conv_plan(30) is None and conv_plan(8) is None and conv_plan(50) is None


def fc(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + n_out * bias


def conv(c_in: int, c_out: int, k: int, bias: bool = True) -> int:
    return c_in * c_out * k * k + c_out * bias


def dcgan_counts(channels: int, b: int, g: list[int], d: list[int]) -> tuple[int, int]:
    """G: fc (nobias) + bn to g[0]·b·b, 4×4 transposed convs (nobias) + bn along g, 3×3 conv
    to the image; D: 4×4 convs along d, batch norm (no bias) after all but the first, a
    hidden fc 128, fc 1."""
    gen = fc(64, g[0] * b * b, False) + 2 * g[0] * b * b
    gen += sum(conv(i, o, 4, False) + 2 * o for i, o in zip(g, g[1:], strict=False))
    gen += conv(g[-1], channels, 3)
    disc = conv(channels, d[0], 4) + sum(
        conv(i, o, 4, False) + 2 * o for i, o in zip(d, d[1:], strict=False)
    )
    return gen, disc + fc(d[-1] * b * b, 128) + fc(128, 1)


@pytest.mark.parametrize(
    "shape, widths",
    [
        ((1, 28), (7, [128, 64, 32], [64, 128])),
        ((3, 32), (4, [256, 128, 64, 32], [64, 128, 256])),
        ((3, 64), (4, [512, 256, 128, 64, 32], [64, 128, 256, 512])),
    ],
)
def test_dcgan_widths_per_size(shape, widths):
    model = gankit.build(sized("dcgan", shape))
    counts = tuple(count_parameters(model.nets[n]) for n in ("generator", "discriminator"))
    assert counts == dcgan_counts(shape[0], *widths)


# ------------------------------------------------------------------ every default, every shape


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", DEFAULT_NAMES)
def test_each_default_fits_the_shape(name, shape):
    channels, size = shape
    config = sized(name, shape)
    assert (config.model.channels, config.model.image_size) == shape
    model = gankit.build(config).eval()
    y = model.sample_labels(3)
    with torch.no_grad():
        fake = model.decode(model.noise(3), y)
        assert fake.shape == (3, channels, size, size)
        x = model.prepare(images(channels, size, 3).images)
        if "encoder" in model.nets:
            code = model.encode(x)[0]
            assert code.shape == (3, config.model.latent.dim)
        if "discriminator" in model.nets:
            second = y if config.model.family == "gan" else model.encode(x)[0]
            assert model.critic(x, second).shape == (3,)
            assert model.critic(fake, second).shape == (3,)
    if config.model.family in ("ae", "vae"):
        real = images(channels, size, 3).images
        assert model.reconstruct(real).shape == (3, channels, size, size)


def _snapshot(model) -> dict:
    return {
        (net, key): p.detach().clone()
        for net, module in model.nets.items()
        for key, p in module.named_parameters()
    }


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", DEFAULT_NAMES)
def test_each_phase_changes_exactly_its_networks(name, shape, tmp_path):
    config = sized(name, shape, steps=1, batch_size=8)
    data = images(*shape)
    trainer = Trainer(config, tmp_path, data=data, progress=False, tensorboard=False)
    exempt = set()
    if config.model.loss.gan == "wasserstein":  # a constant shift of C changes no loss term
        last = [k for k, _ in trainer.model.nets["discriminator"].named_parameters()][-1]
        exempt.add(("discriminator", last))
    expected = {"ae": 1, "vae": 1}.get(config.model.family, 2)
    assert len(trainer.phases) == expected
    for phase in trainer.phases:
        before = _snapshot(trainer.model)
        trainer.update(phase, None)
        after = _snapshot(trainer.model)
        moved = {net for (net, key), v in before.items() if not torch.equal(v, after[net, key])}
        assert moved == set(phase.nets), f"{name} {shape} phase {phase.name}: moved {moved}"
        for (net, key), value in before.items():
            if net in phase.nets and (net, key) not in exempt:
                assert not torch.equal(value, after[net, key]), f"{net}.{key} did not move"
    if config.model.family == "bigan":  # E and G learn together, D alone
        assert [set(p.nets) for p in trainer.phases] == [
            {"discriminator"},
            {"encoder", "generator"},
        ]


# ------------------------------------------------------------------ configure picks the shape


def test_configure_takes_the_stored_shape_of_the_data(monkeypatch):
    calls = stored_shape(monkeypatch, (3, 32))
    config = gankit.configure("dcgan", data="cifar10", data_dir="/somewhere")
    assert calls == [("cifar10", "/somewhere")]
    assert (config.model.channels, config.model.image_size) == (3, 32)
    assert config.model.generator.layers[-3:] == ["conv 3 k3 p1", "tanh", "reshape 3 32 32"]
    assert config.model.generator.layers[3] == "reshape 256 4 4"


def test_what_the_user_sets_wins_over_the_data(monkeypatch, tmp_path):
    calls = stored_shape(monkeypatch, (3, 32))
    path = tmp_path / "c.toml"
    path.write_text("[model]\nimage_size = 64\n")
    config = gankit.configure("wgan", config_file=path, data="cifar10")
    assert (config.model.channels, config.model.image_size) == (3, 64)  # C from the data
    assert gankit.configure("gan", sets=["channels=1", "image_size=48"]).model.generator.layers[
        -3:
    ] == ["fc 2304", "tanh", "reshape 1 48 48"]
    assert calls == [("cifar10", None)]  # the data was not asked when both were set
    mine = ["conv 16 k4 s2 p1", "lrelu 0.2", "flatten", "fc 1"]
    config = gankit.configure("dcgan", data="cifar10", model__discriminator__layers=mine)
    assert config.model.discriminator.layers == mine  # explicit layers stay the user's
    assert config.model.generator.layers[-1] == "reshape 3 32 32"


@pytest.mark.parametrize(
    "stored, size", [(28, 28), (32, 32), (100, 64), (50, 48), (40, 40), (64, 64), (65, 64)]
)
def test_a_folder_trains_at_its_size_up_to_64(monkeypatch, stored, size):
    assert folder_image_size(stored) == size
    stored_shape(monkeypatch, (3, stored))
    config = gankit.configure("dcgan", data="folder:photos")
    assert (config.model.channels, config.model.image_size) == (3, size)
    assert config.model.generator.layers[-1] == f"reshape 3 {size} {size}"
    assert gankit.configure("dcgan", data="folder:photos", image_size=96).model.image_size == 96


def test_set_image_size_64_on_fashion_mnist_gives_a_64x64_model(capsys):
    config = gankit.configure("dcgan", sets=["image_size=64"])
    assert (config.model.channels, config.model.image_size) == (1, 64)
    model = gankit.build(config).eval()
    assert model.generate(model.noise(2)).shape == (2, 1, 64, 64)
    assert main(["train", "dcgan", "--set", "image_size=64", "--dry-run"]) == 0
    shown = capsys.readouterr().out
    assert "image_size = 64" in shown and "reshape 1 64 64" in shown  # --dry-run: sized


def test_gankit_presets_still_shows_the_28x28_grey_design(capsys):
    assert main(["presets", "dcgan"]) == 0
    shown = capsys.readouterr().out
    assert "reshape 1 28 28" in shown and "image_size = 28" in shown and "channels = 1" in shown


def test_the_saved_config_holds_concrete_numbers(monkeypatch, tmp_path):
    stored_shape(monkeypatch, (3, 64))
    config = gankit.configure("bigan", data="folder:photos")
    saved = load_toml(save_toml(config, tmp_path / "config.toml"))
    assert saved["model"]["image_size"] == 64 and saved["model"]["channels"] == 3
    assert saved["model"]["generator"]["layers"][-1] == "reshape 3 64 64"
    assert from_dict(RunConfig, saved) == config  # what --resume rebuilds from


@pytest.mark.parametrize(
    "size, nearest", [(50, ["48", "56"]), (30, ["28", "32"]), (100, ["96", "112"]), (10, ["16"])]
)
def test_a_size_no_design_reaches_is_refused_with_the_nearest(size, nearest):
    with pytest.raises(ConfigError) as info:
        gankit.configure("dcgan", sets=[f"image_size={size}"])
    message = str(info.value)
    assert f"{size}×{size}" in message
    for near in nearest:
        assert f"--set image_size={near}" in message
    with pytest.raises(ConfigError, match="nearest"):
        gankit.configure("vae", image_size=size)  # the MLP defaults follow the same sizes


def test_an_npz_of_an_unreachable_size_is_refused(monkeypatch):
    stored_shape(monkeypatch, (1, 50))
    with pytest.raises(ConfigError, match=r"images of npz:x\.npz.*48 and 56"):
        gankit.configure("ae", data="npz:x.npz")


# ------------------------------------------------------------------ reference presets: 28×28 grey

REPLACEMENT = {
    "ae-000": "ae",
    "vae-000": "vae",
    "gan-000": "gan",
    "dcgan-000": "dcgan",
    "gan-001": "gan",
    "dcgan-001": "dcgan",
    "wgan-001": "wgan",
    "gan-002": "gan",
    "bigan-004": "bigan",
}


@pytest.mark.parametrize("name", REFERENCES)
def test_a_reference_preset_refuses_colour_and_names_its_default(name, monkeypatch):
    assert set(REPLACEMENT) == set(REFERENCES)
    stored_shape(monkeypatch, (3, 32))
    with pytest.raises(ConfigError) as info:
        gankit.configure(name, data="cifar10")
    message = str(info.value)
    assert name in message and "3×32×32" in message and "cifar10" in message
    assert f"use `{REPLACEMENT[name]}`" in message
    stored_shape(monkeypatch, (1, 28))
    assert gankit.configure(name, data="mnist").model.image_size == 28  # its own images
    with pytest.raises(ConfigError, match="1×64×64"):
        gankit.configure(name, image_size=64)


# ------------------------------------------------------------------ what defines each family, 3×64


def _trained_one_step(name: str, tmp_path) -> Trainer:
    config = sized(name, (3, 64), steps=1, batch_size=8, log_every=1)
    trainer = Trainer(config, tmp_path, data=images(3, 64), progress=False, tensorboard=False)
    trainer.fit()
    return trainer


def test_at_3x64_the_wgan_clips_its_critic(tmp_path):
    trainer = _trained_one_step("wgan", tmp_path)
    loss = trainer.config.model.loss
    assert loss.gan == "wasserstein" and loss.clip > 0 and loss.gp_weight == 0
    weights = torch.cat([p.flatten() for p in trainer.model.nets["discriminator"].parameters()])
    assert float(weights.abs().max()) == pytest.approx(loss.clip)


def test_at_3x64_the_wgan_gp_penalises_the_critics_gradient(tmp_path):
    trainer = _trained_one_step("wgan-gp", tmp_path)
    loss = trainer.config.model.loss
    assert loss.gan == "wasserstein" and loss.gp_weight > 0 and loss.clip == 0
    rows = [row for row in read_metrics(tmp_path) if "gp" in row]
    assert rows and rows[-1]["gp"] > 0


def test_at_3x64_the_gan_is_fully_connected():
    model = gankit.build(sized("gan", (3, 64)))
    for name in ("generator", "discriminator"):
        layers = [m for m in model.nets[name].modules() if not list(m.children())]
        assert any(isinstance(m, torch.nn.Linear) for m in layers), name
        assert not [m for m in layers if isinstance(m, torch.nn.modules.conv._ConvNd)], name
    assert model.config.generator.layers[-3:] == ["fc 12288", "tanh", "reshape 3 64 64"]


def test_at_3x64_the_bigan_has_three_nets_and_a_joint_critic(tmp_path):
    trainer = _trained_one_step("bigan", tmp_path)
    model = trainer.model.eval()
    assert set(model.nets) == {"encoder", "generator", "discriminator"}
    assert isinstance(model.nets["discriminator"], JointCritic)
    x = model.prepare(images(3, 64, 4).images)
    with torch.no_grad():
        z = model.encode(x)[0]
        assert not torch.equal(model.critic(x, z), model.critic(x, torch.zeros_like(z)))
