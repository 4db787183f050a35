"""The autoencoder and the VAE: one phase, reconstruction (plus KL for the VAE), and for
sampling a prior that is N(0, I) or a Gaussian mixture fitted to the training codes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from gankit import losses
from gankit.config import ModelConfig
from gankit.density import GaussianMixture
from gankit.errors import ConfigError
from gankit.models.base import Context, GenerativeModel, Phase, Stats
from gankit.nets import Encoder, Generator, finish


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
            x = images[i : i + batch_size].to(self.device)
            diff = (self.reconstruct(x).float() - x.float()) / 255.0
            total += float(diff.square().sum())
        return {"recon_mse": total / max(images.numel(), 1)}


class AutoEncoder(Reconstructing, GenerativeModel):
    """An autoencoder: a deterministic code, trained on reconstruction alone."""

    code_width = 1  # encoder outputs per latent dimension

    def __init__(
        self,
        config: ModelConfig,
        encoder: nn.Module | None = None,
        generator: nn.Module | None = None,
    ):
        super().__init__(config)
        dim = config.latent.dim
        self.nets["encoder"] = encoder or finish(
            Encoder(config.encoder.layers, self.image_shape, self.code_width * dim),
            config.encoder.init,
            config.encoder.spectral_norm,
        )
        self.nets["generator"] = generator or finish(
            Generator(config.generator.layers, dim, self.image_shape),
            config.generator.init,
            config.generator.spectral_norm,
        )
        # the decoder emits logits for BCE and the calibrated Gaussian
        self.logits = losses.takes_logits(config.loss.recon)
        if self.logits and config.data_range != "unit":
            raise ConfigError(
                f"loss.recon = {config.loss.recon!r} needs model.data_range = 'unit' ([0, 1] "
                "pixels); use 'mse' for [-1, 1]"
            )
        # a density of the codes to sample from (Ghosh et al. 2020), fitted by fit_prior
        self.prior = (
            GaussianMixture(dim, config.latent.components)
            if config.latent.prior == "fitted"
            else None
        )
        self._make_ema()

    @property
    def fitted_prior(self) -> bool:
        return self.prior is not None and bool(self.prior.fitted)

    def sample_latent(self, n: int, rng: torch.Generator | None = None) -> Tensor:
        if self.fitted_prior:
            return self.prior.sample(n, rng, self.config.latent.temperature)
        return super().sample_latent(n, rng)

    @torch.inference_mode()
    def fit_prior(self, images: Tensor, seed: int = 0, batch_size: int = 1000) -> None:
        """Fit the Gaussian mixture to the codes of ``images`` (the mean code for a VAE)."""
        if self.prior is None:
            return
        with self.evaluating():
            codes = torch.cat(
                [
                    self.encode(self.prepare(images[i : i + batch_size].to(self.device)))[0]
                    for i in range(0, len(images), batch_size)
                ]
            )
        self.prior.fit(codes, seed)

    def decode(self, z: Tensor, y: Tensor | None = None, use_ema: bool = True) -> Tensor:
        out = super().decode(z, y, use_ema)
        return torch.sigmoid(out) if self.logits else out

    def encode(self, x: Tensor, encoder: nn.Module | None = None) -> tuple[Tensor, Tensor | None]:
        """Images in the data range → (code, None); ``encoder``: E as the current update
        calls it (default: the model's own)."""
        return (encoder or self.nets["encoder"])(x), None

    def loss(self, ctx: Context) -> tuple[Tensor, Stats]:
        code, _ = self.encode(ctx.x, ctx.net("encoder"))
        out = ctx.net("generator")(code)  # (B, C, H, W): logits for BCE, pixels for MSE
        recon = losses.reconstruction(self.config.loss.recon, out, ctx.x)
        return recon, {"loss/recon": recon.detach()}

    def phases(self, reuse: bool = True) -> list[Phase]:
        return [Phase("AE", ("encoder", "generator"), "g", self.loss)]


class VAE(AutoEncoder):
    """A variational autoencoder (Kingma & Welling 2014): a Gaussian code q(z|x) = N(μ, σ²)
    and the ELBO: reconstruction + ``kl_weight`` · KL(q(z|x) ‖ N(0, I))."""

    code_width = 2  # μ and log σ² per latent dimension

    def encode(self, x: Tensor, encoder: nn.Module | None = None) -> tuple[Tensor, Tensor]:
        """Images in the data range → (μ, log σ²), each (B, D)."""
        mu, logvar = (encoder or self.nets["encoder"])(x).chunk(2, dim=1)
        return mu, logvar

    def loss(self, ctx: Context) -> tuple[Tensor, Stats]:
        mu, logvar = self.encode(ctx.x, ctx.net("encoder"))
        eps = ctx.draw(
            len(mu), lambda m: torch.randn((m, mu.shape[1]), generator=ctx.rng, device=mu.device)
        )
        out = ctx.net("generator")(mu + torch.exp(0.5 * logvar) * eps)  # reparameterised
        recon = losses.reconstruction(self.config.loss.recon, out, ctx.x)
        kl = losses.kl_normal(mu, logvar)
        total = recon + self.config.loss.kl_weight * kl
        return total, {
            "loss/recon": recon.detach(),
            "loss/kl": kl.detach(),
            "loss/total": total.detach(),
        }

    @torch.inference_mode()
    def reconstruction_metrics(self, images: Tensor, batch_size: int = 1000) -> dict:
        """Adds the KL term and, with a Bernoulli (BCE) or calibrated Gaussian decoder, the
        evidence lower bound log p(x) ≥ E_q[log p(x|z)] − KL(q(z|x) ‖ p(z)) in nats per
        image (one draw of z per image, seeded). The Gaussian's is a density of [0, 1]
        pixels, with σ² the reconstructions' mean squared error over all ``images``."""
        out = super().reconstruction_metrics(images, batch_size)
        rng = torch.Generator(self.device).manual_seed(0)
        kl_sum, log_lik, squared = 0.0, 0.0, 0.0
        kind = self.config.loss.recon
        bernoulli, gaussian = losses.is_bce(kind), kind == "gaussian"
        with self.evaluating():
            for i in range(0, len(images), batch_size):
                x = self.prepare(images[i : i + batch_size].to(self.device))
                mu, logvar = self.encode(x)
                kl_sum += float(losses.kl_normal(mu, logvar)) * len(x)
                if bernoulli or gaussian:
                    eps = torch.randn(mu.shape, generator=rng, device=mu.device)
                    logits = self.nets["generator"](mu + torch.exp(0.5 * logvar) * eps)
                if bernoulli:
                    log_lik -= float(losses.reconstruction("bce-sum", logits, x)) * len(x)
                elif gaussian:
                    squared += float((torch.sigmoid(logits) - x).square().sum())
        n = max(len(images), 1)
        out["kl"] = kl_sum / n
        if gaussian:
            pixels = images[0].numel() if len(images) else 1
            variance = max(squared / (n * pixels), losses.MIN_VARIANCE)
            log_lik = -0.5 * n * pixels * (math.log(2 * math.pi * variance) + 1)
        if bernoulli or gaussian:
            out["elbo"] = (log_lik - kl_sum) / n
        return out
