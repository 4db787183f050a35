"""Sample grids and reconstructions in TensorBoard's Images tab: one image per grid step, the
very pixels (and channel count) of the PNG the run folder holds for that step."""

from __future__ import annotations

import errno
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import gankit
from gankit.api import launch
from gankit.errors import GankitError, StorageError
from gankit.runs import MetricsLog


def _accumulator(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"images": 0, "scalars": 0})
    accumulator.Reload()
    return accumulator


def _decoded(event) -> Image.Image:
    image = Image.open(io.BytesIO(event.encoded_image_string))
    image.load()
    return image


def _png_steps(folder: Path) -> list[int]:
    return sorted(int(p.stem.removeprefix("step-")) for p in folder.glob("step-*.png"))


def _train(tmp_path: Path, name: str, tiny_data, tensorboard: bool = True, **settings):
    config = gankit.configure(name, data_limit=0, **settings)
    trainer = launch(
        config, out=tmp_path / "run", data=tiny_data, progress=False, tensorboard=tensorboard
    )
    trainer.fit()
    return trainer.run_dir


# --------------------------------------------------------------------------- training runs


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "tags"),
    [("dcgan", ["samples"]), ("cgan", ["samples"]), ("ae", ["samples", "reconstructions"])],
)
def test_every_grid_step_reaches_tensorboard_with_the_png_pixels(name, tags, tiny_data, tmp_path):
    # steps 0 (untrained), 2, 4 (sample_every) and 5 (the end, off the period)
    run_dir = _train(tmp_path, name, tiny_data, steps=5, batch_size=32, sample_every=2, log_every=1)
    accumulator = _accumulator(run_dir / "tensorboard")
    assert sorted(accumulator.Tags()["images"]) == sorted(tags)
    for tag in tags:
        steps = _png_steps(run_dir / tag)
        assert steps == [0, 2, 4, 5]
        events = accumulator.Images(tag)
        assert [e.step for e in events] == steps  # one image per grid step, no more
        for event in events:
            png = Image.open(run_dir / tag / f"step-{event.step:08d}.png")
            image = _decoded(event)
            assert image.mode == png.mode == "L"  # a grey grid stays one channel
            assert (event.width, event.height) == image.size == png.size
            np.testing.assert_array_equal(np.asarray(image), np.asarray(png))
    # the scalars are still there, beside the images
    assert any(tag.startswith("loss/") for tag in accumulator.Tags()["scalars"])


@pytest.mark.slow
def test_a_run_without_tensorboard_writes_no_events(tiny_data, tmp_path):
    run_dir = _train(
        tmp_path, "ae", tiny_data, tensorboard=False, steps=3, batch_size=32, sample_every=2
    )
    assert _png_steps(run_dir / "samples") == [0, 2, 3]
    assert _png_steps(run_dir / "reconstructions") == [0, 2, 3]
    events = list(run_dir.rglob("events.out.tfevents*"))
    assert events == [] and not (run_dir / "tensorboard").exists()


# --------------------------------------------------------------------------- MetricsLog.add_image


def test_add_image_keeps_pixels_and_channels(tmp_path):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 10, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    log = MetricsLog(tmp_path)
    log.add_image("rgb", rgb, 3)
    log.add_image("grey", grey, 4)
    log.add_image("grey", grey[:, :, None].copy(), 8)  # (H, W, 1) is grey too
    log.close()
    accumulator = _accumulator(tmp_path / "tensorboard")
    (event,) = accumulator.Images("rgb")
    assert event.step == 3 and (event.height, event.width) == (6, 10)
    assert _decoded(event).mode == "RGB"
    np.testing.assert_array_equal(np.asarray(_decoded(event)), rgb)
    events = accumulator.Images("grey")
    assert [e.step for e in events] == [4, 8]
    for event in events:
        assert _decoded(event).mode == "L"
        np.testing.assert_array_equal(np.asarray(_decoded(event)), grey)


@pytest.mark.parametrize(
    "options", [{"active": False}, {"tensorboard": False}], ids=["other-process", "off"]
)
def test_add_image_writes_nothing_when_inactive_or_off(options, tmp_path):
    log = MetricsLog(tmp_path, **options)
    log.add_image("samples", np.zeros((4, 4), np.uint8), 0)
    log.close()
    assert not (tmp_path / "tensorboard").exists()


@pytest.mark.parametrize(
    "image", [np.zeros((4, 4), np.float32), np.zeros((4, 4, 2), np.uint8), np.zeros(4, np.uint8)]
)
def test_add_image_refuses_other_arrays(image, tmp_path):
    with pytest.raises(GankitError, match="add_image"):
        MetricsLog(tmp_path).add_image("samples", image, 0)


def test_a_failed_image_write_is_a_storage_error_naming_the_folder(tmp_path):
    class FullDisk:
        def _get_file_writer(self):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            pass

    log = MetricsLog(tmp_path)
    log._writer = FullDisk()
    with pytest.raises(StorageError, match="tensorboard.*ENOSPC.*free some disk space"):
        log.add_image("samples", np.zeros((4, 4), np.uint8), 0)
    assert log._writer is None  # the next write starts a new event file
