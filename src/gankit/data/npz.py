"""``npz:PATH``: an ``images`` array (and optional ``labels``) in a NumPy archive, read with
bounds checked before any allocation.

``images`` is uint8 (0..255) or float in [0, 1], in one of three layouts, C being 1 or 3:
(N, H, W) grey, (N, C, H, W) channels first (PyTorch's and gankit's own) or (N, H, W, C)
channels last (NumPy's and Pillow's). Images must be square, H == W; they are not resized.

A 4-D shape whose second and last dimensions are both 1 or 3, such as (N, 3, 32, 3), fits
both layouts. It is read channels last only when that reading gives square images and the
channels-first one does not; otherwise channels first. So (N, 3, 3, 1) holds 3x3 grey images
(channels last), (N, 3, 3, 3) 3x3 RGB images stored channels first, and (N, 3, 32, 3) is read
channels first as 32x3 images, which are refused as not square.
"""

from __future__ import annotations

import math
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from gankit.data.dataset import Dataset
from gankit.errors import DataError
from gankit.notices import notice

# What a corrupt zip archive or .npy member can raise on the way in.
_NPZ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    NotImplementedError,
    RuntimeError,
    OverflowError,
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
)


# How many images an .npz may hold. Whatever reads one (`npz:` training data, `gankit eval
# --samples`) keeps every image in memory: one million is 16 times Fashion-MNIST's 60,000
# training images and 20 times the 50,000 samples FID is usually reported on, 784 MB as
# 28x28 uint8. An archive claiming more is refused from its .npy header, before anything is
# decompressed (a small file can claim gigabytes of zeros).
NPZ_MAX_IMAGES = 1_000_000
_NPZ_ANNOUNCE_BYTES = 100 * 10**6  # a member this large gets a line on stderr before reading


def _npz_header(
    npz: np.lib.npyio.NpzFile, key: str, path: Path
) -> tuple[tuple[int, ...], np.dtype, int] | None:
    """Shape, dtype and member size of array `key` from its .npy header alone (nothing else is
    decompressed), or None if absent; object arrays (pickles) refused."""
    names = npz.zip.namelist()
    member = next((m for m in (f"{key}.npy", key) if m in names), None)
    if member is None:
        return None
    with npz.zip.open(member) as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    if dtype.hasobject:
        raise DataError(
            f"{path}: {key!r} is an object array, which would need unpickling; refused "
            "(save plain numeric arrays)"
        )
    return shape, dtype, npz.zip.getinfo(member).file_size


def _images_layout(shape: tuple[int, ...], path: Path) -> tuple[str, int, int, int]:
    """The layout of an `images` array from its shape (see the module docstring): ("NHW",
    "NCHW" or "NHWC", channels, height, width); a shape that fits none is a DataError."""
    if len(shape) == 3 and shape[0] >= 1:
        return "NHW", 1, shape[1], shape[2]
    if len(shape) == 4 and shape[0] >= 1:
        first, last = shape[1] in (1, 3), shape[3] in (1, 3)  # C where each layout has it
        first_square, last_square = shape[2] == shape[3], shape[1] == shape[2]
        if last and (not first or (last_square and not first_square)):
            return "NHWC", shape[3], shape[1], shape[2]
        if first:
            return "NCHW", shape[1], shape[2], shape[3]
    raise DataError(
        f"{path}: 'images' has shape {shape}; expected (N, H, W), (N, C, H, W) or "
        "(N, H, W, C) with C = 1 or 3 and N >= 1"
    )


_LAYOUT_TEXT = {"NHW": "(N, H, W)", "NCHW": "(N, C, H, W)", "NHWC": "(N, H, W, C)"}


def _check_images_header(
    shape: tuple[int, ...], dtype: np.dtype, path: Path, image_size: int, max_bytes: int
) -> None:
    """Refuse, from the header, an `images` array of the wrong per-image shape or dtype, or
    larger than NPZ_MAX_IMAGES images or `max_bytes` bytes."""
    layout, channels, height, width = _images_layout(shape, path)
    if (height, width) != (image_size, image_size):
        raise DataError(
            f"{path}: 'images' has shape {shape} but images of {image_size}x{image_size} are "
            f"expected (image_size={image_size}); npz arrays are not resized (read as "
            f"{_LAYOUT_TEXT[layout]}, it holds {height}x{width} images with {channels} "
            f"channel{'s' if channels > 1 else ''})"
        )
    if dtype != np.uint8 and not np.issubdtype(dtype, np.floating):
        raise DataError(
            f"{path}: 'images' has dtype {dtype}; expected uint8 (0..255) or float in [0, 1]"
        )
    nbytes = math.prod(shape) * dtype.itemsize
    claim = f"'images' claims {shape[0]:,} images ({shape} {dtype} = {nbytes / 1e6:,.0f} MB)"
    if shape[0] > NPZ_MAX_IMAGES:
        raise DataError(
            f"{path}: {claim}, more than the limit of {NPZ_MAX_IMAGES:,} images (all are held "
            "in memory; evaluation needs tens of thousands at most); refused before reading "
            "it: save fewer images"
        )
    if nbytes > max_bytes:
        raise DataError(
            f"{path}: {claim}, more than the limit of {max_bytes / 1e6:,.0f} MB; refused "
            "before reading it: save fewer images, or as uint8"
        )


