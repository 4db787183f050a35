"""One entry point for every data source: ``load_dataset(name, split)``."""

from __future__ import annotations

import difflib
import os

import torch
import torch.nn.functional as F

from gankit.data.dataset import Dataset
from gankit.data.folder import _load_folder, folder_classes
from gankit.data.mnist5k import _load_mnist_5k
from gankit.data.named import _FORMS, DATASETS, _load_idx_set
from gankit.data.npz import _load_npz
from gankit.errors import DataError


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, size, size), antialiased bilinear."""
    if images.shape[-2:] == (size, size):
        return images
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8)


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    image_size: int = 28,
    download: bool = True,
) -> Dataset:
    """Load `mnist`, `fashion-mnist` (train/test), `mnist-5k` (train/test/all),
    `folder:PATH` or `npz:PATH` as uint8 images (N, 1, image_size, image_size).

    Named sets are resized (antialiased bilinear) when image_size != 28, folder images with
    Lanczos; npz arrays must already have the requested size.
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size!r}")
    if name.startswith("folder:"):
        return _load_folder(name.removeprefix("folder:"), split, image_size)
    if name.startswith("npz:"):
        return _load_npz(name.removeprefix("npz:"), image_size)
    key = name.strip().lower()
    if key in DATASETS:
        data = _load_idx_set(key, split, data_dir, download)
    elif key == "mnist-5k":
        data = _load_mnist_5k(split)
    else:
        stems = {form.split(":")[0]: form for form in _FORMS}
        close = difflib.get_close_matches(key.split(":")[0], list(stems), n=1)
        hint = f" Did you mean {stems[close[0]]!r}?" if close else ""
        raise DataError(f"unknown data set {name!r}; valid: {', '.join(_FORMS)}.{hint}")
    data.images = _resize(data.images, image_size)
    return data


def data_shape(name: str, data_dir: str | os.PathLike | None = None) -> tuple[int, int]:
    """(channels, size) of a data set as stored, without loading its images: 1 or 3
    channels, and the side of its square images (a folder: the shortest side among its
    images, which are centre-cropped to squares). Models are built for this shape unless
    the config sets ``model.channels``/``model.image_size``."""
    key = name.strip().lower()
    if key in DATASETS or key == "mnist-5k":
        return (1, 28)
    # TODO(data helper): npz: from the header; folder: from the image headers
    return (1, 28)


def class_names(name: str) -> list[str] | None:
    """The class names of a data set by its name, without loading it: the named sets' own,
    a folder's class sub-folders; None when unknown (an ``npz:`` file, a flat folder)."""
    key = name.strip().lower()
    if key in DATASETS:
        return list(DATASETS[key].classes)
    if key == "mnist-5k":
        return [str(d) for d in range(10)]
    if name.startswith("folder:"):
        return folder_classes(name.removeprefix("folder:"))
    return None
