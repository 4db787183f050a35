"""The fitted prior that makes an autoencoder generative: a Gaussian mixture of its codes."""

from __future__ import annotations

import pytest
import torch

import gankit
from gankit.density import GaussianMixture
from gankit.errors import ConfigError
from gankit.runs import load_run
from gankit.training import Trainer


def _two_blobs(n: int = 4000, seed: int = 1) -> torch.Tensor:
    """3/4 of the points around (5, 0) (σ 0.5), 1/4 around (−5, 3) (σ (1, 0.2))."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n * 3 // 4, 2, generator=gen) * 0.5 + torch.tensor([5.0, 0.0])
    b = torch.randn(n // 4, 2, generator=gen) * torch.tensor([1.0, 0.2]) + torch.tensor([-5.0, 3.0])
    return torch.cat([a, b])


def test_a_mixture_of_two_well_separated_gaussians_is_recovered():
    mixture = GaussianMixture(2, 2).fit(_two_blobs())
    order = mixture.means[:, 0].argsort(descending=True)  # (5, 0) first
    weights, means = mixture.weights[order], mixture.means[order]
    covs = (mixture.scale_tril @ mixture.scale_tril.transpose(1, 2))[order]
    torch.testing.assert_close(weights, torch.tensor([0.75, 0.25]), atol=0.01, rtol=0)
    torch.testing.assert_close(means, torch.tensor([[5.0, 0.0], [-5.0, 3.0]]), atol=0.08, rtol=0)
    torch.testing.assert_close(
        covs.diagonal(dim1=1, dim2=2),
        torch.tensor([[0.25, 0.25], [1.0, 0.04]]),
        atol=0.0,
        rtol=0.12,
    )
    assert bool(mixture.fitted)
    # the float32 fit is the float64 one up to rounding
    exact = GaussianMixture(2, 2).fit(_two_blobs(), dtype=torch.float64)
    exact_order = exact.means[:, 0].argsort(descending=True)
    torch.testing.assert_close(exact.means[exact_order], means, atol=1e-3, rtol=0)


def test_fitting_is_deterministic_and_sampling_is_seeded():
    codes = _two_blobs()
    first, second = GaussianMixture(2, 3).fit(codes), GaussianMixture(2, 3).fit(codes)
    for a, b in zip(first.state_dict().values(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    draw = first.sample(1000, torch.Generator().manual_seed(7))
    assert torch.equal(draw, first.sample(1000, torch.Generator().manual_seed(7)))
    assert not torch.equal(draw, first.sample(1000, torch.Generator().manual_seed(8)))
    many = first.sample(20_000, torch.Generator().manual_seed(0))
    assert abs(float((many[:, 0] > 0).float().mean()) - 0.75) < 0.02  # the weights hold
    assert first.log_prob(torch.tensor([[5.0, 0.0]])) > first.log_prob(torch.tensor([[0.0, 0.0]]))


def test_temperature_spreads_the_draws_about_their_component_means():
    mixture = GaussianMixture(2, 2).fit(_two_blobs())
    seeded = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    base, wide = mixture.sample(20_000, seeded()), mixture.sample(20_000, seeded(), 1.5)
    near = torch.cdist(base, mixture.means).argmin(1)  # the same components are picked
    torch.testing.assert_close(wide - mixture.means[near], 1.5 * (base - mixture.means[near]))
    assert abs(float((wide[:, 0] > 0).float().mean()) - 0.75) < 0.02  # the weights hold


def test_fewer_codes_than_components_leave_the_rest_unused():
    codes = torch.tensor([[0.0, 0.0], [10.0, 10.0], [0.1, -0.1]])
    mixture = GaussianMixture(2, 5).fit(codes)
    assert int((mixture.weights > 0).sum()) <= 3
    assert torch.isfinite(mixture.sample(100, torch.Generator().manual_seed(0))).all()


def test_the_fitted_prior_is_for_autoencoders_only():
    gankit.configure("vae", sets=["latent.prior='fitted'"])  # fine
    with pytest.raises(ConfigError, match="latent.prior = 'fitted' is for the autoencoders"):
        gankit.configure("dcgan", sets=["latent.prior='fitted'"])


def test_the_prior_travels_in_the_checkpoint_and_drives_sampling(tiny_data, tmp_path):
    config = gankit.configure(
        "ae",
        steps=6,
        batch_size=32,
        log_every=3,
        sample_every=3,
        sets=["latent.prior='fitted'", "latent.components=3"],
    )
    trainer = Trainer(config, tmp_path, data=tiny_data, progress=False, tensorboard=False)
    trainer.fit()
    assert trainer.model.fitted_prior
    run = load_run(tmp_path)
    for key, value in trainer.model.prior.state_dict().items():
        assert torch.equal(run.model.prior.state_dict()[key], value), key
    trainer.model.eval()
    assert torch.equal(
        run.sample(16, seed=3), trainer.model.sample(16, rng=torch.Generator().manual_seed(3))
    )
    codes = run.model.sample_latent(500, torch.Generator().manual_seed(0))
    noise = run.model.noise(500, torch.Generator().manual_seed(0))
    assert not torch.allclose(codes, noise)  # samples come from the mixture, not N(0, I)
    run.config.model.latent.temperature = 1.5  # what `--temperature 1.5` sets
    warm = run.model.sample_latent(500, torch.Generator().manual_seed(0))
    mixture = run.model.prior.sample(500, torch.Generator().manual_seed(0), 1.5)
    assert torch.equal(warm, mixture) and not torch.equal(warm, codes)


@pytest.mark.slow
def test_an_autoencoder_samples_far_better_from_its_fitted_prior(fashion, evaluation, tmp_path):
    config = gankit.configure(
        "ae", steps=400, sample_every=400, checkpoint_every=400, sets=["latent.prior='fitted'"]
    )
    trainer = Trainer(
        config, tmp_path, data=fashion.subset(20_000), progress=False, tensorboard=False
    )
    trainer.fit()
    model = trainer.model.eval()
    fitted = model.sample(4000, rng=torch.Generator().manual_seed(0))
    normal = model.generate_batched(model.noise(4000, torch.Generator().manual_seed(0)))
    fid = {
        name: evaluation(images, memorisation=False, kid_subsets=5)["fid"]
        for name, images in (("fitted", fitted), ("normal", normal))
    }
    # measured: 600 steps gave FID 88 (fitted) against 924 (N(0, I)); 400 steps, 4,000 samples
    # leave a wide margin around a 4x gap
    assert fid["fitted"] < fid["normal"] / 4, fid


def test_log_prob_is_the_mixture_density():
    """The batched precision-factor evaluation against torch.distributions, in 5-D."""
    gen = torch.Generator().manual_seed(3)
    codes = torch.randn(600, 5, generator=gen) @ torch.randn(5, 5, generator=gen)
    mixture = GaussianMixture(5, 3).fit(codes)
    parts = torch.distributions.MultivariateNormal(
        mixture.means, scale_tril=mixture.scale_tril
    )  # batch of 3 components
    direct = (parts.log_prob(codes.unsqueeze(1)) + mixture.weights.log()).logsumexp(1)
    torch.testing.assert_close(mixture.log_prob(codes), direct, rtol=1e-5, atol=1e-4)
