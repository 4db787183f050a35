"""The GAN family (MLP GAN, DCGAN, WGAN, WGAN-GP, conditional GAN): D (the critic) and G,
whose losses come from :mod:`gankit.losses`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor, nn

from gankit import losses
from gankit.config import ModelConfig
from gankit.models.base import (
    Context,
    GenerativeModel,
    Phase,
    Stats,
    kept_or_run,
    reused_or_run,
    whole_mean,
)
from gankit.nets import Critic, Generator, finish, pack


class GAN(GenerativeModel):
    """G against D: minimax/non-saturating, WGAN, WGAN-GP, hinge, LSGAN; optionally conditional."""

    def __init__(
        self,
        config: ModelConfig,
        generator: nn.Module | None = None,
        discriminator: nn.Module | None = None,
    ):
        super().__init__(config)
        classes = config.num_classes if config.conditional else 0
        c, h, w = self.image_shape
        self.nets["generator"] = generator or finish(
            Generator(
                config.generator.layers,
                config.latent.dim,
                self.image_shape,
                classes,
                config.label_embed,
            ),
            config.generator.init,
            config.generator.spectral_norm,
        )
        self.nets["discriminator"] = discriminator or finish(
            Critic(config.discriminator.layers, (config.pack * c, h, w), classes),
            config.discriminator.init,
            config.discriminator.spectral_norm,
        )
        self.adv = losses.GAN_LOSSES[config.loss.gan]
        self._make_ema()

    def critic(self, x: Tensor, y: Tensor | None = None, d: nn.Module | None = None) -> Tensor:
        """D's logits (B/m,) for images x (B, C, H, W) in packs of m = ``model.pack`` (and
        labels y when conditional); ``d``: D as the current update calls it (default: the
        model's own)."""
        d = d or self.nets["discriminator"]
        out = d(x, y) if self.config.conditional else d(pack(x, self.config.pack))
        return out.reshape(x.shape[0] // self.config.pack)

    def d_loss(self, ctx: Context, keep: bool = False) -> tuple[Tensor, Stats]:
        """D's loss; ``keep``: store G(z)'s graph for G's update (see :meth:`phases`)."""
        cfg = self.config.loss
        critic = partial(self.critic, d=ctx.net("discriminator"))
        # A conditional D sees fakes made at the real batch's labels, so that real and fake
        # label distributions match and the penalty's interpolates have one label each.
        fake = kept_or_run(  # (B, C, H, W)
            ctx, "fake", keep, lambda: self._run_generator(ctx.net("generator"), ctx.z, ctx.y)
        )
        real_logits, fake_logits = critic(ctx.x, ctx.y), critic(fake, ctx.y)
        loss = self.adv.d(real_logits, fake_logits, 1.0 - cfg.label_smoothing)
        stats = {"loss/D": loss.detach()}
        # lazy regularisation (Karras et al. 2020): the penalty on every gp_every-th critic
        # update, weighted gp_every·λ, costs 1/gp_every of its double backward
        if cfg.gp_weight > 0 and ctx.index % cfg.gp_every == 0:
            kwargs = {"y": ctx.y} if self.config.conditional else {}
            x = ctx.x
            eps = ctx.draw(
                len(x), lambda m: losses.mixing_weights(m, x.dim(), ctx.rng, x.device, x.dtype)
            )
            gp = losses.gradient_penalty(critic, ctx.x, fake, eps=eps, **kwargs)
            loss = loss + cfg.gp_every * cfg.gp_weight * gp
            stats["gp"] = gp.detach()
        return loss, stats | _output_stats(self.adv.probabilistic, real_logits, fake_logits)

    def g_loss(self, ctx: Context) -> tuple[Tensor, Stats]:
        fake = reused_or_run(
            ctx, "fake", lambda: self._run_generator(ctx.net("generator"), ctx.z, ctx.y_fake)
        )
        d = ctx.net("discriminator")
        loss = self.adv.g(self.critic(fake, ctx.y_fake, d))
        stats = {"loss/G": loss.detach()}
        weight = self.config.loss.feature_matching
        if weight:
            gap = self.feature_gap(ctx.x, fake, d, ctx.mean)  # G's update: D is never wrapped
            loss = loss + weight * gap
            stats["feature_gap"] = gap.detach()
        return loss, stats

    def feature_gap(
        self, real: Tensor, fake: Tensor, d: Critic, mean: Callable[[Tensor], Tensor] = whole_mean
    ) -> Tensor:
        """‖E f(x) − E f(G(z))‖² over D's last hidden features f (Salimans et al. 2016,
        feature matching), each E a ``mean`` over the (global) batch; the real side carries
        no gradient."""
        m = self.config.pack
        with torch.no_grad():
            target = mean(d.features(pack(real, m)))
        return (mean(d.features(pack(fake, m))) - target).pow(2).sum()

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
        keep = reuse and cfg.reuse_noise and not cfg.conditional
        return [
            Phase(
                "D",
                ("discriminator",),
                "d",
                partial(self.d_loss, keep=keep),
                cfg.n_critic,
                "batch",
                self.clip_critic if cfg.loss.clip > 0 else None,
                ("generator",) if keep else (),
            ),
            Phase(
                "G",
                ("generator",),
                "g",
                self.g_loss,
                cfg.g_steps,
                "none" if cfg.reuse_noise else "noise",
                self.update_ema,
            ),
        ]


def _output_stats(
    probabilistic: bool, real: Tensor, fake: Tensor, names: tuple[str, str] = ("D(x)", "D(G(z))")
) -> Stats:
    """D(x) and D(G(z)) as probabilities, or the critic gap E[C(x)] − E[C(G(z))]."""
    real, fake = real.detach(), fake.detach()
    if probabilistic:
        return {names[0]: torch.sigmoid(real).mean(), names[1]: torch.sigmoid(fake).mean()}
    return {"critic_gap": real.mean() - fake.mean()}
