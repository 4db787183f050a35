"""Typed run configuration: dataclasses, validation, TOML round trip and ``--set key=value``.

A run is described by one :class:`RunConfig` = a :class:`ModelConfig` (what is trained:
networks, latent, losses, optimisers, schedule) and a :class:`TrainConfig` (how long, on what
data, how often to log). Every value is checked when the dataclass is built, so a bad value is
refused before any work starts, with the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import sys
import types
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import tomli_w

from gankit.errors import ConfigError
from gankit.files import write_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

Family = Literal["ae", "vae", "gan", "bigan"]
GanLoss = Literal["nonsaturating", "minimax", "wasserstein", "hinge", "least-squares"]


INT_RANGE = (-(2**63), 2**63 - 1)  # TOML's integers: what a config file can hold
CHANNELS = (1, 3)  # grayscale or RGB
MIN_IMAGE_SIZE = 4


def _show(value: Any, limit: int = 100) -> str:
    """``repr(value)`` for a message: short, even for a huge integer or a deeply nested list."""
    if isinstance(value, int) and value.bit_length() > 64:
        return f"<a {value.bit_length()}-bit integer>"  # repr() refuses over 4300 digits
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # such an integer, or nesting, inside a list/dict
        return f"<a {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {_show(value)} is out of range: expected {allowed}")


@dataclass
class NetConfig:
    """One network as a list of layers (see :mod:`gankit.nets` for the layer language).

    ``x_layers``/``z_layers`` are only used by BiGAN's joint discriminator: they process the
    image and the code separately before ``layers`` sees their concatenation.
    """

    layers: list[str] = field(default_factory=list)
    init: str = "torch"
    spectral_norm: bool = False
    x_layers: list[str] = field(default_factory=list)
    z_layers: list[str] = field(default_factory=list)


@dataclass
class LatentConfig:
    """The noise (or code) distribution: N(0, std²) or U(−std, std) in ``dim`` dimensions.

    ``prior = "fitted"`` (AE, VAE): samples come from a Gaussian mixture of ``components``
    parts fitted to the codes of training images, refitted as the model trains.

    ``temperature`` scales the draws that samples are generated from, and nothing that
    training draws: the noise by it, a fitted mixture's draws about their component's mean.
    Below 1 it is the truncation trick (fewer, more typical samples); above 1 it widens.
    """

    dim: int = 64
    dist: Literal["normal", "uniform"] = "normal"
    std: float = 1.0
    prior: Literal["normal", "fitted"] = "normal"
    components: int = 10
    temperature: float = 1.0

    def __post_init__(self) -> None:
        _check(self.dim >= 1, "latent.dim", self.dim, "an integer >= 1")
        _check(self.std > 0, "latent.std", self.std, "a number > 0")
        _check(self.components >= 1, "latent.components", self.components, "an integer >= 1")
        _check(self.temperature > 0, "latent.temperature", self.temperature, "a number > 0")


@dataclass
class OptimConfig:
    """An optimiser and its settings (``betas`` for Adam/AdamW, ``alpha`` for RMSprop)."""

    name: Literal["adam", "adamw", "rmsprop", "sgd"] = "adam"
    lr: float = 2e-4
    betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0
    alpha: float = 0.99

    def __post_init__(self) -> None:
        _check(self.lr > 0, "lr", self.lr, "a learning rate > 0")
        _check(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "betas",
            self.betas,
            "two numbers in [0, 1)",
        )
        _check(self.eps > 0, "eps", self.eps, "a number > 0")
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        _check(0 <= self.momentum < 1, "momentum", self.momentum, "a number in [0, 1)")
        _check(0 <= self.alpha < 1, "alpha", self.alpha, "a number in [0, 1)")


@dataclass
class LossConfig:
    """Losses: the adversarial loss and its regularisers, or the autoencoder's terms."""

    gan: GanLoss = "nonsaturating"
    label_smoothing: float = 0.0  # one-sided: D's real target is 1 - label_smoothing
    gp_weight: float = 0.0  # WGAN-GP gradient penalty λ (0 = off)
    gp_every: int = 1  # the penalty on every k-th critic update only, weighted k·λ (lazy)
    clip: float = 0.0  # WGAN weight clipping to [-clip, clip] after each critic step (0 = off)
    # G's loss gains λ‖E f(x) − E f(G(z))‖², f = D's last hidden features (feature matching,
    # Salimans et al. 2016): G must match the real batch's statistics, not only fool D
    feature_matching: float = 0.0
    recon: Literal["mse", "bce", "mse-sum", "bce-sum", "gaussian"] = "bce-sum"
    kl_weight: float = 1.0  # VAE: weight of the KL term (β)

    def __post_init__(self) -> None:
        _check(
            0 <= self.label_smoothing < 1,
            "loss.label_smoothing",
            self.label_smoothing,
            "a number in [0, 1)",
        )
        _check(self.gp_weight >= 0, "loss.gp_weight", self.gp_weight, "a number >= 0")
        _check(self.gp_every >= 1, "loss.gp_every", self.gp_every, "an integer >= 1")
        _check(self.clip >= 0, "loss.clip", self.clip, "a number >= 0")
        _check(
            self.feature_matching >= 0,
            "loss.feature_matching",
            self.feature_matching,
            "a number >= 0",
        )
        _check(self.kl_weight >= 0, "loss.kl_weight", self.kl_weight, "a number >= 0")


