"""Run folders written by earlier gankit versions still load and resume.

``tests/fixtures/v0.1-*`` are run folders that gankit 0.1 (before the package was split into
sub-packages) wrote after 3 of 6 steps on mnist-5k: a small MLP GAN (batch norm, EMA, two
Adam optimisers) and a small autoencoder with a fitted Gaussian-mixture prior. Beside each
lie the weights the same version reached at step 6 without stopping. (Its EMA generator's
batch-norm statistics were copied from G; gankit now estimates them for the averaged weights.)
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import gankit
from gankit.data import load_dataset
from gankit.runs import read_metrics
from gankit.training import fit_prior, prior_images

FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.mark.parametrize("name", ["v0.1-gan", "v0.1-ae"])
def test_an_old_run_folder_resumes_to_the_weights_it_would_have_reached(name, tmp_path):
    run_dir = tmp_path / name
    shutil.copytree(FIXTURES / name, run_dir)
    expected = load_file(run_dir / "expected-step-6-weights.safetensors")

    run = gankit.resume(run_dir, steps=6, progress=False)
    # the statistics today's gankit estimates for the EMA weights the old run reached, and
    # the mixture today's gankit fits to their codes (the trainer's 10,000 images, its seed)
    reference = copy.deepcopy(run.model)
    reference.load_weights(expected)
    if reference.prior is not None:
        seed = run.config.train.seed
        images = load_dataset(run.config.train.data).images
        fit_prior(reference, prior_images(images, seed), seed)
    expected = reference.weights()

    assert run.step == 6
    weights = run.model.weights()
    assert set(expected) <= set(weights)
    for key, value in expected.items():
        # the same computation, on whatever CPU runs the test: equal up to float rounding
        torch.testing.assert_close(
            weights[key].float(),
            value.float(),
            rtol=1e-3,
            atol=1e-4,
            msg=f"{name}: {key} differs from the run that never stopped",
        )
    assert [row["step"] for row in read_metrics(run_dir)] == [2, 4, 6]
    assert (run_dir / "samples" / "step-00000006.png").is_file()


def test_an_old_checkpoint_samples_from_its_fitted_prior(tmp_path):
    run_dir = tmp_path / "ae"
    shutil.copytree(FIXTURES / "v0.1-ae", run_dir)
    run = gankit.load_run(run_dir)

    assert run.model.fitted_prior
    first, again = run.sample(16, seed=3), run.sample(16, seed=3)
    assert first.shape == (16, 1, 28, 28) and first.dtype == torch.uint8
    assert torch.equal(first, again)
