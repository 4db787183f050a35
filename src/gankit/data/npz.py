"""``npz:PATH``: an ``images`` array (and optional ``labels``) in a NumPy archive, read with
bounds checked before any allocation.
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


def _check_images_header(
    shape: tuple[int, ...], dtype: np.dtype, path: Path, image_size: int, max_bytes: int
) -> None:
    """Refuse, from the header, an `images` array of the wrong per-image shape or dtype, or
    larger than NPZ_MAX_IMAGES images or `max_bytes` bytes."""
    layout_ok = len(shape) == 3 or (len(shape) == 4 and 1 in (shape[1], shape[3]))
    if not layout_ok or shape[0] == 0:
        raise DataError(
            f"{path}: 'images' has shape {shape}; expected (N, H, W), (N, 1, H, W) or "
            "(N, H, W, 1) with N >= 1"
        )
    if len(shape) == 3 or shape[1] != 1:
        per_image = shape[1:3]  # (N, H, W) or (N, H, W, 1)
    else:
        per_image = shape[2:]  # (N, 1, H, W)
    if per_image != (image_size, image_size):
        raise DataError(
            f"{path}: 'images' has shape {shape} but images of {image_size}x{image_size} are "
            f"expected (image_size={image_size}); npz arrays are not resized"
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
    """Convert an `images` array whose header was checked to uint8 (N, 1, H, W)."""
    if images.ndim == 4:
        images = images[:, 0] if images.shape[1] == 1 else images[..., 0]  # (N, H, W)
    if images.dtype == np.uint8:
        out = images
    else:  # floating, as the header said
        if not np.isfinite(images).all() or images.min() < 0 or images.max() > 1:
            raise DataError(f"{path}: float 'images' must be finite and within [0, 1]")
        out = np.rint(images.astype(np.float64) * 255).astype(np.uint8)
    return np.ascontiguousarray(out)[:, None]  # (N, 1, H, W)


def _load_npz(spec: str, image_size: int, max_bytes: int = 1 << 31) -> Dataset:
    """An .npz archive with an `images` array and an optional `labels` array; both are checked
    from their headers (shape, dtype, size: see NPZ_MAX_IMAGES) before either is read."""
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
