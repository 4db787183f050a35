"""A model = networks + losses + phases.

The training loop (:mod:`gankit.train`) knows nothing about families: it runs each model's
:class:`Phase` list. A GAN has two phases (D × n_critic, G × g_steps), BiGAN has D and E+G,
an autoencoder one. Differences between families live here, in the phase definitions.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from gankit import losses
from gankit.config import ModelConfig
from gankit.density import GaussianMixture
from gankit.errors import ConfigError
from gankit.nets import Critic, Encoder, Generator, JointCritic, finish

Stats = dict[str, Tensor]


@dataclass
class Context:
    """What one update sees: the real batch, its labels, the noise and a random generator."""

    x: Tensor | None  # (B, C, H, W) real images in the model's data range
    y: Tensor | None  # (B,) real labels, or None
    z: Tensor  # (B, latent) noise
    y_fake: Tensor | None  # (B,) labels requested from a conditional generator
    rng: torch.Generator  # for any further randomness (VAE ε, gradient-penalty ε)
    kept: dict[str, Tensor] = field(default_factory=dict)  # outputs, with their autograd
    # graphs, that one phase computed for the next to reuse (e.g. G(z) from D's update)


@dataclass(frozen=True)
class Shard:
    """This process's share of every global batch in a K-process run: rows
    [rank·n, (rank + 1)·n) of each random draw one process would make for all K·n rows, so
    K processes together use exactly the single-process noise."""

    rank: int = 0
    world: int = 1

    def take(self, rows: Tensor) -> Tensor:
        """This process's contiguous 1/K of global ``rows`` (K·n of them)."""
        if self.world == 1:
            return rows
        n = len(rows) // self.world
        return rows[self.rank * n:(self.rank + 1) * n]

    def draw(self, n: int, sample: Callable[[int], Tensor]) -> Tensor:
        """``sample(m)`` draws m rows; returns this process's n of the K·n global ones."""
        return self.take(sample(n * self.world))


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
        self._reuse = False  # set by phases(): D's update keeps its forward pass for G's
        self.shard = Shard()  # set by a multi-process trainer
        self._routes: dict[str, nn.Module] = {}  # see routed()

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
        if self.config.data_range == "tanh":
            x = (x + 1.0) * 127.5
        else:
            x = x * 255.0
        return x.clamp(0, 255).round().to(torch.uint8)

    # -- latent -------------------------------------------------------------------------
    def sample_latent(self, n: int, rng: torch.Generator | None = None) -> Tensor:
        """n latents (n, latent) to generate from, on the model's device: the noise
        distribution, or a prior fitted to the codes (:meth:`fit_prior`)."""
        return self.noise(n, rng)

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
        return torch.rand(n, lat.dim, generator=rng, device=self.device).mul_(2 * lat.std).sub_(
            lat.std)

    def sample_labels(self, n: int, rng: torch.Generator | None = None) -> Tensor | None:
        """Uniform class labels for a conditional model, else None."""
        if not self.config.conditional:
            return None
        return torch.randint(self.config.num_classes, (n,), generator=rng, device=self.device)

    def context(self, x: Tensor | None, y: Tensor | None, rng: torch.Generator) -> Context:
        """A fresh context: real batch (possibly None) plus new noise (and fake labels)."""
        return Context(x, y, *self._noise(x.shape[0] if x is not None else 1, rng), rng)

    def refresh_noise(self, ctx: Context) -> None:
        """New noise (and fake labels) for the next update, keeping the real batch."""
        ctx.z, ctx.y_fake = self._noise(ctx.z.shape[0], ctx.rng)

    def _noise(self, n: int, rng: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """This process's n latents (and fake labels) of the global draw."""
        z = self.shard.draw(n, lambda m: self.noise(m, rng))
        y = (self.shard.draw(n, lambda m: self.sample_labels(m, rng))
             if self.config.conditional else None)
        return z, y

    # -- networks -----------------------------------------------------------------------
    def net(self, name: str) -> nn.Module:
        """The network ``name`` to call in a loss: its data-parallel wrapper where the
        current update trains it, else the network itself (see :meth:`routed`)."""
        return self._routes.get(name) or self.nets[name]

    @contextlib.contextmanager
    def routed(self, wrappers: dict[str, nn.Module]):
        """Call these wrappers (e.g. DistributedDataParallel) instead of their networks in
        the block. Only the networks an update trains go through one, so their gradients
        alone are all-reduced; frozen networks run as themselves."""
        self._routes = wrappers
        try:
            yield
        finally:
            self._routes = {}

    # -- generation ---------------------------------------------------------------------
    def decode(self, z: Tensor, y: Tensor | None = None, use_ema: bool = True) -> Tensor:
        """Latent (B, latent) → images in the data range (B, C, H, W)."""
        g = self.ema if (use_ema and self.ema is not None) else self.net("generator")
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

    def sample(self, n: int, labels: Tensor | None = None, rng: torch.Generator | None = None,
               batch_size: int = 1000) -> Tensor:
        """n new uint8 images (n, C, H, W) from the prior (and labels, if conditional)."""
        if labels is None:
            labels = self.sample_labels(n, rng)
        return self.generate_batched(self.sample_latent(n, rng), labels, batch_size)

    def generate_batched(self, z: Tensor, labels: Tensor | None = None,
                         batch_size: int = 1000) -> Tensor:
        """:meth:`generate` over latents (n, latent) in batches of at most ``batch_size``."""
        return torch.cat([self.generate(z[i:i + batch_size], labels[i:i + batch_size]
                                        if labels is not None else None)
                          for i in range(0, len(z), batch_size)])

    # -- EMA ----------------------------------------------------------------------------
    def _make_ema(self) -> None:
        if self.config.ema > 0:
            self.ema = copy.deepcopy(self.nets["generator"]).requires_grad_(False)
            # the update count travels with the EMA's state dict (and so with checkpoints)
            self.ema.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
            self._ema_updates = 0

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
        torch._foreach_lerp_(list(self.ema.parameters()), [p.detach() for p in g.parameters()],
                             1.0 - beta)
        ema_buffers = dict(self.ema.named_buffers())
        for name, b in g.named_buffers():
            ema_buffers[name].copy_(b)
        self._ema_updates = n + 1
        self.ema.ema_updates.fill_(n + 1)

    # -- weights as flat tensors (the checkpoint layout) --------------------------------
    def weights(self) -> dict[str, Tensor]:
        """Every network's state as ``net/NAME/KEY`` (and the EMA copy as ``ema/KEY``)."""
        out = {f"net/{name}/{k}": v for name, net in self.nets.items()
               for k, v in net.state_dict().items()}
        if self.ema is not None:
            out |= {f"ema/{k}": v for k, v in self.ema.state_dict().items()}
        if self.prior is not None:
            out |= {f"prior/{k}": v for k, v in self.prior.state_dict().items()}
        return out

    def load_weights(self, tensors: dict[str, Tensor]) -> None:
        """The inverse of :meth:`weights` (other keys in ``tensors`` are ignored)."""
        def part(prefix: str) -> dict[str, Tensor]:
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        for name, net in self.nets.items():
            net.load_state_dict(part(f"net/{name}/"))
        if self.ema is not None:
            self.ema.load_state_dict(part("ema/"))
            self._ema_updates = int(self.ema.ema_updates)
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


class Reconstructing:
    """For models with an encoder: x → E(x) → G(E(x)), through the mean code."""

    @torch.inference_mode()
    def reconstruct(self, images: Tensor) -> Tensor:
        """uint8 images (B, C, H, W) → uint8 reconstructions."""
        with self.evaluating():
            code, _ = self.encode(self.prepare(images))
            return self.to_uint8(self.decode(code))

    @torch.inference_mode()
    def reconstruction_metrics(self, images: Tensor, batch_size: int = 1000) -> dict:
        """Mean squared error per pixel, on the [0, 1] scale, of reconstructions of uint8
        images (B, C, H, W) through the mean code."""
        total = 0.0
        for i in range(0, len(images), batch_size):
            x = images[i:i + batch_size].to(self.device)
            diff = (self.reconstruct(x).float() - x.float()) / 255.0
            total += float(diff.square().sum())
        return {"recon_mse": total / max(images.numel(), 1)}


# =========================================================================== autoencoders


class AutoEncoder(Reconstructing, GenerativeModel):
    """AE (deterministic code) or VAE (Gaussian code, Kingma & Welling 2014)."""

    def __init__(self, config: ModelConfig, encoder: nn.Module | None = None,
                 generator: nn.Module | None = None):
        super().__init__(config)
        self.variational = config.family == "vae"
        dim = config.latent.dim
        self.nets["encoder"] = encoder or finish(
            Encoder(config.encoder.layers, self.image_shape, 2 * dim if self.variational else dim),
            config.encoder.init, config.encoder.spectral_norm)
        self.nets["generator"] = generator or finish(
            Generator(config.generator.layers, dim, self.image_shape),
            config.generator.init, config.generator.spectral_norm)
        self.logits = config.loss.recon.startswith("bce")  # decoder emits logits for BCE
        if self.logits and config.data_range != "unit":
            raise ConfigError("loss.recon = 'bce…' needs model.data_range = 'unit' ([0, 1] "
                              "pixels); use 'mse' for [-1, 1]")
        # a density of the codes to sample from (Ghosh et al. 2020), fitted by fit_prior
        self.prior = (GaussianMixture(dim, config.latent.components)
                      if config.latent.prior == "fitted" else None)
        self._make_ema()

    @property
    def fitted_prior(self) -> bool:
        return self.prior is not None and bool(self.prior.fitted)

    def sample_latent(self, n: int, rng: torch.Generator | None = None) -> Tensor:
        if self.fitted_prior:
            return self.prior.sample(n, rng)
        return self.noise(n, rng)

    @torch.inference_mode()
    def fit_prior(self, images: Tensor, seed: int = 0, batch_size: int = 1000) -> None:
        """Fit the Gaussian mixture to the codes of ``images`` (the mean code for a VAE)."""
        if self.prior is None:
            return
        with self.evaluating():
            codes = torch.cat([self.encode(self.prepare(images[i:i + batch_size]
                                                        .to(self.device)))[0]
                               for i in range(0, len(images), batch_size)])
        self.prior.fit(codes, seed)

    def decode(self, z: Tensor, y: Tensor | None = None, use_ema: bool = True) -> Tensor:
        out = super().decode(z, y, use_ema)
        return torch.sigmoid(out) if self.logits else out

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor | None]:
        """Images in the data range → (code, log-variance or None). The code is μ for a VAE."""
        h = self.net("encoder")(x)
        if self.variational:
            mu, logvar = h.chunk(2, dim=1)  # (B, D) each
            return mu, logvar
        return h, None

    def loss(self, ctx: Context) -> tuple[Tensor, Stats]:
        code, logvar = self.encode(ctx.x)
        if self.variational:
            eps = self.shard.draw(len(code), lambda m: torch.randn(
                (m, code.shape[1]), generator=ctx.rng, device=code.device))
            z = code + torch.exp(0.5 * logvar) * eps  # reparameterisation trick
        else:
            z = code
        out = self.net("generator")(z)  # (B, C, H, W): logits for BCE, pixels for MSE
        recon = losses.reconstruction(self.config.loss.recon, out, ctx.x)
        if not self.variational:
            return recon, {"loss/recon": recon.detach()}
        kl = losses.kl_normal(code, logvar)
        total = recon + self.config.loss.kl_weight * kl
        return total, {"loss/recon": recon.detach(), "loss/kl": kl.detach(),
                       "loss/total": total.detach()}

    def phases(self, reuse: bool = True) -> list[Phase]:
        return [Phase("AE", ("encoder", "generator"), "g", self.loss)]

    @torch.inference_mode()
    def reconstruction_metrics(self, images: Tensor, batch_size: int = 1000) -> dict:
        """Adds, for a VAE, the KL term and, with a Bernoulli (BCE) decoder, the evidence lower
        bound log p(x) ≥ E_q[log p(x|z)] − KL(q(z|x) ‖ p(z)) in nats per image (one draw of z
        per image, seeded)."""
        out = super().reconstruction_metrics(images, batch_size)
        if not self.variational:
            return out
        rng = torch.Generator(self.device).manual_seed(0)
        kl_sum, log_lik = 0.0, 0.0
        with self.evaluating():
            for i in range(0, len(images), batch_size):
                x = self.prepare(images[i:i + batch_size].to(self.device))
                mu, logvar = self.encode(x)
                kl_sum += float(losses.kl_normal(mu, logvar)) * len(x)
                if self.logits:
                    eps = torch.randn(mu.shape, generator=rng, device=mu.device)
                    logits = self.nets["generator"](mu + torch.exp(0.5 * logvar) * eps)
                    log_lik -= float(losses.reconstruction("bce-sum", logits, x)) * len(x)
        n = max(len(images), 1)
        out["kl"] = kl_sum / n
        if self.logits:
            out["elbo"] = (log_lik - kl_sum) / n
        return out


