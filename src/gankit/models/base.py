"""What every model is: networks, the noise it draws, the phases a training step runs, an
EMA copy of the generator, and its weights as one flat dict.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from gankit.config import ModelConfig
from gankit.viz import to_uint8

# the EMA generator's batch-norm statistics are estimated on this many draws, in batches:
# 1,024 score as well as 2,560 (five-minute dcgan, FID 40.8 and 41.5), in 0.4 s on 2 cores
EMA_STATS_DRAWS, EMA_STATS_BATCH = 1024, 256

Stats = dict[str, Tensor]


Draw = Callable[[int, Callable[[int], Tensor]], Tensor]


def whole_draw(n: int, sample: Callable[[int], Tensor]) -> Tensor:
    """One process's draw of n rows: all of ``sample(n)``."""
    return sample(n)


def whole_mean(rows: Tensor) -> Tensor:
    """The batch mean of one process's rows, which are the whole batch."""
    return rows.mean(dim=0)


@dataclass
class Context:
    """What one update sees: the real batch, its labels, the noise, a random generator, the
    networks to call and how to draw further noise.

    The trainer fills in ``nets`` and ``draw``: under data parallelism an update calls the
    wrappers of the networks it trains (so their gradients alone are all-reduced) and each
    process keeps its share of every global draw; a model only ever calls ``ctx.net(name)``
    and ``ctx.draw(n, sample)``, and knows nothing of processes.
    """

    x: Tensor | None  # (B, C, H, W) real images in the model's data range
    y: Tensor | None  # (B,) real labels, or None
    z: Tensor  # (B, latent) noise
    y_fake: Tensor | None  # (B,) labels requested from a conditional generator
    rng: torch.Generator  # for any further randomness (VAE ε, gradient-penalty ε)
    nets: Mapping[str, nn.Module] = field(default_factory=dict)  # the modules to call
    draw: Draw = whole_draw  # (n, sample) -> this update's n rows of a global draw
    mean: Callable[[Tensor], Tensor] = whole_mean  # rows -> their mean over the global batch
    kept: dict[str, Tensor] = field(default_factory=dict)  # outputs, with their autograd
    # graphs, that one phase computed for the next to reuse (e.g. G(z) from D's update)
    index: int = 0  # this update's number within its phase over the run: step × repeat + i

    def net(self, name: str) -> nn.Module:
        """The network ``name`` as this update calls it."""
        return self.nets[name]


@dataclass
class Phase:
    """One kind of update: which networks it trains, with which optimiser, on which loss."""

    name: str
    nets: tuple[str, ...]  # networks whose parameters this phase updates
    optimizer: Literal["g", "d"]  # key of the optimiser config (model.opt_g / model.opt_d)
    loss: Callable[[Context], tuple[Tensor, Stats]]
    repeat: int = 1  # consecutive updates per training step
    draw: Literal["batch", "noise", "none"] = "batch"  # fresh real batch + noise, noise, nothing
    after_step: Callable[[], None] | None = None  # e.g. weight clipping, EMA update
    keeps: tuple[str, ...] = ()  # networks whose graphs this phase keeps for the next one


