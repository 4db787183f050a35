"""Config parsing under fuzzing: any input is a valid config or a ConfigError naming the key,
never another exception; every accepted config round-trips."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gankit.config import (
    LatentConfig,
    LossConfig,
    ModelConfig,
    NetConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
    build_config,
    from_dict,
    load_toml,
    merge,
    parse_set,
    save_toml,
    to_dict,
)
from gankit.errors import ConfigError
from gankit.presets import get_preset, preset_names
from gankit.training import make_optimizer

CLASSES = (RunConfig, ModelConfig, TrainConfig, NetConfig, LatentConfig, OptimConfig, LossConfig)
KEYS = sorted({f.name for cls in CLASSES for f in dataclasses.fields(cls)})


def _leaf_paths(cls: type, prefix: str = "") -> list[str]:
    paths = []
    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            paths += _leaf_paths(tp, f"{prefix}{name}.")
        else:
            paths.append(prefix + name)
    return paths


PATHS = _leaf_paths(RunConfig)
CHOICES = sorted(
    {
        str(a)
        for cls in CLASSES
        for tp in typing.get_type_hints(cls).values()
        if typing.get_origin(tp) is typing.Literal
        for a in typing.get_args(tp)
    }
)


def _deep(depth: int) -> list:
    """A list nested ``depth`` deep: deeper than Python's recursion limit for large depths."""
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=12))
# (ints over 4300 digits, which repr() refuses, and nesting deeper than the stack are in
# test_values_python_cannot_print_are_refused_cleanly: Hypothesis could not print them)
huge_ints = st.sampled_from([2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**400, -(10**4000)])
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    huge_ints,
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, 1e-300]),
    st.text(max_size=20),
    st.sampled_from(CHOICES),
)
json_like = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=16,
)


@st.composite
def overrides(draw) -> dict:
    """A few real leaf paths (or near misses) set to JSON-like values, as nested dicts."""
    out: dict = {}
    for _ in range(draw(st.integers(1, 4))):
        path = draw(
            st.sampled_from(PATHS)
            | st.builds(
                lambda p, k: f"{p}.{k}" if p else k, st.sampled_from(["", "model", "train"]), keys
            )
        )
        node = out
        *parents, leaf = path.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                break
            node = child
        else:
            node[leaf] = draw(json_like)
    return out


def _assert_round_trips(config: RunConfig, folder) -> None:
    assert isinstance(config, RunConfig)
    assert from_dict(RunConfig, to_dict(config)) == config
    path = save_toml(config, folder / "config.toml")  # what a run folder holds
    assert from_dict(RunConfig, load_toml(path)) == config


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FUZZ
@given(data=st.dictionaries(keys, json_like, max_size=5) | json_like)
@example(data={"model": {"opt_g": {"lr": 10**400}}})
@example(data={"train": {"batch_size": -(10**4000)}})
def test_from_dict_returns_a_config_or_raises_config_error(data, folder):
    try:
        config = from_dict(RunConfig, data)
    except ConfigError:
        return
    _assert_round_trips(config, folder)


@FUZZ
@given(name=st.sampled_from(preset_names()), changes=overrides())
@example(name="gan", changes={"model": {"opt_g": {"name": "rmsprop", "alpha": -0.5}}})
@example(name="gan", changes={"model": {"opt_d": {"alpha": float("nan")}}})
@example(name="gan", changes={"train": {"epochs": float("inf"), "steps": 0}})
@example(name="gan", changes={"model": {"latent": {"dim": 2**64}}})
def test_a_preset_with_random_values_is_valid_or_refused(name, changes, folder):
    try:
        config = from_dict(RunConfig, merge(get_preset(name), changes))
    except ConfigError:
        return
    _assert_round_trips(config, folder)
    for opt in (config.model.opt_g, config.model.opt_d):  # torch takes what we accept
        make_optimizer(opt, [torch.zeros(1, requires_grad=True)])


toml_values = st.one_of(
    st.integers().map(str),
    st.floats().map(repr),
    st.sampled_from(
        [
            "nan",
            "inf",
            "-inf",
            "+inf",
            "true",
            "false",
            "1_000",
            "0x1F",
            "1e400",
            "-0.0",
            "9" * 5000,
            "[" * 5000,
            "{a=" * 3000,
            '"x"',
            "'y'",
            "[1, 2.5]",
            "[0.0, 0.9]",
            "{a = 1}",
            "2024-01-01",
            "",
            " ",
            '"unterminated',
        ]
    ),
    st.sampled_from(CHOICES),
    st.text(max_size=20),
)