# =========================================================================== GANs


class GAN(GenerativeModel):
    """G against D: minimax/non-saturating, WGAN, WGAN-GP, hinge, LSGAN; optionally conditional."""

    def __init__(self, config: ModelConfig, generator: nn.Module | None = None,
                 discriminator: nn.Module | None = None):
        super().__init__(config)
        classes = config.num_classes if config.conditional else 0
        self.nets["generator"] = generator or finish(
            Generator(config.generator.layers, config.latent.dim, self.image_shape, classes,
                      config.label_embed),
            config.generator.init, config.generator.spectral_norm)
        self.nets["discriminator"] = discriminator or finish(
            Critic(config.discriminator.layers, self.image_shape, classes),
            config.discriminator.init, config.discriminator.spectral_norm)
        self.adv = losses.GAN_LOSSES[config.loss.gan]
        self._make_ema()

    def critic(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """D's logits (B,) for images x (and labels y when conditional)."""
        d = self.net("discriminator")
        out = d(x, y) if self.config.conditional else d(x)
        return out.reshape(x.shape[0])

    def d_loss(self, ctx: Context) -> tuple[Tensor, Stats]:
        cfg = self.config.loss
        # A conditional D sees fakes made at the real batch's labels, so that real and fake
        # label distributions match and the penalty's interpolates have one label each.
        fake = kept_or_run(ctx, "fake", self._reuse,  # (B, C, H, W)
                           lambda: self.decode(ctx.z, ctx.y, use_ema=False))
        real_logits, fake_logits = self.critic(ctx.x, ctx.y), self.critic(fake, ctx.y)
        loss = self.adv.d(real_logits, fake_logits, 1.0 - cfg.label_smoothing)
        stats = {"loss/D": loss.detach()}
        if cfg.gp_weight > 0:
            kwargs = {"y": ctx.y} if self.config.conditional else {}
            x = ctx.x
            eps = self.shard.draw(len(x), lambda m: losses.mixing_weights(
                m, x.dim(), ctx.rng, x.device, x.dtype))
            gp = losses.gradient_penalty(self.critic, ctx.x, fake, eps=eps, **kwargs)
            loss = loss + cfg.gp_weight * gp
            stats["gp"] = gp.detach()
        return loss, stats | _output_stats(self.adv.probabilistic, real_logits, fake_logits)

    def g_loss(self, ctx: Context) -> tuple[Tensor, Stats]:
        fake = reused_or_run(ctx, "fake", lambda: self.decode(ctx.z, ctx.y_fake, use_ema=False))
        loss = self.adv.g(self.critic(fake, ctx.y_fake))
        return loss, {"loss/G": loss.detach()}

    @torch.no_grad()
    def clip_critic(self) -> None:
        """Clip every critic weight to [−c, c] (WGAN, Arjovsky et al. 2017, algorithm 1)."""
        params = list(self.nets["discriminator"].parameters())
        c = self.config.loss.clip
        torch._foreach_clamp_min_(params, -c)
        torch._foreach_clamp_max_(params, c)

    def phases(self, reuse: bool = True) -> list[Phase]:
        cfg = self.config
        # G's update can take D's G(z) when it keeps D's noise and labels (conditional D sees
        # fakes at the real labels, G's update asks for others)
        self._reuse = reuse and cfg.reuse_noise and not cfg.conditional
        return [
            Phase("D", ("discriminator",), "d", self.d_loss, cfg.n_critic, "batch",
                  self.clip_critic if cfg.loss.clip > 0 else None,
                  ("generator",) if self._reuse else ()),
            Phase("G", ("generator",), "g", self.g_loss, cfg.g_steps,
                  "none" if cfg.reuse_noise else "noise", self.update_ema),
        ]


# =========================================================================== BiGAN


class BiGAN(Reconstructing, GenerativeModel):
    """Encoder E, generator G and a discriminator of (image, code) pairs (Donahue et al. 2017;
    Dumoulin et al. 2017 call it ALI). D tells (x, E(x)) from (G(z), z); E and G share one
    optimiser and fool it together."""

    def __init__(self, config: ModelConfig, encoder: nn.Module | None = None,
                 generator: nn.Module | None = None, discriminator: nn.Module | None = None):
        super().__init__(config)
        dim = config.latent.dim
        self.nets["encoder"] = encoder or finish(
            Encoder(config.encoder.layers, self.image_shape, dim),
            config.encoder.init, config.encoder.spectral_norm)
        self.nets["generator"] = generator or finish(
            Generator(config.generator.layers, dim, self.image_shape),
            config.generator.init, config.generator.spectral_norm)
        d = config.discriminator
        self.nets["discriminator"] = discriminator or finish(
            JointCritic(d.layers, d.x_layers, d.z_layers, self.image_shape, dim),
            d.init, d.spectral_norm)
        self.adv = losses.GAN_LOSSES[config.loss.gan]
        self._make_ema()

    def encode(self, x: Tensor) -> tuple[Tensor, None]:
        return self.net("encoder")(x), None

    def critic(self, x: Tensor, z: Tensor) -> Tensor:
        return self.net("discriminator")(x, z).reshape(x.shape[0])

    def d_loss(self, ctx: Context) -> tuple[Tensor, Stats]:
        code = kept_or_run(ctx, "code", self._reuse, lambda: self.net("encoder")(ctx.x))
        fake = kept_or_run(ctx, "fake", self._reuse, lambda: self.net("generator")(ctx.z))
        real_logits, fake_logits = self.critic(ctx.x, code), self.critic(fake, ctx.z)
        loss = self.adv.d(real_logits, fake_logits, 1.0 - self.config.loss.label_smoothing)
        stats = _output_stats(self.adv.probabilistic, real_logits, fake_logits,
                              names=("D(x,E(x))", "D(G(z),z)"))
        return loss, {"loss/D": loss.detach()} | stats

    def eg_loss(self, ctx: Context) -> tuple[Tensor, Stats]:
        code = reused_or_run(ctx, "code", lambda: self.net("encoder")(ctx.x))
        fake = reused_or_run(ctx, "fake", lambda: self.net("generator")(ctx.z))
        real_logits, fake_logits = self.critic(ctx.x, code), self.critic(fake, ctx.z)
        loss = self.adv.d(fake_logits, real_logits)  # D's loss with the roles swapped
        return loss, {"loss/EG": loss.detach()}

    def phases(self, reuse: bool = True) -> list[Phase]:
        cfg = self.config
        self._reuse = reuse and cfg.reuse_noise  # E(x) and G(z) as D's update computed them
        return [
            Phase("D", ("discriminator",), "d", self.d_loss, cfg.n_critic, "batch",
                  keeps=("encoder", "generator") if self._reuse else ()),
            Phase("EG", ("encoder", "generator"), "g", self.eg_loss, cfg.g_steps,
                  "none" if cfg.reuse_noise else "batch", self.update_ema),
        ]


def _output_stats(probabilistic: bool, real: Tensor, fake: Tensor,
                  names: tuple[str, str] = ("D(x)", "D(G(z))")) -> Stats:
    """D(x) and D(G(z)) as probabilities, or the critic gap E[C(x)] − E[C(G(z))]."""
    real, fake = real.detach(), fake.detach()
    if probabilistic:
        return {names[0]: torch.sigmoid(real).mean(), names[1]: torch.sigmoid(fake).mean()}
    return {"critic_gap": real.mean() - fake.mean()}


FAMILIES: dict[str, type[GenerativeModel]] = {
    "ae": AutoEncoder,
    "vae": AutoEncoder,
    "gan": GAN,
    "bigan": BiGAN,
}


def build_model(config: ModelConfig, **networks: nn.Module) -> GenerativeModel:
    """The model of ``config``; any network can be replaced by your own ``nn.Module``.

    ``build_model(cfg, generator=MyG(), discriminator=MyD())`` keeps the family's losses,
    schedule and optimisers. A generator maps (B, latent) [and labels] to (B, C, H, W) in the
    model's data range; a discriminator maps images [and labels] to logits (B,) or (B, 1).
    """
    cls = FAMILIES[config.family]
    try:
        return cls(config, **networks)
    except TypeError as err:
        raise ConfigError(f"family {config.family!r} does not take networks "
                          f"{sorted(networks)}: {err}") from None
