"""Colour images end to end: every default family trains on the tinted 32×32 garments and
draws colour grids; `gankit sample` writes colour arrays in the layout FID tools read."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import gankit
from gankit.api import launch
from gankit.cli import main

# Updates of each family at batch 16: enough to leave the untrained grid behind.
FAMILY_STEPS = {
    "ae": 60,
    "vae": 60,
    "gan": 80,
    "dcgan": 40,
    "wgan": 30,
    "wgan-gp": 20,
    "cgan": 40,
    "bigan": 30,
}


def _grid(run_dir, step) -> np.ndarray:
    with Image.open(run_dir / "samples" / f"step-{step:08d}.png") as image:
        assert image.mode == "RGB"
        return np.asarray(image, dtype=float)  # (H, W, 3)


def _colourfulness(grid: np.ndarray) -> float:
    """Mean absolute difference between the colour channels (0 for grey pixels)."""
    r, g, b = grid[..., 0], grid[..., 1], grid[..., 2]
    return float((np.abs(r - g) + np.abs(g - b) + np.abs(b - r)).mean() / 3)


def _train(name: str, data, out, steps: int, **overrides):
    config = gankit.configure(
        name,
        channels=3,
        image_size=data.images.shape[-1],
        steps=steps,
        batch_size=16,
        log_every=steps,
        sample_every=steps,
        checkpoint_every=steps,
        **overrides,
    )
    trainer = launch(config, out=out, data=data, progress=False, tensorboard=False)
    trainer.fit()
    return trainer


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILY_STEPS))
def test_each_default_family_learns_colour_images(name, tinted, tmp_path):
    steps = FAMILY_STEPS[name]
    trainer = _train(name, tinted, tmp_path, steps)
    assert trainer.model.image_shape == (3, 32, 32)
    before, after = _grid(tmp_path, 0), _grid(tmp_path, steps)
    assert np.abs(before - after).mean() > 5.0  # moved away from the untrained samples
    real = np.asarray(Image.open(tmp_path / "real.png"), dtype=float)
    # the samples took colour from the data (untrained grids measure 6-7, trained 16-29,
    # real 30 on this set)
    assert _colourfulness(real) > 20
    assert _colourfulness(after) > max(0.4 * _colourfulness(real), 1.5 * _colourfulness(before))


@pytest.mark.slow
def test_the_64_pixel_dcgan_trains_and_samples_in_colour(fashion, tmp_path):
    from conftest import tinted_dataset

    data = tinted_dataset(fashion, 512, size=64)
    trainer = _train("dcgan", data, tmp_path / "run", 4)
    assert trainer.model.image_shape == (3, 64, 64)
    grid = _grid(tmp_path / "run", 4)
    assert grid.shape[-1] == 3
    assert (
        main(["sample", str(tmp_path / "run"), "--n", "5", "--out", str(tmp_path / "s.npz")]) == 0
    )
    with np.load(tmp_path / "s.npz") as f:
        assert f["images"].shape == (5, 64, 64, 3) and f["images"].dtype == np.uint8


def test_sample_writes_colour_as_n_h_w_3_and_grey_as_n_h_w(tinted, tiny_data, tmp_path):
    for label, data, expected in (
        ("colour", tinted.subset(64), (6, 32, 32, 3)),
        ("grey", tiny_data, (6, 28, 28)),
    ):
        channels, size = data.images.shape[1], data.images.shape[-1]
        config = gankit.configure(
            "dcgan", channels=channels, image_size=size, steps=1, batch_size=8
        )
        run = tmp_path / label
        launch(config, out=run, data=data, progress=False, tensorboard=False).fit()
        out, grid = tmp_path / f"{label}.npz", tmp_path / f"{label}.png"
        assert main(["sample", str(run), "--n", "6", "--out", str(out), "--grid", str(grid)]) == 0
        with np.load(out) as f:
            assert f["images"].shape == expected and f["images"].dtype == np.uint8
        with Image.open(grid) as image:
            assert image.mode == ("RGB" if channels == 3 else "L")
        folder = tmp_path / f"{label}-png"
        assert main(["sample", str(run), "--n", "3", "--out", f"{folder}/"]) == 0
        with Image.open(sorted(folder.iterdir())[0]) as image:
            assert image.mode == ("RGB" if channels == 3 else "L")
            assert image.size == (size, size)


def test_gankit_evaluator_builds_at_the_size_the_defaults_train_at(monkeypatch, capsys):
    import gankit.evaluation.evaluator as evaluator

    asked = []

    def stand_in(data, data_dir, size, device, rebuild=False, channels=0):
        asked.append((data, size, channels))
        return evaluator.shipped_evaluator("f8d28dfb91bf381f", "cpu")

    monkeypatch.setattr(evaluator, "get_evaluator", stand_in)
    for argv, expected in (
        (["cifar10"], ("cifar10", 32, 0)),  # its stored shape: no files needed to know it
        (["fashion-mnist", "--channels", "3"], ("fashion-mnist", 28, 3)),
        (["cifar10", "--image-size", "64"], ("cifar10", 64, 0)),
    ):
        assert main(["evaluator", "info", *argv]) == 0
        assert asked.pop() == expected
