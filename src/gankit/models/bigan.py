"""BiGAN/ALI: an encoder E, a generator G and a discriminator of (image, code) pairs."""

from __future__ import annotations

from functools import partial

from torch import Tensor, nn

from gankit import losses
from gankit.config import ModelConfig
from gankit.models.autoencoder import Reconstructing
from gankit.models.base import Context, GenerativeModel, Phase, Stats, kept_or_run, reused_or_run
from gankit.models.gan import _output_stats
from gankit.nets import Encoder, Generator, JointCritic, finish, pack


class BiGAN(Reconstructing, GenerativeModel):
    """Encoder E, generator G and a discriminator of (image, code) pairs (Donahue et al. 2017;
    Dumoulin et al. 2017 call it ALI). D tells (x, E(x)) from (G(z), z); E and G share one
    optimiser and fool it together."""

    def __init__(
        self,
        config: ModelConfig,
        encoder: nn.Module | None = None,
        generator: nn.Module | None = None,
        discriminator: nn.Module | None = None,
    ):
        super().__init__(config)
        dim = config.latent.dim
        self.nets["encoder"] = encoder or finish(
            Encoder(config.encoder.layers, self.image_shape, dim),
            config.encoder.init,
            config.encoder.spectral_norm,
        )
        self.nets["generator"] = generator or finish(
            Generator(config.generator.layers, dim, self.image_shape),
            config.generator.init,
            config.generator.spectral_norm,
        )
        d, m = config.discriminator, config.pack
        c, h, w = self.image_shape
        self.nets["discriminator"] = discriminator or finish(
            JointCritic(d.layers, d.x_layers, d.z_layers, (m * c, h, w), m * dim),
            d.init,
            d.spectral_norm,
        )
        self.adv = losses.GAN_LOSSES[config.loss.gan]
        self._make_ema()

    def encode(self, x: Tensor) -> tuple[Tensor, None]:
        return self.nets["encoder"](x), None

    def critic(self, x: Tensor, z: Tensor, d: nn.Module | None = None) -> Tensor:
        """D's logits (B/m,) for (image, code) pairs in packs of m = ``model.pack``; ``d``: D
        as the current update calls it (default: the model's own)."""
        m = self.config.pack
        return (d or self.nets["discriminator"])(pack(x, m), pack(z, m)).reshape(x.shape[0] // m)

    def d_loss(self, ctx: Context, keep: bool = False) -> tuple[Tensor, Stats]:
        """D's loss; ``keep``: store E(x)'s and G(z)'s graphs for the E+G update."""
        code = kept_or_run(ctx, "code", keep, lambda: ctx.net("encoder")(ctx.x))
        fake = kept_or_run(ctx, "fake", keep, lambda: ctx.net("generator")(ctx.z))
        d = ctx.net("discriminator")
        real_logits, fake_logits = self.critic(ctx.x, code, d), self.critic(fake, ctx.z, d)
        loss = self.adv.d(real_logits, fake_logits, 1.0 - self.config.loss.label_smoothing)
        stats = _output_stats(
            self.adv.probabilistic, real_logits, fake_logits, names=("D(x,E(x))", "D(G(z),z)")
        )
        return loss, {"loss/D": loss.detach()} | stats

    def eg_loss(self, ctx: Context) -> tuple[Tensor, Stats]:
        code = reused_or_run(ctx, "code", lambda: ctx.net("encoder")(ctx.x))
        fake = reused_or_run(ctx, "fake", lambda: ctx.net("generator")(ctx.z))
        d = ctx.net("discriminator")
        real_logits, fake_logits = self.critic(ctx.x, code, d), self.critic(fake, ctx.z, d)
        loss = self.adv.d(fake_logits, real_logits)  # D's loss with the roles swapped
        return loss, {"loss/EG": loss.detach()}

    def phases(self, reuse: bool = True) -> list[Phase]:
        cfg = self.config
        keep = reuse and cfg.reuse_noise  # E(x) and G(z) as D's update computed them
        return [
            Phase(
                "D",
                ("discriminator",),
                "d",
                partial(self.d_loss, keep=keep),
                cfg.n_critic,
                "batch",
                keeps=("encoder", "generator") if keep else (),
            ),
            Phase(
                "EG",
                ("encoder", "generator"),
                "g",
                self.eg_loss,
                cfg.g_steps,
                "none" if cfg.reuse_noise else "batch",
                self.update_ema,
            ),
        ]
