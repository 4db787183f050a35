"""One entry point for every data source: ``load_dataset(name, split)``."""

from __future__ import annotations

import difflib
import os

import torch
import torch.nn.functional as F

from gankit.data import cifar
from gankit.data.dataset import Dataset
from gankit.data.folder import _load_folder, folder_classes, folder_shape
from gankit.data.mnist5k import _load_mnist_5k
from gankit.data.named import _FORMS, DATASETS, _load_idx_set
from gankit.data.npz import _load_npz, npz_shape
from gankit.errors import DataError

_CHANNELS = (0, 1, 3)  # as stored, grey, RGB
_CHUNK = 4096  # images converted at a time, so the int32 intermediate stays small


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, size, size), antialiased bilinear."""
    if images.shape[-2:] == (size, size):
        return images
    x = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True)
    return x.round().clamp(0, 255).to(torch.uint8)


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 (N, C, H, W) with C = 1 or 3 -> uint8 (N, channels, H, W); ``channels`` 0 keeps
    C. RGB -> grey with the ITU-R 601-2 luma weights, L = 0.299 R + 0.587 G + 0.114 B, in
    Pillow's fixed-point arithmetic (so equal to Pillow's ``convert("L")``); grey -> RGB
    repeats the channel."""
    have = images.shape[1]
    if channels == 0 or channels == have:
        return images
    if channels == 3:
        return images.repeat(1, 3, 1, 1)  # (N, 3, H, W)
    weights = torch.tensor([19595, 38470, 7471], dtype=torch.int32).view(1, 3, 1, 1)  # / 2**16
    grey = torch.empty((len(images), 1, *images.shape[2:]), dtype=torch.uint8)
    for start in range(0, len(images), _CHUNK):
        part = images[start : start + _CHUNK].to(torch.int32)  # (n, 3, H, W)
        luma = ((part * weights).sum(dim=1, keepdim=True) + 0x8000) >> 16  # (n, 1, H, W)
        grey[start : start + _CHUNK] = luma.to(torch.uint8)
    return grey


def _unknown(name: str) -> DataError:
    """The error for a data set name that is none of the valid forms, with a close match."""
    key = name.strip().lower()
    stems = {form.split(":")[0]: form for form in _FORMS}
    close = difflib.get_close_matches(key.split(":")[0], list(stems), n=1)
    hint = f" Did you mean {stems[close[0]]!r}?" if close else ""
    return DataError(f"unknown data set {name!r}; valid: {', '.join(_FORMS)}.{hint}")


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    image_size: int = 28,
    download: bool = True,
    channels: int = 0,
) -> Dataset:
    """Load `mnist`, `fashion-mnist` (train/test), `mnist-5k` (train/test/all), `cifar10`
    (train/test), `folder:PATH` or `npz:PATH` as uint8 images (N, C, image_size, image_size).

    C is as stored (``channels=0``: 1 for the MNIST sets, 3 for cifar10, a folder's or an
    archive's own) or converted to ``channels`` 1 (ITU-R 601-2 luma) or 3 (grey repeated).
    Named sets are resized (antialiased bilinear) when image_size differs from their own
    (28; cifar10 32); folder images are centre-cropped and resized with Lanczos (see
    data/folder.py); npz arrays must already have the requested size.
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size!r}")
    if not isinstance(channels, int) or isinstance(channels, bool) or channels not in _CHANNELS:
        raise DataError(f"channels must be 0 (as stored), 1 (grey) or 3 (RGB), got {channels!r}")
    key = name.strip().lower()
    if name.startswith("folder:"):
        data = _load_folder(name.removeprefix("folder:"), split, image_size)
    elif name.startswith("npz:"):
        data = _load_npz(name.removeprefix("npz:"), image_size)
    elif key in DATASETS:
        data = _load_idx_set(key, split, data_dir, download)
    elif key == "mnist-5k":
        data = _load_mnist_5k(split)
    elif key == cifar.NAME:
        data = cifar._load_cifar10(split, data_dir, download)
    else:
        raise _unknown(name)
    data.images = to_channels(_resize(data.images, image_size), channels)
    return data


def data_shape(name: str, data_dir: str | os.PathLike | None = None) -> tuple[int, int]:
    """(channels, size) of a data set as stored, without loading its images: 1 or 3
    channels, and the side of its square images (a folder: the shortest side among its
    training images, which are centre-cropped to squares; read from the image headers, a
    colour-mode file decoded only while the folder may still be grey). Models are built for
    this shape unless the config sets ``model.channels``/``model.image_size``."""
    if name.startswith("folder:"):
        return folder_shape(name.removeprefix("folder:"))
    if name.startswith("npz:"):
        return npz_shape(name.removeprefix("npz:"))
    key = name.strip().lower()
    if key in DATASETS or key == "mnist-5k":
        return (1, 28)
    if key == cifar.NAME:
        return (3, 32)
    raise _unknown(name)


def class_names(name: str) -> list[str] | None:
    """The class names of a data set by its name, without loading it: the named sets' own,
    a folder's class sub-folders; None when unknown (an ``npz:`` file, a flat folder)."""
    key = name.strip().lower()
    if key in DATASETS:
        return list(DATASETS[key].classes)
    if key == "mnist-5k":
        return [str(d) for d in range(10)]
    if key == cifar.NAME:
        return list(cifar.CLASSES)
    if name.startswith("folder:"):
        return folder_classes(name.removeprefix("folder:"))
    return None