@dataclass
class ModelConfig:
    """What is trained: the family, its networks, latent, losses, optimisers and schedule."""

    family: Family = "gan"
    conditional: bool = False  # class-conditional GAN (needs labelled data)
    image_size: int = 28  # the networks' images (C, S, S): configure() takes the data's
    channels: int = 1  # shape unless these are set
    data_range: Literal["tanh", "unit"] = "tanh"  # pixels scaled to [-1, 1] or [0, 1]
    latent: LatentConfig = field(default_factory=LatentConfig)
    generator: NetConfig = field(default_factory=NetConfig)  # AE/VAE: the decoder
    discriminator: NetConfig = field(default_factory=NetConfig)
    encoder: NetConfig = field(default_factory=NetConfig)
    num_classes: int = 10  # conditional GAN only
    label_embed: int = 0  # conditional G: label embedding size (0 = one-hot)
    loss: LossConfig = field(default_factory=LossConfig)
    opt_g: OptimConfig = field(default_factory=OptimConfig)  # AE/VAE: the only optimiser
    opt_d: OptimConfig = field(default_factory=OptimConfig)
    n_critic: int = 1  # D updates per step
    g_steps: int = 1  # G updates per step
    reuse_noise: bool = False  # the G update reuses the D update's noise (and real batch)
    # D judges packs of m images (and codes) stacked along channels (PacGAN, Lin et al.
    # 2018): a collapsed G's packs look alike, so D sees the collapse; 1 = single images
    pack: int = 1
    ema: float = 0.0  # decay of an exponential moving average of G's weights (0 = off)
    # the EMA generator's batch-norm statistics: re-estimated for its own weights from
    # noise draws before it samples (GAN, BiGAN), or copied from G (an autoencoder's
    # decoder, fed codes rather than noise, always copies)
    ema_stats: Literal["recompute", "copy"] = "recompute"

    def __post_init__(self) -> None:
        _check(
            self.image_size >= MIN_IMAGE_SIZE,
            "model.image_size",
            self.image_size,
            f"an integer >= {MIN_IMAGE_SIZE}",
        )
        _check(self.channels in CHANNELS, "model.channels", self.channels, "1 or 3")
        _check(self.n_critic >= 1, "model.n_critic", self.n_critic, "an integer >= 1")
        _check(self.g_steps >= 1, "model.g_steps", self.g_steps, "an integer >= 1")
        _check(self.pack >= 1, "model.pack", self.pack, "an integer >= 1")
        _check(0 <= self.ema < 1, "model.ema", self.ema, "a decay in [0, 1)")
        _check(self.num_classes >= 2, "model.num_classes", self.num_classes, "an integer >= 2")
        _check(self.label_embed >= 0, "model.label_embed", self.label_embed, "an integer >= 0")
        if not self.generator.layers:
            raise ConfigError("model.generator.layers is empty: a model needs a generator/decoder")
        if self.family in ("ae", "vae", "bigan") and not self.encoder.layers:
            raise ConfigError(f"model.encoder.layers is empty: family {self.family!r} needs one")
        if self.family in ("gan", "bigan") and not self.discriminator.layers:
            raise ConfigError(
                f"model.discriminator.layers is empty: family {self.family!r} needs one"
            )
        if self.latent.prior == "fitted" and self.family not in ("ae", "vae"):
            raise ConfigError(
                f"model.latent.prior = 'fitted' is for the autoencoders (ae, vae), "
                f"not family {self.family!r}: its noise is what G learns to map"
            )
        if self.loss.feature_matching and self.family != "gan":
            raise ConfigError(
                f"model.loss.feature_matching is for family 'gan' (its D's hidden features), "
                f"not {self.family!r}: set it to 0"
            )
        if self.conditional and self.family != "gan":
            raise ConfigError(f"model.conditional = true needs family 'gan', not {self.family!r}")
        if self.pack > 1 and (self.conditional or self.family not in ("gan", "bigan")):
            raise ConfigError(
                f"model.pack = {self.pack} is for an unconditional GAN or BiGAN's "
                "discriminator (a conditional D judges one image per label): set model.pack = 1"
            )