def _npz_read(
    npz: np.lib.npyio.NpzFile, key: str, path: Path, header: tuple[tuple[int, ...], np.dtype, int]
) -> np.ndarray:
    """Array `key` of an open npz whose header was checked; a large one is announced first."""
    shape, dtype, member_size = header
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > member_size:
        raise DataError(
            f"{path}: {key!r} claims shape {shape} {dtype} = {nbytes} bytes but its archive "
            f"member holds {member_size}"
        )
    if nbytes > _NPZ_ANNOUNCE_BYTES:
        notice(f"reading {path}: {key!r} {shape} {dtype}, {nbytes / 1e6:,.0f} MB decompressed")
    array = npz[key]
    if not isinstance(array, np.ndarray):
        raise DataError(f"{path}: {key!r} is not a .npy array")
    return array


def _npz_images(images: np.ndarray, path: Path) -> np.ndarray:
    """Convert an `images` array whose header was checked to uint8 (N, C, H, W)."""
    layout = _images_layout(images.shape, path)[0]
    if layout == "NHW":
        images = images[:, None]
    elif layout == "NHWC":
        images = images.transpose(0, 3, 1, 2)
    if images.dtype == np.uint8:
        out = images
    else:  # floating, as the header said
        if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
            raise DataError(f"{path}: float 'images' must be finite and within [0, 1]")
        out = np.rint(images.astype(np.float64) * 255).astype(np.uint8)
    return np.ascontiguousarray(out)  # (N, C, H, W)


def _archive_path(spec: str) -> Path:
    """The path of ``npz:spec``, refused unless it starts like a zip archive."""
    if not spec:
        raise DataError("npz: needs a path, e.g. npz:./images.npz")
    path = Path(spec).expanduser()
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if magic.startswith(b"\x93NUMPY"):
        raise DataError(f"{path}: a .npy file (one array), not an .npz archive with 'images'")
    if not magic.startswith(b"PK"):
        raise DataError(f"{path}: not an .npz archive (zip magic bytes missing)")
    return path


def npz_shape(spec: str, max_bytes: int = 1 << 31) -> tuple[int, int]:
    """(channels, size) of ``npz:spec``'s images from the .npy header alone (nothing is
    decompressed); the header checks of loading apply, at the size the images have."""
    path = _archive_path(spec)
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
            head = _npz_header(npz, "images", path)
            keys = ", ".join(npz.files) or "none"
    except DataError:
        raise
    except _NPZ_ERRORS as exc:
        raise DataError(f"{path}: cannot read the .npz archive: {exc!s:.200}") from exc
    if head is None:
        raise DataError(f"{path}: no 'images' array (keys: {keys})")
    shape, dtype, _ = head
    layout, channels, height, width = _images_layout(shape, path)
    if height != width:
        raise DataError(
            f"{path}: 'images' has shape {shape}, read as {_LAYOUT_TEXT[layout]}: {height}x"
            f"{width} images, which are not square; save square images (npz arrays are not "
            "resized or cropped)"
        )
    _check_images_header(shape, dtype, path, height, max_bytes)
    return channels, height


def _load_npz(spec: str, image_size: int, max_bytes: int = 1 << 31) -> Dataset:
    """An .npz archive with an `images` array and an optional `labels` array; both are checked
    from their headers (shape, dtype, size: see NPZ_MAX_IMAGES) before either is read."""
    path = _archive_path(spec)
    try:
        # Our own file object: np.load leaks the handles it opens when the zip is corrupt.
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
            head = _npz_header(npz, "images", path)
            if head is None:
                keys = ", ".join(npz.files) or "none"
                raise DataError(f"{path}: no 'images' array (keys: {keys})")
            _check_images_header(head[0], head[1], path, image_size, max_bytes)
            label_head = _npz_header(npz, "labels", path)
            if label_head is not None:
                shape, dtype, _ = label_head
                if len(shape) != 1 or not np.issubdtype(dtype, np.integer):
                    raise DataError(
                        f"{path}: 'labels' must be a 1-D integer array, got {dtype} {shape}"
                    )
                if shape[0] != head[0][0]:
                    raise DataError(f"{path}: {shape[0]} labels but {head[0][0]} images")
            images = _npz_read(npz, "images", path, head)
            labels = None if label_head is None else _npz_read(npz, "labels", path, label_head)
    except DataError:
        raise
    except _NPZ_ERRORS as exc:
        raise DataError(f"{path}: cannot read the .npz archive: {exc!s:.200}") from exc
    images = _npz_images(images, path)
    label_tensor = None
    if labels is not None:
        if len(labels) and labels.min() < 0:
            raise DataError(f"{path}: 'labels' must be non-negative, found {labels.min()}")
        label_tensor = torch.from_numpy(labels.astype(np.int64))  # (N,)
    spec = f"npz:{path.resolve()}"
    return Dataset(torch.from_numpy(images), label_tensor, spec, None, source=spec)
