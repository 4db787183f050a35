"""Pure loss functions. Every adversarial loss takes logits, never probabilities.

Discriminator outputs are logits ℓ; D(x) = σ(ℓ). Computing −log σ(ℓ) as softplus(−ℓ) is the
same quantity as the tutorials' −log D(x) without its overflow (they add 1e-8 inside the log).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

# --------------------------------------------------------------------------- adversarial


def bce_d(real: Tensor, fake: Tensor, real_target: float = 1.0) -> Tensor:
    """−E[t·log D(x) + (1−t)·log(1−D(x))] − E[log(1−D(G(z)))], t = 1 − label smoothing."""
    target = torch.full_like(real, real_target)
    return F.binary_cross_entropy_with_logits(real, target) + F.binary_cross_entropy_with_logits(
        fake, torch.zeros_like(fake)
    )


def nonsaturating_g(fake: Tensor) -> Tensor:
    """−E[log D(G(z))] (Goodfellow et al. 2014, the non-saturating form)."""
    return F.softplus(-fake).mean()


def minimax_g(fake: Tensor) -> Tensor:
    """E[log(1 − D(G(z)))]: the original saturating minimax generator loss."""
    return -F.softplus(fake).mean()


def wasserstein_d(real: Tensor, fake: Tensor, real_target: float = 1.0) -> Tensor:
    """E[C(G(z))] − E[C(x)] (Arjovsky et al. 2017); label smoothing does not apply."""
    return fake.mean() - real.mean()


def wasserstein_g(fake: Tensor) -> Tensor:
    """−E[C(G(z))]."""
    return -fake.mean()


def hinge_d(real: Tensor, fake: Tensor, real_target: float = 1.0) -> Tensor:
    """E[max(0, 1 − D(x))] + E[max(0, 1 + D(G(z)))] (Lim & Ye 2017; Miyato et al. 2018)."""
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def least_squares_d(real: Tensor, fake: Tensor, real_target: float = 1.0) -> Tensor:
    """½E[(D(x) − t)²] + ½E[D(G(z))²] (Mao et al. 2017)."""
    return 0.5 * ((real - real_target) ** 2).mean() + 0.5 * (fake**2).mean()


def least_squares_g(fake: Tensor) -> Tensor:
    """½E[(D(G(z)) − 1)²]."""
    return 0.5 * ((fake - 1.0) ** 2).mean()


class GanLoss(NamedTuple):
    """A discriminator loss, its generator loss, and whether outputs read as probabilities."""

    d: Callable[..., Tensor]
    g: Callable[[Tensor], Tensor]
    probabilistic: bool  # σ(logit) is D's probability: report D(x), D(G(z))


GAN_LOSSES: dict[str, GanLoss] = {
    "nonsaturating": GanLoss(bce_d, nonsaturating_g, True),
    "minimax": GanLoss(bce_d, minimax_g, True),
    "wasserstein": GanLoss(wasserstein_d, wasserstein_g, False),
    "hinge": GanLoss(hinge_d, wasserstein_g, False),
    "least-squares": GanLoss(least_squares_d, least_squares_g, False),
}


def mixing_weights(
    n: int,
    dim: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """ε ~ U(0, 1), one per example, shaped (n, 1, …) to broadcast over ``dim``-D images."""
    return torch.rand(n, *([1] * (dim - 1)), generator=generator, device=device, dtype=dtype)


def gradient_penalty(
    critic: Callable[..., Tensor],
    real: Tensor,
    fake: Tensor,
    generator: torch.Generator | None = None,
    eps: Tensor | None = None,
    **critic_kwargs,
) -> Tensor:
    """E[(‖∇x̂ C(x̂)‖₂ − 1)²] at x̂ = εx + (1−ε)x̃, ε ~ U(0, 1) (Gulrajani et al. 2017, eq. 3).

    ``eps`` (B, 1, …) gives the mixing weights, else they are drawn from ``generator``. A
    critic that judges packs of images (PacGAN) has one gradient norm per pack. Returned
    without the weight λ.
    """
    if eps is None:
        eps = mixing_weights(real.shape[0], real.dim(), generator, real.device, real.dtype)
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    out = critic(mixed, **critic_kwargs)
    (grad,) = torch.autograd.grad(out.sum(), mixed, create_graph=True)
    norm = grad.reshape(len(out), -1).norm(2, dim=1)  # per critic output: a pack's images
    return ((norm - 1.0) ** 2).mean()


# --------------------------------------------------------------------------- autoencoders


def _bce(out: Tensor, x: Tensor) -> Tensor:
    return F.binary_cross_entropy_with_logits(out, x, reduction="none")


def _squared(out: Tensor, x: Tensor) -> Tensor:
    return (out - x) ** 2


MIN_VARIANCE = 1e-6  # the calibrated decoder's floor on σ² (pixels in [0, 1])


def _gaussian(out: Tensor, x: Tensor) -> Tensor:
    """−log N(x; sigmoid(out), σ²) per pixel, with one σ² for every pixel set to its maximum
    likelihood value, the batch's mean squared error (a calibrated decoder: Rybkin et al.
    2021). σ² is held fixed for the gradient; at the optimum that is the exact gradient."""
    squared = (torch.sigmoid(out) - x) ** 2
    variance = squared.detach().mean().clamp_min(MIN_VARIANCE)
    return 0.5 * squared / variance + 0.5 * torch.log(2 * math.pi * variance)


# name -> (per-pixel loss, summed over each image's pixels (else the mean of every pixel))
RECONSTRUCTIONS = {
    "mse": (_squared, False),
    "mse-sum": (_squared, True),
    "bce": (_bce, False),
    "bce-sum": (_bce, True),
    "gaussian": (_gaussian, True),
}


def is_bce(kind: str) -> bool:
    """Whether reconstruction loss ``kind`` is the Bernoulli log-likelihood."""
    return RECONSTRUCTIONS[kind][0] is _bce


def takes_logits(kind: str) -> bool:
    """Whether reconstruction loss ``kind`` reads the decoder's output as logits (the image
    is their sigmoid)."""
    return RECONSTRUCTIONS[kind][0] in (_bce, _gaussian)


def reconstruction(kind: str, out: Tensor, x: Tensor) -> Tensor:
    """Reconstruction loss between decoder output ``out`` and images ``x`` (both (B, C, H, W)).

    ``mse``/``bce``: mean over every pixel. ``mse-sum``/``bce-sum``: summed over a
    image's pixels, mean over the batch (the log-likelihood terms of an ELBO). ``bce*``
    expects ``out`` to be logits and ``x`` in [0, 1]. ``gaussian``: the negative Gaussian
    log-likelihood of ``x`` around sigmoid(``out``) with a calibrated shared variance, summed
    over each image's pixels.
    """
    if kind not in RECONSTRUCTIONS:
        raise ValueError(f"unknown reconstruction loss {kind!r}: use {', '.join(RECONSTRUCTIONS)}")
    per_pixel, summed = RECONSTRUCTIONS[kind]
    loss = per_pixel(out, x)
    return loss.flatten(1).sum(dim=1).mean() if summed else loss.mean()


def kl_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) = ½ Σ (μ² + σ² − log σ² − 1), summed over dims, mean over batch."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).sum(dim=1).mean()