@dataclass
class TrainConfig:
    """How a model is trained: data, length, batch, seed, device and logging cadence."""

    data: str = "fashion-mnist"
    data_dir: str = ""  # "" = GANKIT_DATA, then the cache, then system copies, then download
    data_limit: int = 0  # train on the first N images only (0 = all)
    batch_size: int = 64  # the global batch: K processes (torchrun) take batch_size / K each
    steps: int = 0  # total steps of the run (0 = derive from epochs)
    epochs: float = 0.0  # used when steps == 0
    max_seconds: float = 0.0  # stop (with a checkpoint) after this much training time; 0 = off
    sampler: Literal["epoch", "random"] = "epoch"  # epoch shuffles, or draw each batch anew
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = 0  # CPU threads (0 = every core, fewer while other programs load them)
    fast: bool = True  # fused optimisers, channels-last convolutions; false = PyTorch's plain
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast on CUDA (slow on most CPUs)
    sync_bn: bool = False  # K processes: batch norm over the global batch (CUDA only)
    log_every: int = 50
    sample_every: int = 500
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    grid_size: int = 64  # images in each sample grid (from one fixed noise batch)
    eval_every: int = 0  # compute FID & co. every N steps (0 = never); keeps a best checkpoint
    eval_samples: int = 2000  # generated images per evaluation during training
    evaluator: str = ""  # evaluator file ("" = gankit's evaluator of the data, built once)
    on_divergence: Literal["stop", "rollback"] = "stop"  # NaN/inf: stop, or reload & lower lr
    rollback_lr_factor: float = 0.5  # learning rates × this at each rollback
    max_rollbacks: int = 3  # then stop
    report: bool = True  # keep report.html in the run folder (at each evaluation and the end)

    def __post_init__(self) -> None:
        _check(self.batch_size >= 1, "train.batch_size", self.batch_size, "an integer >= 1")
        _check(self.steps >= 0, "train.steps", self.steps, "an integer >= 0")
        _check(self.epochs >= 0, "train.epochs", self.epochs, "a number >= 0")
        _check(self.max_seconds >= 0, "train.max_seconds", self.max_seconds, "a number >= 0")
        _check(self.data_limit >= 0, "train.data_limit", self.data_limit, "an integer >= 0")
        _check(self.threads >= 0, "train.threads", self.threads, "an integer >= 0")
        _check(
            0 < self.rollback_lr_factor < 1,
            "train.rollback_lr_factor",
            self.rollback_lr_factor,
            "a number in (0, 1)",
        )
        _check(
            self.max_rollbacks >= 1, "train.max_rollbacks", self.max_rollbacks, "an integer >= 1"
        )
        _check(self.eval_every >= 0, "train.eval_every", self.eval_every, "an integer >= 0")
        _check(
            self.eval_samples >= 10,
            "train.eval_samples",
            self.eval_samples,
            "an integer >= 10 (thousands give stable numbers)",
        )
        for key in (
            "log_every",
            "sample_every",
            "checkpoint_every",
            "keep_checkpoints",
            "grid_size",
        ):
            value = getattr(self, key)
            _check(value >= 1, f"train.{key}", value, "an integer >= 1")


# The options a resumed run may change (`gankit train --resume RUN --log-every 10`, or
# `gankit.resume(RUN, log_every=10)`): where the data lies, the machine it runs on, the run's
# length, and how often it logs, draws, checkpoints and evaluates. Every other option would
# make it a different run (another model, other data, another batch or seed) and is refused.
RESUMABLE: tuple[str, ...] = (
    "data_dir",
    "device",
    "threads",
    "steps",
    "max_seconds",
    "log_every",
    "sample_every",
    "checkpoint_every",
    "keep_checkpoints",
    "eval_every",
    "on_divergence",
    "report",
)


