"""Config: typed values, clear refusals, TOML round trip, --set parsing."""

from __future__ import annotations

import pytest

from gankit.api import configure
from gankit.config import (
    RunConfig,
    build_config,
    from_dict,
    load_toml,
    parse_set,
    resolve_key,
    save_toml,
    to_dict,
)
from gankit.errors import ConfigError
from gankit.presets import get_preset, preset_names


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_validates_and_round_trips_through_toml(name, tmp_path):
    config = configure(name)
    assert config.preset == name
    path = save_toml(config, tmp_path / "config.toml")
    again = from_dict(RunConfig, load_toml(path))
    assert again == config


def test_set_accepts_full_paths_and_unique_leaf_names():
    assert parse_set("model.opt_d.lr=1e-4") == {"model": {"opt_d": {"lr": 1e-4}}}
    assert parse_set("n_critic=3") == {"model": {"n_critic": 3}}
    assert parse_set("data=mnist-5k") == {"train": {"data": "mnist-5k"}}  # bare word
    config = configure(
        "dcgan", sets=["n_critic=3", "label_smoothing=0.1", "model.opt_d.betas=[0.0, 0.9]"]
    )
    assert config.model.opt_d.betas == [0.0, 0.9]
    assert config.model.n_critic == 3 and config.model.loss.label_smoothing == 0.1


def test_ambiguous_leaf_key_names_the_candidates():
    with pytest.raises(ConfigError, match="ambiguous.*model.opt_d.lr"):
        resolve_key("lr")


def test_unknown_key_suggests_the_closest():
    with pytest.raises(ConfigError, match="n_critic"):
        parse_set("n_critc=5")
    with pytest.raises(ConfigError, match="unknown config key 'model.widths'"):
        build_config(get_preset("gan"), overrides={"model": {"widths": [1]}})


@pytest.mark.parametrize(
    "item, phrase",
    [
        ("model.opt_d.lr=0", "lr = 0.0 is out of range"),
        ("model.opt_g.lr=-1e-3", "lr = -0.001 is out of range"),
        ("batch_size=0", "train.batch_size = 0 is out of range"),
        ("n_critic=0", "model.n_critic = 0 is out of range"),
        ("label_smoothing=1.5", "label_smoothing = 1.5 is out of range"),
        ("batch_size=1.5", "expected an integer"),
        ('batch_size="64"', "expected an integer"),
        ("conditional=1", "expected true or false"),
        ("gan=wasserstien", "did you mean 'wasserstein'"),
    ],
)
def test_bad_values_are_refused_with_key_value_and_range(item, phrase):
    with pytest.raises(ConfigError, match=phrase.replace("(", r"\(").replace(".", r"\.")):
        configure("gan", sets=[item])


def test_toml_file_overrides_preset_and_set_overrides_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\nbatch_size = 32\nsteps = 7\n[model.loss]\ngan = "hinge"\n')
    config = configure("dcgan", config_file=path, sets=["steps=9"])
    assert (config.train.batch_size, config.train.steps) == (32, 9)
    assert config.model.loss.gan == "hinge"
    assert config.model.generator.layers == get_preset("dcgan")["model"]["generator"]["layers"]


def test_invalid_toml_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[train\nbatch_size = ")
    with pytest.raises(ConfigError, match="broken.toml is not valid TOML"):
        configure("gan", config_file=path)


def test_family_needs_its_networks():
    data = get_preset("gan")
    data["model"]["discriminator"]["layers"] = []
    with pytest.raises(ConfigError, match="discriminator.layers is empty"):
        from_dict(RunConfig, data)


def test_to_dict_is_plain_data():
    data = to_dict(configure("bigan-004"))
    assert data["model"]["discriminator"]["x_layers"] == ["flatten"]
    assert isinstance(data["model"]["opt_g"]["betas"], list)
