"""Networks as data: a small layer language, weight initialisations and the network wrappers.

A network body is a list of layer strings, read top to bottom, each ``op [args] [key=value]``::

    fc N [nobias]             Linear to N units (input must be flat: use ``flatten``)
    conv C kK [sS] [pP|same] [nobias]
                              Conv2d to C channels, kernel K, stride S (1), padding P (0)
    convT C kK [sS] [pP] [oO] [nobias]
                              ConvTranspose2d, output padding O (0)
    maxpool K [sS]            MaxPool2d (stride defaults to K)
    upsample F                nearest-neighbour upsampling by F
    bn [eps=E] [momentum=M] [noscale] [batchstats]
                              BatchNorm1d/2d; noscale: no learned γ (TF-slim's default);
                              batchstats: normalise by the batch in eval mode too
    relu | lrelu A | tanh | sigmoid | elu | silu | gelu
    dropout P | flatten | reshape C H W
    mbstd [G]                 minibatch standard deviation (Karras et al. 2018): one more
                              feature (flat) or channel holding how much the samples of each
                              group of G (4) differ, so D can see a batch that lacks variety

``nobias`` drops the layer's bias: before batch norm it is redundant (the norm removes any
constant shift, so its gradient is zero up to rounding). Shapes are tracked while building,
so the channel count of ``bn`` and the input width of ``fc`` are inferred, and a layer that
does not fit its input fails with the layer named.
Wrappers turn a body into what the training loop calls: :class:`Generator` (z [, y] → image),
:class:`Critic` (image [, y] → logit), :class:`JointCritic` (image, code → logit) and
:class:`Encoder` (image → code).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gankit.errors import ConfigError

Shape = tuple[int, ...]  # one sample's shape, without the batch dimension

_ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
}


class BatchNormNoScale(nn.Module):
    """Batch norm with a learned shift β but no scale γ (TF-slim's default ``batch_norm``)."""

    def __init__(
        self,
        num_features: int,
        eps: float,
        momentum: float,
        dims: int,
        track_running_stats: bool = True,
    ):
        super().__init__()
        bn = nn.BatchNorm2d if dims == 4 else nn.BatchNorm1d
        self.norm = bn(
            num_features,
            eps=eps,
            momentum=momentum,
            affine=False,
            track_running_stats=track_running_stats,
        )
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.dims = dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shift = self.bias.view(1, -1, 1, 1) if self.dims == 4 else self.bias
        return self.norm(x) + shift


class MinibatchStd(nn.Module):
    """Appends the mean standard deviation across each group of samples as one more feature
    (flat input) or channel (C, H, W): a batch of near-copies gives D a tell it can use, so
    G is pushed toward variety (Karras et al. 2018, section 3).

    Sample i joins group i mod (B / g), with g the largest divisor of the batch B up to
    ``group``, so any batch size works (one sample: a zero feature)."""

    def __init__(self, group: int = 4):
        super().__init__()
        self.group = group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, rest = x.shape[0], x.shape[1:]
        g = math.gcd(b, self.group)
        y = x.reshape(g, b // g, *rest).float()
        std = (y.var(dim=0, unbiased=False) + 1e-8).sqrt()  # (B/g, *rest)
        stat = std.flatten(1).mean(dim=1).to(x.dtype)  # (B/g,)
        stat = stat.repeat(g)  # back to sample order i -> i mod (B/g)
        if x.dim() == 4:
            feature = stat.view(b, 1, 1, 1).expand(b, 1, *x.shape[2:])
        else:
            feature = stat.view(b, 1)
        return torch.cat([x, feature], dim=1)

    def extra_repr(self) -> str:
        return f"group={self.group}"


class Reshape(nn.Module):
    """Reshape flat features (B, C·H·W) to (B, C, H, W)."""

    def __init__(self, shape: Shape):
        super().__init__()
        self.shape = tuple(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}"


def _parse_args(spec: str, tokens: list[str]) -> tuple[list[str], dict[str, str], set[str]]:
    """Split layer arguments into positionals, ``key=value`` options, and short flags."""
    positional, options, flags = [], {}, set()
    for tok in tokens:
        if "=" in tok:
            key, value = tok.split("=", 1)
            options[key] = value
        elif tok[0].isalpha() and tok[0] in "kspo" and tok[1:].isdigit():
            options[tok[0]] = tok[1:]
        elif tok.isalpha():
            flags.add(tok)
        else:
            positional.append(tok)
    return positional, options, flags


_FLAGS = {
    "fc": {"nobias"},
    "conv": {"nobias", "same"},
    "convT": {"nobias"},
    "bn": {"noscale", "batchstats"},
}  # the words each op accepts


@dataclass(frozen=True)
class LayerSpec:
    """One parsed layer string: its positional values, ``key=value`` / ``kK`` options and
    flags, and the input shape it gets."""

    text: str
    pos: list[str]
    opt: dict[str, str]
    flags: set[str]
    in_shape: Shape

    def needs(self, ndim: int, hint: str) -> None:
        if len(self.in_shape) != ndim:
            raise ConfigError(
                f"layer {self.text!r} needs {'flat' if ndim == 1 else '(C, H, W)'} input but "
                f"gets {self.in_shape}: {hint}"
            )


def _fc(s: LayerSpec) -> nn.Module:
    s.needs(1, "add 'flatten' before it")
    return nn.Linear(s.in_shape[0], int(s.pos[0]), bias="nobias" not in s.flags)


def _conv(s: LayerSpec) -> nn.Module:
    s.needs(3, "add 'reshape C H W' before it")
    pad: int | str = "same" if "same" in s.flags else int(s.opt.get("p", 0))
    return nn.Conv2d(
        s.in_shape[0], int(s.pos[0]), int(s.opt["k"]), int(s.opt.get("s", 1)), pad,
        bias="nobias" not in s.flags,
    )  # fmt: skip


def _conv_transpose(s: LayerSpec) -> nn.Module:
    s.needs(3, "add 'reshape C H W' before it")
    return nn.ConvTranspose2d(
        s.in_shape[0], int(s.pos[0]), int(s.opt["k"]), int(s.opt.get("s", 1)),
        int(s.opt.get("p", 0)), int(s.opt.get("o", 0)), bias="nobias" not in s.flags,
    )  # fmt: skip


def _maxpool(s: LayerSpec) -> nn.Module:
    k = int(s.pos[0])
    return nn.MaxPool2d(k, int(s.opt.get("s", k)))


def _batch_norm(s: LayerSpec) -> nn.Module:
    eps, momentum = float(s.opt.get("eps", 1e-5)), float(s.opt.get("momentum", 0.1))
    track = "batchstats" not in s.flags  # batchstats: batch statistics in eval mode too
    if "noscale" in s.flags:
        return BatchNormNoScale(s.in_shape[0], eps, momentum, len(s.in_shape) + 1, track)
    bn = nn.BatchNorm2d if len(s.in_shape) == 3 else nn.BatchNorm1d
    return bn(s.in_shape[0], eps=eps, momentum=momentum, track_running_stats=track)


def _reshape(s: LayerSpec) -> nn.Module:
    shape = tuple(int(p) for p in s.pos)
    if math.prod(shape) != math.prod(s.in_shape):
        raise ConfigError(
            f"layer {s.text!r}: cannot reshape {s.in_shape} "
            f"({math.prod(s.in_shape)} values) to {shape}"
        )
    return Reshape(shape)


# The layer language: op -> builder of the module from its parsed spec.
LAYERS: dict[str, Callable[[LayerSpec], nn.Module]] = {
    "fc": _fc,
    "conv": _conv,
    "convT": _conv_transpose,
    "maxpool": _maxpool,
    "upsample": lambda s: nn.Upsample(scale_factor=int(s.pos[0]), mode="nearest"),
    "bn": _batch_norm,
    "lrelu": lambda s: nn.LeakyReLU(float(s.pos[0]) if s.pos else 0.2),
    "dropout": lambda s: nn.Dropout(float(s.pos[0])),
    "flatten": lambda s: nn.Flatten(),
    "reshape": _reshape,
    "mbstd": lambda s: MinibatchStd(int(s.pos[0]) if s.pos else 4),
} | {name: (lambda s, make=make: make()) for name, make in _ACTIVATIONS.items()}


def build_layer(spec: str, in_shape: Shape) -> nn.Module:
    """One layer from its spec string, for an input of shape ``in_shape`` (without batch)."""
    op, *tokens = spec.split()
    if op not in LAYERS:
        raise ConfigError(f"unknown layer {op!r} in {spec!r}: known layers are {', '.join(LAYERS)}")
    pos, opt, flags = _parse_args(spec, tokens)
    unknown = flags - _FLAGS.get(op, set())
    if unknown:
        allowed = ", ".join(sorted(_FLAGS.get(op, set()))) or "none"
        raise ConfigError(
            f"layer {spec!r}: unknown flag {', '.join(sorted(unknown))} "
            f"(flags of {op!r}: {allowed})"
        )
    try:
        return LAYERS[op](LayerSpec(spec, pos, opt, flags, in_shape))
    except (IndexError, KeyError, ValueError) as err:
        raise ConfigError(
            f"layer {spec!r} is malformed ({err}); see gankit.nets for the "
            "layer language, e.g. 'conv 64 k4 s2 p1'"
        ) from None


def build_body(layers: Sequence[str], in_shape: Shape) -> tuple[nn.Sequential, Shape]:
    """A Sequential from layer specs, and the output shape it produces for ``in_shape``."""
    modules, shape = [], tuple(in_shape)
    for spec in layers:
        layer = build_layer(spec, shape)
        layer.eval()  # probe the shape without touching batch-norm statistics
        with torch.no_grad():
            try:
                shape = tuple(layer(torch.zeros(2, *shape)).shape[1:])  # 2: batch norm
            except RuntimeError as err:
                raise ConfigError(
                    f"layer {spec!r} does not fit its input {shape}: {str(err).splitlines()[0]}"
                ) from None
        if min(shape, default=1) < 1:
            raise ConfigError(f"layer {spec!r} turns {in_shape} into an empty shape {shape}")
        layer.train()
        modules.append(layer)
    return nn.Sequential(*modules), shape


# --------------------------------------------------------------------------- initialisation


def _zero_bias(m: nn.Module) -> None:
    if m.bias is not None:
        nn.init.zeros_(m.bias)


def _init_xavier_uniform(m: nn.Module) -> None:
    nn.init.xavier_uniform_(m.weight)
    _zero_bias(m)


def _init_he_normal(m: nn.Module) -> None:
    # N(0, 1/sqrt(fan_in / 2)): "Xavier" as some TF tutorials write it, He et al. 2015 in fact.
    fan_in = nn.init._calculate_fan_in_and_fan_out(m.weight)[0]
    nn.init.normal_(m.weight, 0.0, 1.0 / math.sqrt(fan_in / 2.0))
    _zero_bias(m)


def _init_dcgan(m: nn.Module) -> None:
    nn.init.normal_(m.weight, 0.0, 0.02)  # Radford et al. 2016
    _zero_bias(m)


def _trunc_normal(std: float) -> Callable[[nn.Module], None]:
    def init(m: nn.Module) -> None:
        for p in (m.weight, m.bias):  # weights and biases alike, cut at 2σ as TF does
            if p is not None:
                nn.init.trunc_normal_(p, 0.0, std, -2 * std, 2 * std)

    return init


INITS: dict[str, Callable[[nn.Module], None] | None] = {
    "torch": None,  # PyTorch's own defaults (Kaiming-uniform)
    "xavier_uniform": _init_xavier_uniform,
    "he_normal": _init_he_normal,
    "dcgan": _init_dcgan,
}


def init_weights(module: nn.Module, scheme: str) -> None:
    """Initialise every fc/conv layer of ``module`` by ``scheme`` (see :data:`INITS`).

    ``trunc_normal:σ`` draws weights and biases from N(0, σ²) truncated at 2σ.
    """
    if scheme.startswith("trunc_normal:"):
        try:
            fn = _trunc_normal(float(scheme.split(":", 1)[1]))
        except ValueError:
            raise ConfigError(
                f"init {scheme!r}: expected trunc_normal:STD, e.g. trunc_normal:0.05"
            ) from None
    elif scheme in INITS:
        fn = INITS[scheme]
    else:
        raise ConfigError(
            f"unknown init {scheme!r}: choose one of {', '.join(INITS)} or trunc_normal:STD"
        )
    if fn is None:
        return
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            fn(m)
        elif scheme == "dcgan" and isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def apply_spectral_norm(module: nn.Module) -> None:
    """Wrap every fc/conv weight of ``module`` in spectral normalisation (Miyato et al. 2018)."""
    for name, child in module.named_children():
        if isinstance(child, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.Embedding)):
            setattr(module, name, nn.utils.parametrizations.spectral_norm(child))
        else:
            apply_spectral_norm(child)


def finish(module: nn.Module, init: str, spectral_norm: bool) -> nn.Module:
    """Initialise then (optionally) spectrally normalise a freshly built network."""
    init_weights(module, init)
    if spectral_norm:
        apply_spectral_norm(module)
    return module


# --------------------------------------------------------------------------- wrappers


class Generator(nn.Module):
    """z (B, latent) [and labels (B,)] → images (B, C, H, W).

    A conditional generator feeds the label to the body beside z: as a one-hot vector
    (``embed_dim == 0``, Mirza & Osindero 2014) or as a learned embedding.
    """

    def __init__(
        self,
        layers: Sequence[str],
        latent_dim: int,
        image_shape: Shape,
        num_classes: int = 0,
        embed_dim: int = 0,
    ):
        super().__init__()
        self.latent_dim, self.num_classes = latent_dim, num_classes
        self.image_shape = tuple(image_shape)
        self.embed = nn.Embedding(num_classes, embed_dim) if num_classes and embed_dim else None
        cond = (embed_dim or num_classes) if num_classes else 0
        self.body, out = build_body(layers, (latent_dim + cond,))
        if out != self.image_shape:
            raise ConfigError(
                f"generator layers produce {out}, but images are "
                f"{self.image_shape}: end with e.g. 'reshape "
                f"{' '.join(map(str, self.image_shape))}'"
            )

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.num_classes:
            if y is None:
                raise ValueError("a conditional generator needs labels y")
            cond = (
                self.embed(y)
                if self.embed is not None
                else nn.functional.one_hot(y, self.num_classes).to(z.dtype)
            )
            z = torch.cat([z, cond], dim=1)  # (B, latent + cond)
        return self.body(z)  # (B, C, H, W)


class Critic(nn.Module):
    """Images (B, C, H, W) [and labels] → logits (B,): discriminator or Wasserstein critic.

    Unconditional: the body ends in one unit. Conditional: the body ends in features h and the
    logit is ψ(h) + ⟨embed(y), h⟩, the projection discriminator of Miyato & Koyama (2018).
    """

    def __init__(self, layers: Sequence[str], image_shape: Shape, num_classes: int = 0):
        super().__init__()
        self.num_classes = num_classes
        self.body, out = build_body(layers, tuple(image_shape))
        if len(out) != 1:
            raise ConfigError(
                f"discriminator layers produce {out}: they must end flat, "
                "e.g. with 'flatten' then 'fc 1'"
            )
        if num_classes:
            self.head = nn.Linear(out[0], 1)
            self.embed = nn.Embedding(num_classes, out[0])
            nn.init.normal_(self.embed.weight, 0.0, 0.02)
        elif out != (1,):
            raise ConfigError(f"discriminator layers produce {out}: end with 'fc 1'")
        # the last layer with weights: what comes before it are the hidden features
        self._last = max(i for i, m in enumerate(self.body) if any(True for _ in m.parameters()))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden features (B, F) of images x: the input of the final layer, or the
        conditional body's output that meets the label embedding."""
        if self.num_classes:
            return self.body(x)
        return self.body[: self._last](x).flatten(1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.body(x)  # (B, F)
        if not self.num_classes:
            return h.squeeze(1)  # (B,)
        if y is None:
            raise ValueError("a conditional critic needs labels y")
        return self.head(h).squeeze(1) + (self.embed(y) * h).sum(dim=1)


def pack(x: torch.Tensor, m: int) -> torch.Tensor:
    """(B, F, …) → (B/m, m·F, …): each m consecutive samples stacked along the first feature
    axis, so that a discriminator judges them together (PacGAN, Lin et al. 2018)."""
    if m == 1:
        return x
    b = x.shape[0]
    if b % m:
        raise ValueError(
            f"a batch of {b} cannot be cut into packs of {m}: make train.batch_size (per "
            "process) a multiple of model.pack"
        )
    return x.reshape(b // m, m * x.shape[1], *x.shape[2:])


class JointCritic(nn.Module):
    """BiGAN/ALI discriminator: (image (B, C, H, W), code (B, D)) → logits (B,)."""

    def __init__(
        self,
        layers: Sequence[str],
        x_layers: Sequence[str],
        z_layers: Sequence[str],
        image_shape: Shape,
        latent_dim: int,
    ):
        super().__init__()
        self.x_body, x_out = build_body(list(x_layers) or ["flatten"], tuple(image_shape))
        self.z_body, z_out = build_body(z_layers, (latent_dim,))
        if len(x_out) != 1 or len(z_out) != 1:
            raise ConfigError(
                f"joint discriminator branches must end flat, got image {x_out} and code {z_out}"
            )
        self.body, out = build_body(layers, (x_out[0] + z_out[0],))
        if out != (1,):
            raise ConfigError(f"joint discriminator layers produce {out}: end with 'fc 1'")

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.x_body(x), self.z_body(z)], dim=1)  # (B, Fx + Fz)
        return self.body(h).squeeze(1)


class Encoder(nn.Module):
    """Images (B, C, H, W) → codes (B, out_dim); a VAE's out_dim is 2·latent (μ and log σ²).

    The layers describe the trunk; a linear head to ``out_dim`` is added here, so the code
    size follows the latent size.
    """

    def __init__(self, layers: Sequence[str], image_shape: Shape, out_dim: int):
        super().__init__()
        self.body, out = build_body(layers, tuple(image_shape))
        if len(out) != 1:
            raise ConfigError(
                f"encoder layers produce {out}: they must end flat, e.g. with "
                "'flatten' (a linear layer to the code follows)"
            )
        self.head = nn.Linear(out[0], out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