@dataclass
class RunConfig:
    """A whole run: the preset it started from, the model and the training settings."""

    preset: str = ""
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if self.train.batch_size % self.model.pack:
            raise ConfigError(
                f"train.batch_size = {self.train.batch_size} is not a multiple of "
                f"model.pack = {self.model.pack}: D judges packs of {self.model.pack} images; "
                "make the batch a multiple of the pack"
            )


# --------------------------------------------------------------------------- conversion


def to_dict(config: Any) -> dict:
    """A dataclass config as plain nested dicts and lists (TOML/JSON-ready)."""
    return dataclasses.asdict(config)


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from nested dicts, checking every key and value type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'} must be a table of keys, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {path!r}{_did_you_mean(key, names, prefix)}")
        kwargs[key] = _coerce(hints[key], value, path)
    return cls(**kwargs)


def _did_you_mean(key: str, names: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    if close:
        return "; did you mean " + " or ".join(repr(prefix + c) for c in close) + "?"
    return "; valid keys here: " + ", ".join(prefix + n for n in names)


def _coerce(tp: Any, value: Any, path: str) -> Any:
    """Check ``value`` against type annotation ``tp`` (converting int→float where lossless)."""
    origin = get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return value if isinstance(value, tp) else from_dict(tp, value, prefix=path + ".")
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            hint = (
                difflib.get_close_matches(value, [str(a) for a in allowed], n=1)
                if isinstance(value, str)
                else []
            )
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ConfigError(
                f"{path} = {_show(value)} is not allowed: choose one of "
                f"{', '.join(map(repr, allowed))}{extra}"
            )
        return value
    if origin in (Union, types.UnionType):
        for arg in get_args(tp):
            try:
                return _coerce(arg, value, path)
            except ConfigError:
                continue
        raise ConfigError(f"{path} = {_show(value)} has the wrong type: expected {tp}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path} = {_show(value)} has the wrong type: expected a list")
        (item,) = get_args(tp)
        return [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{path} = {_show(value)}: expected nothing")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} = {_show(value)} has the wrong type: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} = {_show(value)} has the wrong type: expected an integer")
        if not INT_RANGE[0] <= value <= INT_RANGE[1]:
            raise ConfigError(f"{path} = {_show(value)} is out of range: expected a 64-bit integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} = {_show(value)} has the wrong type: expected a number")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            number = math.inf
        if not math.isfinite(number):
            raise ConfigError(f"{path} = {_show(value)} is out of range: expected a finite number")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} = {_show(value)} has the wrong type: expected a string")
        return value
    raise TypeError(f"unsupported annotation {tp} at {path}")  # a bug in gankit, not user input


# --------------------------------------------------------------------------- TOML and --set


def save_toml(config: RunConfig, path: str | Path) -> Path:
    """Write the resolved config as TOML (atomically)."""
    path = Path(path)
    write_text(path, tomli_w.dumps(to_dict(config)))
    return path


def load_toml(path: str | Path) -> dict:
    """Read a TOML config file into nested dicts (validated later by :func:`from_dict`)."""
    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as err:
        raise ConfigError(f"config file {path} cannot be read: {err.strerror or err}") from None
    except (ValueError, RecursionError) as err:  # bad TOML or UTF-8, huge ints, deep nesting
        raise ConfigError(f"config file {path} is not valid TOML: {err}") from None


