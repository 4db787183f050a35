"""Image grids, PNG export, latent-space interpolation and plots for 28x28 generative models.

Conventions:
- Model outputs are float images in [-1, 1]; `to_uint8` turns them into uint8 [0, 255], and every
  grid/PNG function here takes uint8 tensors shaped (B, C, H, W) with C == 1 (grey) or 3 (RGB).
- Every file is written atomically (`gankit.files.atomic_write`, without fsync: a grid is not
  worth a disk flush), so a crash never leaves a half-written PNG behind; parent folders are
  created as needed, and a failed write is a StorageError naming the file.
- matplotlib is imported lazily and only through `Figure` + `FigureCanvasAgg`: importing this
  module does no work and plotting never touches pyplot's global backend state.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gankit.errors import GankitError
from gankit.files import atomic_write

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL import Image

PathLike = str | os.PathLike

_PLOT_DPI = 120
_ANGLE_EPS = 1e-6  # |sin(angle)| below this: slerp is ill-defined, fall back to lerp


# --------------------------------------------------------------------------- conversion / grids


def to_uint8(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Map float images in `value_range` to uint8 [0, 255] (same shape); clamp, round half up."""
    if not torch.is_floating_point(images):
        raise GankitError(f"to_uint8 expects a floating-point tensor, got dtype {images.dtype}")
    lo, hi = float(value_range[0]), float(value_range[1])
    if not hi > lo:
        raise GankitError(f"value_range must satisfy lo < hi, got {value_range}")
    scaled = (images.detach() - lo) / (hi - lo) * 255.0
    scaled = torch.nan_to_num(scaled, nan=0.0)  # NaN pixels become black instead of garbage
    # Round half up (floor(v + 0.5)), so the midpoint of the range, 127.5, becomes 128.
    return torch.floor(scaled.clamp(0.0, 255.0) + 0.5).to(torch.uint8)


def _check_uint8_batch(images: torch.Tensor, name: str = "images") -> torch.Tensor:
    """Validate a uint8 (B, C, H, W) batch with C in {1, 3}; a (B, H, W) batch gets C = 1."""
    if not isinstance(images, torch.Tensor):
        raise GankitError(f"{name} must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise GankitError(
            f"{name} must be uint8, got {images.dtype}; convert float images with to_uint8() first"
        )
    if images.dim() == 3:
        images = images.unsqueeze(1)  # (B, H, W) -> (B, 1, H, W)
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise GankitError(
            f"{name} must be shaped (B, C, H, W) with C = 1 or 3, got {tuple(images.shape)}"
        )
    if images.shape[0] == 0:
        raise GankitError(f"{name} is an empty batch")
    return images


def _hwc(image: np.ndarray) -> np.ndarray:
    """(C, H, W) or (C, H', W') uint8 -> (H, W) when C == 1, else (H, W, 3)."""
    return image[0] if image.shape[0] == 1 else np.ascontiguousarray(image.transpose(1, 2, 0))