@FUZZ
@given(
    text=st.text()
    | st.builds(
        lambda k, v: f"{k}={v}", st.sampled_from(PATHS + KEYS) | st.text(max_size=10), toml_values
    )
)
@example(text="model.opt_g.lr=" + "1" * 5000)
@example(text="model.generator.layers=" + "[" * 5000 + "]" * 5000)
def test_set_parses_or_raises_config_error(text):
    try:
        result = parse_set(text)
    except ConfigError:
        return
    assert isinstance(result, dict) and len(result) == 1


@FUZZ
@given(
    raw=st.binary(max_size=200)
    | st.builds(lambda k, v: f"[train]\n{k} = {v}\n".encode(), st.sampled_from(KEYS), toml_values)
)
@example(raw=b"a = " + b"1" * 5000)
@example(raw=b"a = " + b"[" * 5000 + b"]" * 5000)
@example(raw=b"\xff\xfe")
def test_load_toml_returns_a_dict_or_raises_config_error(raw, folder):
    path = folder / "fuzzed.toml"
    path.write_bytes(raw)
    try:
        result = load_toml(path)
    except ConfigError as err:
        assert "fuzzed.toml" in str(err)
        return
    assert isinstance(result, dict)


@FUZZ
@given(
    name=st.sampled_from(preset_names()),
    sets=st.lists(
        st.builds(lambda k, v: f"{k}={v}", st.sampled_from(PATHS + KEYS), toml_values), max_size=3
    ),
)
@example(name="gan", sets=["epochs=inf", "steps=0"])
@example(name="gan", sets=["alpha=nan"])
def test_build_config_with_random_sets_is_valid_or_refused(name, sets, folder):
    try:
        config = build_config(get_preset(name), None, sets, {})
    except ConfigError:
        return
    _assert_round_trips(config, folder)


# ---------------------------------------------------------------- what the fuzzer found / must hold
# tests/test_config.py covers lr <= 0, batch_size = 0, n_critic = 0 and "did you mean" for
# --set; these are the refusals it does not cover, each naming the key and the value.


def _refused(changes: dict, name: str = "gan") -> str:
    with pytest.raises(ConfigError) as info:
        from_dict(RunConfig, merge(get_preset(name), changes))
    return str(info.value)


@pytest.mark.parametrize(
    "changes, key, value",
    [
        ({"train": {"steps": -1}}, "train.steps", "-1"),
        ({"train": {"steps": -(2**40)}}, "train.steps", str(-(2**40))),
        ({"train": {"batch_size": "64"}}, "train.batch_size", "'64'"),
        ({"model": {"n_critic": "5"}}, "model.n_critic", "'5'"),
        ({"model": {"opt_d": {"lr": "fast"}}}, "model.opt_d.lr", "'fast'"),
        ({"model": {"opt_d": {"lr": float("nan")}}}, "model.opt_d.lr", "nan"),
        ({"model": {"opt_g": {"lr": float("inf")}}}, "model.opt_g.lr", "inf"),
        ({"model": {"opt_g": {"lr": 10**400}}}, "model.opt_g.lr", "bit integer"),
        ({"train": {"epochs": float("inf"), "steps": 0}}, "train.epochs", "inf"),
        ({"train": {"seed": 2**64}}, "train.seed", "65-bit integer"),
        ({"model": {"opt_g": {"alpha": -0.5}}}, "alpha", "-0.5"),
        ({"model": {"opt_d": {"alpha": 1.0}}}, "alpha", "1.0"),
    ],
)
def test_out_of_range_and_wrong_type_name_key_and_value(changes, key, value):
    message = _refused(changes)
    assert key in message and value in message, message


def test_unknown_nested_key_suggests_the_close_match():
    message = _refused({"train": {"batch_sise": 32}})
    assert "unknown config key 'train.batch_sise'" in message
    assert "did you mean 'train.batch_size'" in message


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"train": {"batch_size": -(10**5000)}}, "train.batch_size"),
        ({"model": {"family": 10**5000}}, "model.family"),
        ({"model": [10**5000]}, "model"),
        ({"model": {"generator": {"layers": [_deep(100_000)]}}}, "model.generator.layers[0]"),
        ({"train": _deep(100_000)}, "train"),
    ],
)
def test_values_python_cannot_print_are_refused_cleanly(changes, key):
    message = _refused(changes)
    assert key in message and len(message) < 300, message


@pytest.mark.parametrize("value", ["1" * 5000, "[" * 5000 + "]" * 5000, "{a=" * 3000])
def test_unreadable_set_and_toml_values_are_config_errors(value, tmp_path):
    with pytest.raises(ConfigError, match="model.opt_g.lr"):
        parse_set("model.opt_g.lr=" + value)
    path = tmp_path / "deep.toml"
    path.write_text(f"[model.opt_g]\nlr = {value}\n")
    with pytest.raises(ConfigError, match="deep.toml is not valid TOML"):
        load_toml(path)
