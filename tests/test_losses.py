"""Loss functions against golden values and analytic cases."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.testing import assert_close

from gankit import losses


def test_bce_discriminator_loss_at_known_logits():
    real, fake = torch.tensor([2.0]), torch.tensor([-1.0])
    expected = -math.log(1 / (1 + math.exp(-2))) - math.log(1 - 1 / (1 + math.exp(1)))
    assert_close(losses.bce_d(real, fake), torch.tensor(expected))


def test_label_smoothing_changes_only_the_real_target():
    real, fake = torch.tensor([0.5]), torch.tensor([-0.5])
    p = 1 / (1 + math.exp(-0.5))
    smooth = -(0.9 * math.log(p) + 0.1 * math.log(1 - p)) - math.log(1 - 1 / (1 + math.exp(0.5)))
    assert_close(losses.bce_d(real, fake, 0.9), torch.tensor(smooth))


def test_generator_losses():
    fake = torch.tensor([0.0, 1.0])
    d = 1 / (1 + torch.exp(-fake))
    assert_close(losses.nonsaturating_g(fake), -torch.log(d).mean())
    assert_close(losses.minimax_g(fake), torch.log(1 - d).mean())
    assert_close(losses.wasserstein_g(fake), torch.tensor(-0.5))
    assert_close(losses.least_squares_g(fake), torch.tensor(0.25))


def test_wasserstein_and_hinge_discriminator_losses():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-3.0, 0.0])
    assert_close(losses.wasserstein_d(real, fake), torch.tensor(-1.5 - 1.25))
    assert_close(losses.hinge_d(real, fake), torch.tensor((0 + 0.5) / 2 + (0 + 1.0) / 2))


def test_gradient_penalty_of_a_linear_critic_is_norm_minus_one_squared():
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Flatten(), nn.Linear(12, 1))
    real, fake = torch.randn(8, 3, 2, 2), torch.randn(8, 3, 2, 2)
    w = critic[1].weight
    expected = (w.norm() - 1) ** 2  # ∇x C = w everywhere
    assert_close(losses.gradient_penalty(critic, real, fake), expected)
    # it is differentiable with respect to the critic's weights (create_graph=True)
    losses.gradient_penalty(critic, real, fake).backward()
    assert_close(w.grad, 2 * (w.norm() - 1) * w / w.norm())


def test_reconstruction_reductions():
    x = torch.full((2, 1, 2, 2), 0.5)
    out = torch.zeros(2, 1, 2, 2)
    assert_close(losses.reconstruction("mse", out, x), torch.tensor(0.25))
    assert_close(losses.reconstruction("mse-sum", out, x), torch.tensor(1.0))
    assert_close(losses.reconstruction("bce-sum", out, x), torch.tensor(4 * math.log(2)))


def test_kl_is_zero_at_the_prior_and_matches_the_formula():
    mu, logvar = torch.zeros(3, 4), torch.zeros(3, 4)
    assert_close(losses.kl_normal(mu, logvar), torch.tensor(0.0))
    mu, logvar = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, math.log(4.0)]])
    assert_close(losses.kl_normal(mu, logvar), torch.tensor(0.5 * (1 + (4 - math.log(4) - 1))))


def test_calibrated_gaussian_is_the_nll_at_the_maximum_likelihood_variance():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 3, 3)
    out = torch.randn(4, 1, 3, 3, requires_grad=True)
    mean = torch.sigmoid(out)
    variance = ((mean - x) ** 2).mean()
    pixels = 9
    # Σ over pixels of ½ (x − μ)²/σ² + ½ log 2πσ², averaged over images, with σ² = the MSE
    expected = 0.5 * pixels * (1 + torch.log(2 * math.pi * variance))
    loss = losses.reconstruction("gaussian", out, x)
    assert_close(loss, expected)
    # the variance is held fixed for the gradient, which at its optimum is the full gradient
    (grad,) = torch.autograd.grad(loss, out)
    (full,) = torch.autograd.grad(expected, out)
    assert_close(grad, full)
    assert losses.takes_logits("gaussian") and not losses.is_bce("gaussian")


def test_calibrated_gaussian_variance_has_a_floor():
    x = torch.zeros(2, 1, 2, 2)
    out = torch.full((2, 1, 2, 2), -40.0)  # sigmoid ≈ 0: a perfect reconstruction
    loss = losses.reconstruction("gaussian", out, x)
    floor = 0.5 * 4 * math.log(2 * math.pi * losses.MIN_VARIANCE)
    assert torch.isfinite(loss)
    assert_close(loss, torch.tensor(floor), atol=1e-3, rtol=0)


def test_gradient_penalty_of_a_packing_critic_takes_one_norm_per_pack():
    torch.manual_seed(0)
    linear = nn.Linear(24, 1)  # judges two 12-pixel images at once
    critic = lambda x: linear(x.reshape(len(x) // 2, 24))  # noqa: E731
    real, fake = torch.randn(8, 3, 2, 2), torch.randn(8, 3, 2, 2)
    expected = (linear.weight.norm() - 1) ** 2  # the gradient of each pack is w
    assert_close(losses.gradient_penalty(critic, real, fake), expected)
