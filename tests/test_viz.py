"""Tests for gankit.viz: uint8 conversion, grids, PNG export, interpolation and plots."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from gankit.errors import GankitError
from gankit.viz import (
    interpolation_path,
    lerp,
    make_grid,
    pair_grid,
    plot_latent,
    plot_losses,
    plot_manifold,
    save_grid,
    save_images,
    show_grid,
    slerp,
    to_uint8,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _const_batch(values: list[int], c: int = 1, h: int = 2, w: int = 2) -> torch.Tensor:
    """uint8 (B, C, H, W) batch whose image i is filled with values[i]."""
    return torch.tensor(values, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, c, h, w).clone()


def _read_png(path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_MAGIC
    with Image.open(path) as image:
        return np.asarray(image)


# --------------------------------------------------------------------------- to_uint8


def test_to_uint8_maps_range_ends_and_midpoint():
    x = torch.tensor([-1.0, 0.0, 1.0])
    out = to_uint8(x)
    assert out.dtype == torch.uint8
    # 0 -> 127.5 -> rounded half up -> 128
    assert out.tolist() == [0, 128, 255]


def test_to_uint8_clamps_and_keeps_shape():
    x = torch.tensor([[-5.0, 3.0], [1.5, -1.2]]).view(1, 1, 2, 2)
    out = to_uint8(x)
    assert out.shape == x.shape
    assert out.flatten().tolist() == [0, 255, 255, 0]


def test_to_uint8_zero_one_range():
    out = to_uint8(torch.tensor([0.0, 0.5, 1.0, 0.25]), value_range=(0.0, 1.0))
    assert out.tolist() == [0, 128, 255, 64]  # 63.75 -> 64


def test_to_uint8_rejects_integer_input_and_bad_range():
    with pytest.raises(GankitError):
        to_uint8(torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(GankitError):
        to_uint8(torch.zeros(3), value_range=(1.0, 1.0))


# --------------------------------------------------------------------------- make_grid


def test_make_grid_exact_layout():
    images = _const_batch([10, 20, 30, 40])  # (4, 1, 2, 2)
    grid = make_grid(images, nrow=2, padding=1, pad_value=7)
    p = 7
    expected = np.array(
        [
            [p, p, p, p, p, p, p],
            [p, 10, 10, p, 20, 20, p],
            [p, 10, 10, p, 20, 20, p],
            [p, p, p, p, p, p, p],
            [p, 30, 30, p, 40, 40, p],
            [p, 30, 30, p, 40, 40, p],
            [p, p, p, p, p, p, p],
        ],
        dtype=np.uint8,
    )
    assert grid.dtype == np.uint8
    np.testing.assert_array_equal(grid, expected)


def test_make_grid_default_nrow_is_ceil_sqrt():
    grid = make_grid(_const_batch([1] * 5), padding=0)  # ceil(sqrt(5)) = 3 columns, 2 rows
    assert grid.shape == (4, 6)


def test_make_grid_rgb_gives_hwc():
    images = torch.zeros(3, 3, 2, 2, dtype=torch.uint8)
    images[1, 0] = 255  # second image pure red
    grid = make_grid(images, nrow=3, padding=1)
    assert grid.shape == (4, 10, 3)
    np.testing.assert_array_equal(grid[1, 4], [255, 0, 0])
    np.testing.assert_array_equal(grid[1, 1], [0, 0, 0])


def test_make_grid_partial_last_row_is_pad_value():
    grid = make_grid(_const_batch([50, 60, 70]), nrow=2, padding=1, pad_value=9)
    assert grid.shape == (7, 7)
    assert (grid[4:6, 1:3] == 70).all()
    assert (grid[4:6, 4:6] == 9).all()  # the empty fourth tile


def test_make_grid_rejects_float_input():
    with pytest.raises(GankitError, match="to_uint8"):
        make_grid(torch.zeros(2, 1, 2, 2))


# --------------------------------------------------------------------------- PNG export


def test_save_grid_round_trips_and_scales(tmp_path):
    images = _const_batch([0, 85, 170, 255, 30], h=3, w=2)
    expected = make_grid(images, nrow=3, padding=2)
    path = save_grid(images, tmp_path / "sub" / "grid.png", nrow=3)
    assert path == tmp_path / "sub" / "grid.png"
    np.testing.assert_array_equal(_read_png(path), expected)

    big = _read_png(save_grid(images, tmp_path / "big.png", nrow=3, scale=3))
    assert big.shape == (expected.shape[0] * 3, expected.shape[1] * 3)
    np.testing.assert_array_equal(big[::3, ::3], expected)
    np.testing.assert_array_equal(big[2::3, 1::3], expected)  # nearest: each pixel a 3x3 block
    assert not list(tmp_path.glob(".*.tmp")) and not list((tmp_path / "sub").glob(".*.tmp"))


def test_save_grid_rgb(tmp_path):
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    np.testing.assert_array_equal(
        _read_png(save_grid(images, tmp_path / "rgb.png")), make_grid(images)
    )


def test_save_images_names_and_contents(tmp_path):
    images = _const_batch([5, 6, 7], h=4, w=3)
    paths = save_images(images, tmp_path / "out", prefix="s_")
    assert [p.name for p in paths] == ["s_000000.png", "s_000001.png", "s_000002.png"]
    np.testing.assert_array_equal(_read_png(paths[1]), np.full((4, 3), 6, np.uint8))

    labelled = save_images(images, tmp_path / "lab", labels=torch.tensor([3, 0, 9]))
    assert [p.name for p in labelled] == [
        "000000_label3.png",
        "000001_label0.png",
        "000002_label9.png",
    ]
    with pytest.raises(GankitError):
        save_images(images, tmp_path, labels=torch.tensor([1, 2]))


def test_show_grid_returns_pil_image():
    image = show_grid(_const_batch([1, 2, 3, 4]), nrow=2)
    assert isinstance(image, Image.Image)
    assert image.mode == "L" and image.size == (10, 10)  # 2 tiles of 2 + 3 paddings of 2


def test_pair_grid_interleaves_rows():
    originals = _const_batch(list(range(0, 6)))  # 0..5
    recons = _const_batch(list(range(100, 106)))  # 100..105
    pairs = pair_grid(originals, recons, nrow=3)
    assert pairs.dtype == torch.uint8 and pairs.shape == (12, 1, 2, 2)
    assert pairs[:, 0, 0, 0].tolist() == [0, 1, 2, 100, 101, 102, 3, 4, 5, 103, 104, 105]


def test_pair_grid_pads_short_last_row_and_converts_floats():
    originals = torch.full((3, 1, 2, 2), 1.0)  # float in [-1, 1] -> 255
    recons = torch.full((3, 1, 2, 2), -1.0)  # -> 0
    pairs = pair_grid(originals, recons, nrow=2)
    assert pairs.shape == (8, 1, 2, 2)
    assert pairs[:, 0, 0, 0].tolist() == [255, 255, 0, 0, 255, 0, 0, 0]
    with pytest.raises(GankitError):
        pair_grid(originals, recons[:2], nrow=2)


# --------------------------------------------------------------------------- interpolation


def test_slerp_endpoints_single_and_batched():
    torch.manual_seed(0)
    a, b = torch.randn(8), torch.randn(8)
    t = torch.linspace(0, 1, 5)
    path = slerp(a, b, t)
    assert path.shape == (5, 8)
    torch.testing.assert_close(path[0], a)
    torch.testing.assert_close(path[-1], b)

    a2, b2 = torch.randn(3, 8), torch.randn(3, 8)
    batched = slerp(a2, b2, t)
    assert batched.shape == (3, 5, 8)
    torch.testing.assert_close(batched[:, 0], a2)
    torch.testing.assert_close(batched[:, -1], b2)
    torch.testing.assert_close(batched[1], slerp(a2[1], b2[1], t))


def test_slerp_orthogonal_midpoint_on_sphere():
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    mid = slerp(a, b, torch.tensor([0.5]))[0]
    torch.testing.assert_close(mid.norm(), torch.tensor(1.0))
    torch.testing.assert_close(mid @ a, mid @ b)
    torch.testing.assert_close(mid, torch.tensor([1.0, 1.0, 0.0]) / math.sqrt(2))
    # a quarter of the way: angle 22.5 degrees from a
    quarter = slerp(a, b, torch.tensor([0.25]))[0]
    torch.testing.assert_close(quarter @ a, torch.tensor(math.cos(math.pi / 8)))


def test_lerp_midpoint_is_mean_and_slerp_differs():
    a, b = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 4.0])
    t = torch.tensor([0.0, 0.5, 1.0])
    out = lerp(a, b, t)
    assert out.shape == (3, 2)
    torch.testing.assert_close(out[1], (a + b) / 2)
    assert not torch.allclose(slerp(a, b, t)[1], out[1])


def test_slerp_identical_and_antipodal_fall_back_to_lerp():
    a = torch.tensor([0.3, -1.2, 0.7])
    t = torch.linspace(0, 1, 4)
    same = slerp(a, a.clone(), t)
    assert torch.isfinite(same).all()
    torch.testing.assert_close(same, a.expand(4, 3))
    opposite = slerp(a, -a, t)
    assert torch.isfinite(opposite).all()
    torch.testing.assert_close(opposite, lerp(a, -a, t))


def test_interpolation_path_shapes_endpoints_and_modes():
    torch.manual_seed(1)
    z = torch.randn(4, 6)
    for mode in ("slerp", "lerp"):
        path = interpolation_path(z, steps=7, mode=mode)
        assert path.shape == (3, 7, 6)
        torch.testing.assert_close(path[:, 0], z[:-1])
        torch.testing.assert_close(path[:, -1], z[1:])
    torch.testing.assert_close(interpolation_path(z, 3, mode="lerp")[:, 1], (z[:-1] + z[1:]) / 2)
    with pytest.raises(GankitError):
        interpolation_path(z, 5, mode="cubic")
    with pytest.raises(GankitError):
        interpolation_path(z[:1], 5)


# --------------------------------------------------------------------------- plots


def _assert_png(path, min_side: int = 100) -> None:
    assert path.exists()
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert width >= min_side and height >= min_side
    assert width <= 4000 and height <= 4000


@pytest.mark.parametrize("dim", [1, 2, 3, 5])
def test_plot_latent_writes_png(tmp_path, dim):
    rng = np.random.default_rng(dim)
    codes = rng.normal(size=(200, dim))
    labels = rng.integers(0, 10, size=200)
    names = [f"digit {k}" for k in range(10)]
    path = plot_latent(codes, labels, tmp_path / f"latent{dim}" / "plot.png", names, title="z")
    assert path == tmp_path / f"latent{dim}" / "plot.png"
    _assert_png(path)


def test_plot_latent_without_labels_and_bad_input(tmp_path):
    _assert_png(plot_latent(np.zeros((10, 2)), None, tmp_path / "plain.png"))
    with pytest.raises(GankitError):
        plot_latent(np.zeros((10, 2)), np.zeros(9), tmp_path / "bad.png")
    with pytest.raises(GankitError):
        plot_latent(np.full((3, 2), np.nan), None, tmp_path / "nan.png")


def _brightness_decoder(codes: torch.Tensor) -> torch.Tensor:
    """Fake decoder: a 4x5 image whose brightness rises with z1 and whose top half shows z2 > 0."""
    assert codes.shape[1] == 2
    z1, z2 = codes[:, 0], codes[:, 1]
    level = ((z1 + 2.0) / 4.0 * 255.0).clamp(0, 255).to(torch.uint8)  # (N,)
    images = level.view(-1, 1, 1, 1).expand(-1, 1, 4, 5).clone()  # (N, 1, 4, 5)
    images[:, 0, 0, 0] = torch.where(z2 > 0, 255, 0).to(torch.uint8)
    return images


def test_plot_manifold_layout_and_size(tmp_path):
    n = 6
    path = plot_manifold(_brightness_decoder, tmp_path / "m" / "manifold.png", n=n)
    pixels = _read_png(path).astype(int)
    assert pixels.shape == (n * 4, n * 5)
    # z1 increases left -> right
    assert pixels[:, 1].mean() < pixels[:, -1].mean()
    columns = [pixels[1, c * 5 + 1] for c in range(n)]
    assert columns == sorted(columns) and columns[0] < columns[-1]
    # z2 high at the top: marker pixel set in the top rows only
    markers = [pixels[r * 4, 0] for r in range(n)]
    assert markers == [255] * (n // 2) + [0] * (n // 2)


def test_plot_manifold_uses_gaussian_quantiles_and_scale(tmp_path):
    seen = []

    def decode(codes):
        seen.append(codes.clone())
        return torch.zeros(codes.shape[0], 1, 2, 2, dtype=torch.uint8)

    path = plot_manifold(decode, tmp_path / "q.png", n=3, scale=2)
    assert _read_png(path).shape == (12, 12)
    codes = seen[0]
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor([0.05, 0.5, 0.95]))
    torch.testing.assert_close(codes[:3, 0], q)  # first row: z1 sweeps left -> right
    torch.testing.assert_close(codes[::3, 1], q.flip(0))  # first column: z2 top -> bottom

    with pytest.raises(GankitError):
        plot_manifold(lambda c: torch.zeros(c.shape[0], 1, 2, 2), tmp_path / "f.png", n=2)


def test_plot_losses_writes_png(tmp_path):
    rows = [
        {"step": s, "loss/D": 0.7 - s * 1e-3, "loss/G": 1.2 + s * 1e-3, "lr": 2e-4, "note": "x"}
        for s in range(0, 500, 50)
    ]
    rows.append({"step": 500, "eval/fid": 12.0})
    _assert_png(plot_losses(rows, tmp_path / "losses.png"))
    _assert_png(plot_losses(rows, tmp_path / "lr.png", keys=["lr"]))
    with pytest.raises(GankitError):
        plot_losses([{"step": 1, "acc": 0.5}], tmp_path / "none.png")
    with pytest.raises(GankitError):
        plot_losses(rows, tmp_path / "missing.png", keys=["loss/E"])


def test_saved_files_follow_umask_and_leave_no_temp_files(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    path = save_grid(_const_batch([1, 2]), tmp_path / "g.png")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["g.png"]


def _write_then_fail(self, target, *args, **kwargs):
    """Stand-in for Image.save / Figure.savefig: half a PNG, then the writer dies."""
    if isinstance(target, (str, os.PathLike)):
        with open(target, "wb") as f:
            f.write(PNG_MAGIC + b"half")
    else:
        target.write(PNG_MAGIC + b"half")
    raise RuntimeError("killed mid-write")


_WRITERS = {  # writer -> (write into a folder, the file it writes there)
    "grid": (lambda folder: save_grid(_const_batch([1, 2]), folder / "f.png"), "f.png"),
    "images": (lambda folder: save_images(_const_batch([1, 2]), folder), "000000.png"),
    "plot": (lambda folder: plot_losses([{"step": 1, "loss/G": 1.0}], folder / "f.png"), "f.png"),
}


@pytest.mark.parametrize("writer", list(_WRITERS))
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch, writer):
    from matplotlib.figure import Figure

    write, name = _WRITERS[writer]
    write(tmp_path)
    before = (tmp_path / name).read_bytes()
    if writer == "plot":
        monkeypatch.setattr(Figure, "savefig", _write_then_fail)
    else:
        monkeypatch.setattr(Image.Image, "save", _write_then_fail)
    with pytest.raises(RuntimeError, match="killed mid-write"):
        write(tmp_path)
    assert (tmp_path / name).read_bytes() == before  # whole: the previous version
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary


def test_an_unwritable_place_is_a_storage_error_naming_the_file(tmp_path):
    from gankit.errors import StorageError

    (tmp_path / "a-file").write_text("")
    with pytest.raises(StorageError, match=r"could not write .*a-file/g\.png"):
        save_grid(_const_batch([1]), tmp_path / "a-file" / "g.png")
    with pytest.raises(StorageError, match=r"could not write .*a-file/p\.png"):
        plot_losses([{"step": 1, "loss/G": 1.0}], tmp_path / "a-file" / "p.png")