def make_grid(
    images: torch.Tensor, nrow: int | None = None, padding: int = 2, pad_value: int = 0
) -> np.ndarray:
    """Tile uint8 (B, C, H, W) images row-major into one uint8 (H', W') or (H', W', 3) array."""
    images = _check_uint8_batch(images)
    b, c, h, w = images.shape
    if nrow is None:
        nrow = math.ceil(math.sqrt(b))
    if nrow < 1:
        raise GankitError(f"nrow must be >= 1, got {nrow}")
    if padding < 0:
        raise GankitError(f"padding must be >= 0, got {padding}")
    if not 0 <= pad_value <= 255:
        raise GankitError(f"pad_value must be in [0, 255], got {pad_value}")

    ncol = min(nrow, b)  # images per grid row, as in torchvision
    nrows = math.ceil(b / ncol)
    cell_h, cell_w = h + padding, w + padding
    grid = np.full((c, nrows * cell_h + padding, ncol * cell_w + padding), pad_value, np.uint8)
    array = images.detach().cpu().numpy()  # (B, C, H, W)
    for i in range(b):
        top = (i // ncol) * cell_h + padding
        left = (i % ncol) * cell_w + padding
        grid[:, top : top + h, left : left + w] = array[i]
    return _hwc(grid)


def save_png(array: np.ndarray, path: PathLike) -> Path:
    """Write a uint8 (H, W) or (H, W, 3) array as a PNG, atomically."""
    from PIL import Image

    image = Image.fromarray(array)  # uint8 (H, W) -> "L", (H, W, 3) -> "RGB"
    with atomic_write(path, "wb", sync=False) as f:
        image.save(f, format="PNG")
    return Path(path)


def grid_array(
    images: torch.Tensor, nrow: int | None = None, padding: int = 2, scale: int = 1
) -> np.ndarray:
    """The pixels `save_grid` writes: `make_grid` upsampled `scale` times (nearest), a uint8
    (H', W') or (H', W', 3) array. Save it with `save_png` to keep the very array in hand."""
    if not isinstance(scale, int) or scale < 1:
        raise GankitError(f"scale must be an integer >= 1, got {scale!r}")
    grid = make_grid(images, nrow=nrow, padding=padding)  # (H', W') or (H', W', 3)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)  # nearest-neighbour upsampling
    return grid


def save_grid(
    images: torch.Tensor, path: PathLike, nrow: int | None = None, padding: int = 2, scale: int = 1
) -> Path:
    """Save uint8 (B, C, H, W) images as one grid PNG, upsampled `scale` times (nearest)."""
    return save_png(grid_array(images, nrow=nrow, padding=padding, scale=scale), path)


def save_images(
    images: torch.Tensor, folder: PathLike, prefix: str = "", labels: torch.Tensor | None = None
) -> list[Path]:
    """Save each uint8 image as `{prefix}{i:06d}.png` (or `..._label{k}.png`); return the paths."""
    images = _check_uint8_batch(images)
    if labels is not None:
        labels = torch.as_tensor(labels).reshape(-1)
        if labels.numel() != images.shape[0]:
            raise GankitError(f"got {labels.numel()} labels for {images.shape[0]} images")
    folder = Path(folder)
    array = images.detach().cpu().numpy()  # (B, C, H, W)
    paths = []
    for i in range(array.shape[0]):
        name = f"{prefix}{i:06d}.png"
        if labels is not None:
            name = f"{prefix}{i:06d}_label{int(labels[i])}.png"
        paths.append(save_png(_hwc(array[i]), folder / name))
    return paths


def pair_grid(
    originals: torch.Tensor, reconstructions: torch.Tensor, nrow: int = 8
) -> torch.Tensor:
    """Interleave rows of `nrow` originals and their reconstructions -> uint8 batch for save_grid.

    Float inputs are taken to be in [-1, 1] and converted with `to_uint8`. When `nrow` does not
    divide B, the last originals/reconstructions rows are padded with black images so every
    reconstruction stays directly below its original; the result then has 2 * ceil(B / nrow) *
    nrow images instead of 2B. Save it with `save_grid(..., nrow=nrow)`.
    """
    if nrow < 1:
        raise GankitError(f"nrow must be >= 1, got {nrow}")
    if torch.is_floating_point(originals):
        originals = to_uint8(originals)
    if torch.is_floating_point(reconstructions):
        reconstructions = to_uint8(reconstructions)
    originals = _check_uint8_batch(originals, "originals")  # (B, C, H, W)
    reconstructions = _check_uint8_batch(reconstructions, "reconstructions")
    if originals.shape != reconstructions.shape:
        raise GankitError(
            f"originals {tuple(originals.shape)} and reconstructions "
            f"{tuple(reconstructions.shape)} must have the same shape"
        )
    rows = []
    for start in range(0, originals.shape[0], nrow):
        for batch in (originals, reconstructions):
            row = batch[start : start + nrow].cpu()  # (<= nrow, C, H, W)
            missing = nrow - row.shape[0]
            if missing:
                row = torch.cat([row, row.new_zeros((missing, *row.shape[1:]))])
            rows.append(row)
    return torch.cat(rows)  # (2 * ceil(B / nrow) * nrow, C, H, W)


def show_grid(images: torch.Tensor, nrow: int | None = None) -> Image.Image:
    """Return the grid of uint8 (B, C, H, W) images as a PIL image (Jupyter shows it inline)."""
    from PIL import Image

    grid = make_grid(images, nrow=nrow)  # (H', W') or (H', W', 3)
    return Image.fromarray(grid)  # "L" or "RGB"


# --------------------------------------------------------------------------- latent interpolation


def _check_endpoints(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Validate a, b: (D,) or (N, D) of equal shape and t: (T,); return t in a's dtype/device."""
    if a.shape != b.shape or a.dim() not in (1, 2):
        raise GankitError(
            f"a and b must share a (D,) or (N, D) shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    t = torch.as_tensor(t, dtype=a.dtype, device=a.device)
    if t.dim() != 1:
        raise GankitError(f"t must be 1-D (T,), got shape {tuple(t.shape)}")
    return t


def lerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Linear interpolation: a, b (D,) or (N, D), t (T,) -> (T, D) or (N, T, D)."""
    t = _check_endpoints(a, b, t)
    a_, b_ = a.unsqueeze(-2), b.unsqueeze(-2)  # (..., 1, D)
    return a_ + t[:, None] * (b_ - a_)  # (..., T, D)


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (right for Gaussian latents): a, b (D,)/(N, D) -> (T, D)/(N, T, D).

    The angle comes from the normalised vectors; the un-normalised a and b are combined, so
    norms are interpolated too. Where the angle is ~0 (or ~pi, or a vector is zero) the great
    circle is undefined and the result is `lerp`.
    """
    t = _check_endpoints(a, b, t)
    norm_a = a.norm(dim=-1, keepdim=True)  # (..., 1)
    norm_b = b.norm(dim=-1, keepdim=True)
    unit_a = a / norm_a.clamp_min(torch.finfo(a.dtype).tiny)
    unit_b = b / norm_b.clamp_min(torch.finfo(b.dtype).tiny)
    # 2 * atan2(|a - b|, |a + b|) is accurate near 0 and pi, unlike acos(dot).
    omega = 2 * torch.atan2((unit_a - unit_b).norm(dim=-1), (unit_a + unit_b).norm(dim=-1))
    sin_omega = torch.sin(omega)  # (...,)
    degenerate = (sin_omega.abs() < _ANGLE_EPS) | (norm_a[..., 0] == 0) | (norm_b[..., 0] == 0)
    safe_sin = torch.where(degenerate, torch.ones_like(sin_omega), sin_omega)

    omega_, sin_ = omega[..., None, None], safe_sin[..., None, None]  # (..., 1, 1)
    weight_a = torch.sin((1 - t)[:, None] * omega_) / sin_  # (..., T, 1)
    weight_b = torch.sin(t[:, None] * omega_) / sin_
    spherical = weight_a * a.unsqueeze(-2) + weight_b * b.unsqueeze(-2)  # (..., T, D)
    return torch.where(degenerate[..., None, None], lerp(a, b, t), spherical)


def interpolation_path(z: torch.Tensor, steps: int, mode: str = "slerp") -> torch.Tensor:
    """Walk between consecutive anchors: z (K, D) -> (K-1, steps, D), row r from z[r] to z[r+1]."""
    if mode not in ("slerp", "lerp"):
        raise GankitError(f"mode must be 'slerp' or 'lerp', got {mode!r}")
    if z.dim() != 2 or z.shape[0] < 2:
        raise GankitError(f"z must be (K, D) with K >= 2 anchors, got shape {tuple(z.shape)}")
    if steps < 2:
        raise GankitError(f"steps must be >= 2 (both endpoints are included), got {steps}")
    t = torch.linspace(0.0, 1.0, steps, dtype=z.dtype, device=z.device)  # (steps,)
    interpolate = slerp if mode == "slerp" else lerp
    return interpolate(z[:-1], z[1:], t)  # (K-1, steps, D)


# --------------------------------------------------------------------------- matplotlib plots


def _new_figure(figsize: tuple[float, float]) -> Figure:
    """A pyplot-free matplotlib figure with an Agg canvas attached."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    return figure


def _save_figure(figure: Figure, path: PathLike) -> Path:
    """Save a figure as PNG (dpi 120), atomically."""
    with atomic_write(path, "wb", sync=False) as f:
        figure.savefig(f, format="png", dpi=_PLOT_DPI, bbox_inches="tight")
    return Path(path)


def _pca2(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project (N, D) codes on their first two principal components -> ((N, 2), (2,) var ratio)."""
    centered = codes - codes.mean(axis=0, keepdims=True)
    _, singular, vt = np.linalg.svd(centered, full_matrices=False)
    variance = singular**2
    ratio = variance[:2] / max(float(variance.sum()), np.finfo(np.float64).tiny)
    return centered @ vt[:2].T, ratio  # (N, 2)


def plot_latent(
    codes: np.ndarray,
    labels: np.ndarray | None,
    path: PathLike,
    class_names: list[str] | None = None,
    title: str = "",
) -> Path:
    """Scatter (N, D) latent codes coloured by label: 3-D for D=3, PCA for D>3, strip for D=1."""
    codes = np.asarray(codes, dtype=np.float64)
    if codes.ndim != 2 or codes.shape[0] == 0 or codes.shape[1] == 0:
        raise GankitError(f"codes must be a non-empty (N, D) array, got shape {codes.shape}")
    if not np.isfinite(codes).all():
        raise GankitError("codes contain NaN or infinite values; nothing sensible to plot")
    n, d = codes.shape
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if labels.shape[0] != n:
            raise GankitError(f"got {labels.shape[0]} labels for {n} codes")

    figure = _new_figure((6.5, 5.5))
    if d == 3:
        axes = figure.add_subplot(projection="3d")
        points = codes  # (N, 3)
        axes.set_xlabel("z1")
        axes.set_ylabel("z2")
        axes.set_zlabel("z3")
    elif d == 2:
        axes = figure.add_subplot()
        points = codes  # (N, 2)
        axes.set_xlabel("z1")
        axes.set_ylabel("z2")
    elif d > 3:
        axes = figure.add_subplot()
        points, ratio = _pca2(codes)  # (N, 2)
        axes.set_xlabel(f"PCA component 1 ({ratio[0]:.0%} of variance)")
        axes.set_ylabel(f"PCA component 2 ({ratio[1]:.0%} of variance)")
    else:  # d == 1: code on x, random jitter on y so overlapping points stay visible
        axes = figure.add_subplot()
        jitter = np.random.default_rng(0).uniform(-0.4, 0.4, size=n)
        points = np.stack([codes[:, 0], jitter], axis=1)  # (N, 2)
        axes.set_xlabel("z1")
        axes.set_ylabel("jitter (no meaning)")
        axes.set_yticks([])

    scatter_kwargs: dict[str, Any] = {"s": 6, "alpha": 0.7, "linewidths": 0}
    if labels is None:
        axes.scatter(*points.T, color="tab:blue", **scatter_kwargs)
    else:
        classes = np.unique(labels)
        colormap = _discrete_colormap(len(classes))
        for index, cls in enumerate(classes):
            mask = labels == cls
            axes.scatter(
                *points[mask].T,
                color=colormap(index % colormap.N),
                label=_class_name(cls, class_names),
                **scatter_kwargs,
            )
        # Outside the axes, so a dense scatter is never hidden behind it.
        axes.legend(
            loc="upper left",
            bbox_to_anchor=(1.12 if d == 3 else 1.02, 1.0),
            fontsize="small",
            markerscale=3,
            title="class",
        )
    if title:
        axes.set_title(title)
    return _save_figure(figure, path)


def _discrete_colormap(count: int) -> Any:
    """tab10 for up to 10 classes, tab20 beyond (colours repeat past 20)."""
    from matplotlib import colormaps

    return colormaps["tab10" if count <= 10 else "tab20"]


def _class_name(cls: Any, class_names: list[str] | None) -> str:
    """`class_names[cls]` when cls is an integer index into it, else str(cls)."""
    if class_names is not None and np.issubdtype(type(cls), np.integer):
        if 0 <= int(cls) < len(class_names):
            return str(class_names[int(cls)])
    return str(cls)


def plot_manifold(
    decode: Callable[[torch.Tensor], torch.Tensor],
    path: PathLike,
    n: int = 20,
    quantile: float = 0.05,
    scale: int = 1,
) -> Path:
    """Decode an n x n grid over a 2-D latent and save it: z1 left->right, z2 bottom->top.

    Instead of a fixed `limit`, the grid uses Gaussian quantiles, Normal(0, 1).icdf(linspace(
    quantile, 1 - quantile, n)), so it covers the prior's mass evenly (0.05 -> about +-1.64).
    `decode` gets float32 CPU codes (n*n, 2) in row-major grid order and must return uint8
    (n*n, C, H, W); it runs under torch.no_grad(). The PNG is (n*H*scale, n*W*scale), no padding.
    """
    if n < 2:
        raise GankitError(f"n must be >= 2, got {n}")
    if not 0.0 < quantile < 0.5:
        raise GankitError(f"quantile must be in (0, 0.5), got {quantile}")
    probs = torch.linspace(quantile, 1.0 - quantile, n, dtype=torch.float64)
    values = torch.distributions.Normal(0.0, 1.0).icdf(probs).float()  # (n,), increasing
    z2, z1 = torch.meshgrid(values.flip(0), values, indexing="ij")  # (n, n); row 0 = highest z2
    codes = torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=1)  # (n*n, 2)
    with torch.no_grad():
        images = decode(codes)  # (n*n, C, H, W) uint8
    images = _check_uint8_batch(images, "decode(codes)")
    if images.shape[0] != n * n:
        raise GankitError(f"decode returned {images.shape[0]} images for {n * n} codes")
    return save_grid(images, path, nrow=n, padding=0, scale=scale)


def _is_number(value: Any) -> bool:
    """True for int/float values (bools excluded)."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def plot_losses(rows: list[dict], path: PathLike, keys: list[str] | None = None) -> Path:
    """Plot every numeric `loss/*` key (or the given keys) of metrics rows against `step`; PNG.

    Rows without a "step" use their index in `rows`; rows missing a key are skipped for it.
    """
    if keys is None:
        keys = sorted(
            {k for row in rows for k, v in row.items() if k.startswith("loss/") and _is_number(v)}
        )
        if not keys:
            raise GankitError("no numeric 'loss/...' keys in the metrics rows; pass keys=[...]")
    figure = _new_figure((7.0, 4.5))
    axes = figure.add_subplot()
    for key in keys:
        steps = [row.get("step", i) for i, row in enumerate(rows) if _is_number(row.get(key))]
        values = [row[key] for row in rows if _is_number(row.get(key))]
        if not values:
            raise GankitError(f"key {key!r} has no numeric value in any metrics row")
        axes.plot(steps, values, label=key, linewidth=1.2)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="best", fontsize="small")
    return _save_figure(figure, path)


def plot_sensitivity(panels: list[dict], path: PathLike, title: str = "") -> Path:
    """FID against each swept parameter, one panel each, as a PNG.

    A panel is a dict: ``name``, ``values`` (one per configuration), ``fid`` (their means),
    ``std`` (error bars), ``log`` (log x axis) and ``range`` ((low, high) searched, or None).
    Non-numeric values (a ``choice`` of words) are placed as categories along the x axis.
    """
    if not panels:
        raise GankitError("no parameters to plot")
    figure = _new_figure((4.2 * len(panels), 3.8))
    for index, panel in enumerate(panels, start=1):
        axes = figure.add_subplot(1, len(panels), index)
        numeric = all(_is_number(x) for x in panel["values"])
        xs = panel["values"] if numeric else [str(x) for x in panel["values"]]
        axes.errorbar(xs, panel["fid"], yerr=panel["std"], fmt="o", capsize=3, color="tab:blue")
        if numeric and panel["log"]:
            axes.set_xscale("log")
        if numeric and panel.get("range"):  # the whole searched range: where the points fell
            low, high = panel["range"]
            pad = (high / low) ** 0.05 if panel["log"] else (high - low) * 0.05
            axes.set_xlim(*((low / pad, high * pad) if panel["log"] else (low - pad, high + pad)))
        axes.tick_params(axis="x", which="both", labelrotation=30, labelsize="small")
        axes.set_xlabel(panel["name"])
        axes.set_ylabel("FID" if index == 1 else "")
        axes.grid(True, alpha=0.3)
    if title:
        figure.suptitle(title, fontsize="medium")
    return _save_figure(figure, path)