class GenerativeModel(nn.Module):
    """Base of every family: networks in ``self.nets``, data scaling, latent, sampling."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.nets = nn.ModuleDict()
        self.ema: nn.Module | None = None  # EMA copy of the generator, when config.ema > 0
        self.prior: nn.Module | None = None  # a density fitted to codes (autoencoders)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c = self.config
        return (c.channels, c.image_size, c.image_size)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- data scaling -----------------------------------------------------------------
    def prepare(self, images: Tensor) -> Tensor:
        """uint8 images (B, C, H, W) → floats in the model's data range."""
        x = images.float()
        if self.config.data_range == "tanh":
            return x.mul_(1.0 / 127.5).sub_(1.0)  # [-1, 1]
        return x.mul_(1.0 / 255.0)  # [0, 1]

    def to_uint8(self, x: Tensor) -> Tensor:
        """Floats in the model's data range → uint8 images, clamped."""
        return to_uint8(x, (-1.0, 1.0) if self.config.data_range == "tanh" else (0.0, 1.0))

    # -- latent -------------------------------------------------------------------------
    def sample_latent(self, n: int, rng: torch.Generator | None = None) -> Tensor:
        """n latents (n, latent) to generate from, on the model's device: the noise
        distribution, or a prior fitted to the codes (:meth:`fit_prior`), at the sampling
        temperature (``latent.temperature``)."""
        temperature = self.config.latent.temperature
        z = self.noise(n, rng)
        return z.mul_(temperature) if temperature != 1.0 else z

    @property
    def fitted_prior(self) -> bool:
        """Whether :meth:`sample_latent` draws from a prior fitted to data."""
        return False

    def fit_prior(self, images: Tensor, seed: int = 0) -> None:
        """Fit the prior that samples are drawn from to these uint8 training images (a
        no-op for models whose prior is fixed)."""

    def noise(self, n: int, rng: torch.Generator | None = None) -> Tensor:
        """n draws (n, latent) of the configured noise distribution, N(0, std²) or
        U(−std, std), on the model's device."""
        lat = self.config.latent
        if lat.dist == "normal":
            z = torch.randn(n, lat.dim, generator=rng, device=self.device)
            return z.mul_(lat.std) if lat.std != 1.0 else z
        return (
            torch.rand(n, lat.dim, generator=rng, device=self.device)
            .mul_(2 * lat.std)
            .sub_(lat.std)
        )

    def sample_labels(self, n: int, rng: torch.Generator | None = None) -> Tensor | None:
        """Uniform class labels for a conditional model, else None."""
        if not self.config.conditional:
            return None
        return torch.randint(self.config.num_classes, (n,), generator=rng, device=self.device)

    def context(
        self,
        x: Tensor | None,
        y: Tensor | None,
        rng: torch.Generator,
        nets: Mapping[str, nn.Module] | None = None,
        draw: Draw = whole_draw,
        mean: Callable[[Tensor], Tensor] = whole_mean,
    ) -> Context:
        """A fresh context: real batch (possibly None) plus new noise (and fake labels);
        ``nets`` (default: the model's own), ``draw`` and ``mean`` as :class:`Context` says."""
        nets = self.nets if nets is None else nets
        ctx = Context(x, y, None, None, rng, nets, draw, mean=mean)
        self.refresh_noise(ctx, x.shape[0] if x is not None else 1)
        return ctx

    def refresh_noise(self, ctx: Context, n: int | None = None) -> None:
        """New noise (and fake labels) for the next update, keeping the real batch."""
        n = ctx.z.shape[0] if n is None else n
        ctx.z = ctx.draw(n, lambda m: self.noise(m, ctx.rng))
        ctx.y_fake = (
            ctx.draw(n, lambda m: self.sample_labels(m, ctx.rng))
            if self.config.conditional
            else None
        )

    # -- generation ---------------------------------------------------------------------
    def decode(self, z: Tensor, y: Tensor | None = None, use_ema: bool = True) -> Tensor:
        """Latent (B, latent) → images in the data range (B, C, H, W)."""
        if use_ema and self.ema is not None:
            if self._ema_stats_stale:
                self.recompute_ema_stats()
            return self._run_generator(self.ema, z, y)
        return self._run_generator(self.nets["generator"], z, y)

    def _run_generator(self, g: nn.Module, z: Tensor, y: Tensor | None) -> Tensor:
        return g(z, y) if self.config.conditional else g(z)

    @contextlib.contextmanager
    def evaluating(self):
        """Every network in eval mode for the block, then back to the mode it was in."""
        was_training = self.training
        self.eval()
        try:
            yield
        finally:
            self.train(was_training)

    @torch.inference_mode()
    def generate(self, z: Tensor, y: Tensor | None = None, use_ema: bool = True) -> Tensor:
        """uint8 images from given latents, with every network in eval mode."""
        with self.evaluating():
            return self.to_uint8(self.decode(z, y, use_ema))

    def sample(
        self,
        n: int,
        labels: Tensor | None = None,
        rng: torch.Generator | None = None,
        batch_size: int = 1000,
    ) -> Tensor:
        """n new uint8 images (n, C, H, W) from the prior (and labels, if conditional)."""
        if labels is None:
            labels = self.sample_labels(n, rng)
        return self.generate_batched(self.sample_latent(n, rng), labels, batch_size)

    def generate_batched(
        self, z: Tensor, labels: Tensor | None = None, batch_size: int = 1000
    ) -> Tensor:
        """:meth:`generate` over latents (n, latent) in batches of at most ``batch_size``."""
        return torch.cat(
            [
                self.generate(
                    z[i : i + batch_size],
                    labels[i : i + batch_size] if labels is not None else None,
                )
                for i in range(0, len(z), batch_size)
            ]
        )

    # -- EMA ----------------------------------------------------------------------------
    def _make_ema(self) -> None:
        if self.config.ema > 0:
            self.ema = copy.deepcopy(self.nets["generator"]).requires_grad_(False)
            # the update count travels with the EMA's state dict (and so with checkpoints)
            self.ema.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
            # the update count its batch-norm statistics were estimated at (those of the
            # untrained G it copies: 0; -1 in a checkpoint whose statistics were copied)
            self.ema.register_buffer("ema_stats_for", torch.zeros((), dtype=torch.long))
            self._ema_updates = self._ema_stats_for = 0

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema ← β·ema + (1 − β)·G, β = min(decay, (1 + n)/(10 + n)) after n updates.

        The warm-up keeps early grids of a short run from showing the untrained generator;
        buffers (batch-norm statistics) are copied.
        """
        if self.ema is None:
            return
        n = self._ema_updates
        beta = min(self.config.ema, (1 + n) / (10 + n))
        g = self.nets["generator"]
        torch._foreach_lerp_(
            list(self.ema.parameters()), [p.detach() for p in g.parameters()], 1.0 - beta
        )
        ema_buffers = dict(self.ema.named_buffers())
        for name, b in g.named_buffers():
            ema_buffers[name].copy_(b)
        self._ema_updates = n + 1
        self.ema.ema_updates.fill_(n + 1)

    @property
    def _recomputes_ema_stats(self) -> bool:
        """Whether the EMA generator's batch-norm statistics are re-estimated for its own
        weights (``model.ema_stats``); an autoencoder's decoder is fed codes, not noise."""
        return (
            self.ema is not None
            and self.config.ema_stats == "recompute"
            and self.config.family in ("gan", "bigan")
            and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.ema.modules())
        )

    @property
    def _ema_stats_stale(self) -> bool:
        """Whether the EMA's statistics must be estimated before it samples or is saved."""
        return self._ema_stats_for != self._ema_updates and self._recomputes_ema_stats

    @torch.no_grad()
    def recompute_ema_stats(self) -> None:
        """Re-estimate the EMA generator's batch-norm statistics from its own outputs.

        Copied from G, they describe G's activations, not those of the averaged weights,
        and samples drawn with them are worse (five-minute ``dcgan``: FID 48.9 → 40.3).
        The population mean and variance of each layer are averaged over
        ``EMA_STATS_DRAWS`` noise draws (and uniform labels) of a fixed seed, so the result
        depends on the EMA weights alone: a resumed run, a reloaded checkpoint and every
        process of a distributed run compute the same statistics (up to the rounding of the
        memory format: a checkpoint keeps its estimate, and loading it does not estimate
        anew).
        """
        if not self._recomputes_ema_stats:
            return
        norms = [m for m in self.ema.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        momenta = [m.momentum for m in norms]
        was_training = self.ema.training
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches below
        self.ema.eval()  # dropout off: the estimate uses no global random state
        for m in norms:
            m.train()
        rng = torch.Generator(device=self.device).manual_seed(0)
        for _ in range(EMA_STATS_DRAWS // EMA_STATS_BATCH):
            z = self.noise(EMA_STATS_BATCH, rng)
            self._run_generator(self.ema, z, self.sample_labels(EMA_STATS_BATCH, rng))
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        self.ema.train(was_training)
        self.ema.ema_stats_for.fill_(self._ema_updates)
        self._ema_stats_for = self._ema_updates

    # -- weights as flat tensors (the checkpoint layout) --------------------------------
    def weights(self) -> dict[str, Tensor]:
        """Every network's state as ``net/NAME/KEY`` (and the EMA copy as ``ema/KEY``)."""
        out = {
            f"net/{name}/{k}": v
            for name, net in self.nets.items()
            for k, v in net.state_dict().items()
        }
        if self.ema is not None:
            if self._ema_stats_stale:  # the checkpoint holds the statistics samples use
                self.recompute_ema_stats()
            out |= {f"ema/{k}": v for k, v in self.ema.state_dict().items()}
        if self.prior is not None:
            out |= {f"prior/{k}": v for k, v in self.prior.state_dict().items()}
        return out

    def load_weights(self, tensors: dict[str, Tensor]) -> None:
        """The inverse of :meth:`weights` (other keys in ``tensors`` are ignored)."""

        def part(prefix: str) -> dict[str, Tensor]:
            return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

        for name, net in self.nets.items():
            net.load_state_dict(part(f"net/{name}/"))
        if self.ema is not None:
            ema = part("ema/")
            # (statistics saved by an older gankit were copied from G: estimated anew)
            ema.setdefault("ema_stats_for", torch.tensor(-1))
            self.ema.load_state_dict(ema)
            self._ema_updates = int(self.ema.ema_updates)
            self._ema_stats_for = int(self.ema.ema_stats_for)
        if self.prior is not None and part("prior/"):  # (checkpoints before priors: none)
            self.prior.load_state_dict(part("prior/"))

    # -- to be defined by each family ---------------------------------------------------
    def phases(self, reuse: bool = True) -> list[Phase]:
        """The updates of one training step, in order. ``reuse``: where the next phase sees
        the same inputs and networks, it reuses this phase's forward pass instead of running
        it again (same gradients; a batch-norm layer updates its running statistics once)."""
        raise NotImplementedError


def kept_or_run(ctx: Context, key: str, keep: bool, forward: Callable[[], Tensor]) -> Tensor:
    """``forward()`` without gradient, or, when ``keep``, with its graph stored as
    ``ctx.kept[key]`` for the next phase (see :func:`reused_or_run`); returned detached."""
    if not keep:
        with torch.no_grad():
            return forward()
    out = ctx.kept[key] = forward()
    return out.detach()


def reused_or_run(ctx: Context, key: str, forward: Callable[[], Tensor]) -> Tensor:
    """The output the previous phase kept under ``key`` (once), else ``forward()``."""
    out = ctx.kept.pop(key, None)
    return forward() if out is None else out