def merge(base: dict, override: dict) -> dict:
    """Deep-merge ``override`` into a copy of ``base`` (tables merge, other values replace)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _leaf_paths(cls: type, prefix: str = "") -> list[str]:
    paths = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            paths += _leaf_paths(tp, f"{prefix}{f.name}.")
        else:
            paths.append(prefix + f.name)
    return paths


def resolve_key(key: str) -> str:
    """Full dotted path for a ``--set`` key: exact (``model.opt_d.lr``) or a unique suffix."""
    paths = _leaf_paths(RunConfig)
    if key in paths:
        return key
    matches = [p for p in paths if p.endswith("." + key)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ConfigError(f"--set key {key!r} is ambiguous: write one of {', '.join(matches)}")
    tails = {p.rsplit(".", 1)[-1]: p for p in paths}
    close = difflib.get_close_matches(key, paths, n=3, cutoff=0.6) + [
        tails[t] for t in difflib.get_close_matches(key.rsplit(".", 1)[-1], tails, n=2)
    ]
    hint = f"; did you mean {' or '.join(dict.fromkeys(close))}?" if close else ""
    raise ConfigError(f"unknown config key {key!r}{hint}")


def resumed_config(
    config: RunConfig, changes: dict[str, Any], named: dict[str, str] | None = None
) -> RunConfig:
    """``config`` with ``changes`` applied, each a key of :data:`RESUMABLE` (by its dotted
    path or its name); any other key is refused by name (``named[key]``: how the user wrote
    it, e.g. ``--batch-size``) before anything is loaded."""
    named = named or {}
    nested: dict = {"train": {}}
    for key, value in changes.items():
        path = resolve_key(key)
        section, _, leaf = path.partition(".")
        if section != "train" or leaf not in RESUMABLE:
            raise ConfigError(
                f"{named.get(key, key)}: a resumed run keeps the settings it was started with "
                f"({path} = {_show(_get(config, path))}); on resume only "
                f"{', '.join(RESUMABLE)} may change. To change {path}, start a new run"
            )
        nested["train"][leaf] = value
    return from_dict(RunConfig, merge(to_dict(config), nested))


def _get(config: Any, path: str) -> Any:
    for part in path.split("."):
        config = getattr(config, part)
    return config


def parse_set(item: str) -> dict:
    """``"model.opt_d.lr=1e-4"`` → ``{"model": {"opt_d": {"lr": 1e-4}}}`` (TOML value syntax)."""
    return nest(*parse_assignment(item))


def nest(path: str, value: Any) -> dict:
    """``("model.opt_d.lr", 1e-4)`` → ``{"model": {"opt_d": {"lr": 1e-4}}}``."""
    nested: dict = {}
    node = nested
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value
    return nested


def parse_assignment(item: str) -> tuple[str, Any]:
    """``"n_critic=3"`` → ``("model.n_critic", 3)``: the full key and the TOML value."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set n_critic=5")
    key, raw = item.split("=", 1)
    path = resolve_key(key.strip())
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word: take it as a string
    except (ValueError, RecursionError) as err:  # a 5000-digit integer, nesting too deep
        raise ConfigError(f"--set {path}: its value cannot be read ({err})") from None
    return path, value


def _user_layers(
    config_file: str | Path | None, sets: Iterable[str], overrides: dict | None
) -> Iterator[dict]:
    """What the user puts over a preset, in order: the TOML file, each ``--set``, overrides."""
    if config_file:
        yield load_toml(config_file)
    for item in sets:
        yield parse_set(item)
    if overrides:
        yield overrides


def user_settings(
    config_file: str | Path | None = None, sets: Iterable[str] = (), overrides: dict | None = None
) -> dict:
    """What the user sets (TOML file ← ``--set`` items ← overrides) as nested dicts, without
    the preset they go over: e.g. to see whether they fix ``model.image_size``."""
    data: dict = {}
    for layer in _user_layers(config_file, sets, overrides):
        data = merge(data, layer)
    return data


def explicit_shape(settings: dict) -> dict[str, int]:
    """The valid ``model.channels`` / ``model.image_size`` among ``settings`` (what
    :func:`user_settings` returns); a value of the wrong type or out of range is left out,
    for :func:`from_dict` to refuse by name."""
    model = settings.get("model")
    if not isinstance(model, dict):
        return {}
    shape = {}
    channels, size = model.get("channels"), model.get("image_size")
    if type(channels) is int and channels in CHANNELS:
        shape["channels"] = channels
    if type(size) is int and MIN_IMAGE_SIZE <= size <= INT_RANGE[1]:
        shape["image_size"] = size
    return shape


def build_config(
    base: dict,
    config_file: str | Path | None = None,
    sets: Iterable[str] = (),
    overrides: dict | None = None,
) -> RunConfig:
    """Resolve a run config: preset dict ← TOML file ← ``--set`` items ← explicit overrides."""
    data = base
    for layer in _user_layers(config_file, sets, overrides):
        data = merge(data, layer)
    return from_dict(RunConfig, data)
