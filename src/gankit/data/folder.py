"""``folder:PATH``: a folder of images, labelled by class sub-folders when it has them.

How a folder becomes uint8 images (N, C, S, S), S = ``image_size``:

* **Files.** Images directly in the folder (no labels) or one sub-folder per class (labels in
  sorted folder order); a folder with ``train/`` and ``test/`` sub-folders gives one split
  each. Files are taken by suffix (``.png .jpg .jpeg .bmp .gif .tif .tiff .webp``), sorted by
  name; hidden files are skipped. A file that cannot be read as an image is a DataError that
  names it. An animated file gives its first frame; EXIF orientation is applied.
* **Channels.** C = 3 if any image of the folder (of either split, so that both splits have
  the same C) is colour, else C = 1. Grey modes (``1``,
  ``L``, ``LA``, ``I``, ``I;16``…) are grey. A colour mode (``RGB``, ``RGBA``, ``P``, ``PA``,
  ``CMYK``, ``YCbCr``…) is colour only if, once converted to RGB (transparency composited as
  below), its three channels are not all equal: an RGB PNG of grey pixels is grey. In a colour
  folder the grey images are repeated into three equal channels.
* **Pixel values.** 8-bit modes as they are; 16-bit grey (``I;16*``, and ``I``, which is how
  older Pillow opens 16-bit PNGs) scaled 0..65535 -> 0..255; ``1`` as 0/255; ``CMYK``,
  ``YCbCr``, ``LAB`` and ``HSV`` through Pillow's conversion to RGB. Mode ``F`` (32-bit float)
  has no agreed range and is refused.
* **Transparency** (an alpha band, or a transparent colour or palette entry) is composited
  onto black, the background of gankit's named sets: c' = round(c * alpha / 255).
* **Crop and resize.** Each image is centre-cropped to a square of its shortest side (an odd
  excess drops the extra column or row on the right or bottom), then resized with Pillow's
  antialiased Lanczos filter to S x S unless it already has that size. Images of different
  sizes and modes mix freely: each is cropped and resized on its own.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from gankit.data.dataset import Dataset
from gankit.errors import DataError

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
_GREY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N"}
_16_BIT_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}
_ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}


def _image_files(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name; hidden files skipped."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _IMAGE_SUFFIXES
    )


@contextmanager
def _opened(path: Path) -> Iterator:
    """``with _opened(path) as im``: Pillow's lazy open (header only); any failure, here or
    while the block decodes pixels, is a DataError naming the file."""
    from PIL import Image  # Pillow is only needed for folders

    try:
        with Image.open(path) as im:
            yield im
    except DataError:
        raise
    except (
        OSError,
        ValueError,
        SyntaxError,
        EOFError,
        struct.error,
        Image.DecompressionBombError,
    ) as exc:
        raise DataError(f"{path}: cannot read the image: {exc}") from exc


def _decode(im, path: Path) -> np.ndarray:
    """An open image's pixels as uint8 (H, W) for a grey mode or (H, W, 3) for a colour
    mode, EXIF orientation applied, transparency composited onto black."""
    from PIL import ImageOps

    im = ImageOps.exif_transpose(im) or im
    mode = im.mode
    if mode == "F":
        raise DataError(
            f"{path}: 32-bit float pixels (mode F) have no agreed range; "
            "save the image as 8- or 16-bit"
        )
    if mode in _16_BIT_MODES:  # (H, W) uint16 or int32, 0..65535
        grey = np.asarray(im).astype(np.float64).clip(0, 65535)
        return np.rint(grey * (255 / 65535)).astype(np.uint8)
    if mode == "1":
        im, mode = im.convert("L"), "L"
    transparent = mode in _ALPHA_MODES or "transparency" in im.info
    if transparent:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint16)  # (H, W, 4)
        alpha = rgba[..., 3:]
        rgb = ((rgba[..., :3] * alpha + 127) // 255).astype(np.uint8)  # onto black
    else:
        rgb = np.asarray(im if mode == "L" else im.convert("RGB"), dtype=np.uint8)
    if mode in _GREY_MODES:
        return rgb[..., 0] if rgb.ndim == 3 else rgb  # (H, W)
    return rgb  # (H, W, 3)


def _is_colour(pixels: np.ndarray) -> bool:
    """Whether decoded pixels (H, W) or (H, W, 3) have channels that are not all equal."""
    if pixels.ndim == 2:
        return False
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    return not (np.array_equal(r, g) and np.array_equal(g, b))


def _crop_resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop uint8 (H, W[, 3]) to a square, then Lanczos-resize it to (size, size[, 3])."""
    from PIL import Image

    h, w = pixels.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = pixels[top : top + side, left : left + side]
    if side == size:
        return np.ascontiguousarray(square)
    resized = Image.fromarray(np.ascontiguousarray(square)).resize(
        (size, size), Image.Resampling.LANCZOS
    )
    return np.asarray(resized, dtype=np.uint8)


def _read_image(path: Path, size: int) -> tuple[np.ndarray, bool]:
    """One image file as uint8 (size, size) or (size, size, 3), and whether it is colour."""
    with _opened(path) as im:
        pixels = _decode(im, path)
    return _crop_resize(pixels, size), _is_colour(pixels)


def _split_root(spec: str, split: str) -> Path:
    """The folder holding a split's images: ``spec``, or its ``train/``/``test/`` one."""
    if not spec:
        raise DataError("folder: needs a path, e.g. folder:./my_images")
    root = Path(spec).expanduser()
    if not root.is_dir():
        raise DataError(f"folder:{spec}: {root} is not a folder")
    if (root / "train").is_dir() and (root / "test").is_dir():
        if split not in ("train", "test"):
            raise DataError(f"{root} has train/ and test/ sub-folders; split must be one of them")
        root = root / split
    return root


def _class_dirs(root: Path) -> list[Path]:
    """The class sub-folders of ``root`` that hold images, in label order."""
    class_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    return [d for d in class_dirs if _image_files(d)]


def folder_classes(spec: str) -> list[str] | None:
    """The class names (sub-folders) of ``folder:spec``'s training images, or None."""
    try:
        return [d.name for d in _class_dirs(_split_root(spec, "train"))] or None
    except (DataError, OSError):
        return None


def _listing(root: Path) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """A split folder's image files, their labels and the class names (None: no classes)."""
    loose = _image_files(root)
    class_dirs = _class_dirs(root)
    if loose and class_dirs:
        raise DataError(
            f"{root}: holds images directly and in class sub-folders "
            f"({', '.join(d.name for d in class_dirs)}); put every image in a class folder or none"
        )
    if not loose and not class_dirs:
        suffixes = " ".join(sorted(_IMAGE_SUFFIXES))
        raise DataError(f"{root}: no images ({suffixes}) in it or in its sub-folders")
    if loose:
        return loose, None, None
    files: list[Path] = []
    labels: list[int] = []
    for index, d in enumerate(class_dirs):
        found = _image_files(d)
        files += found
        labels += [index] * len(found)
    return files, labels, [d.name for d in class_dirs]


def _other_split_files(spec: str, root: Path) -> list[Path]:
    """The image files of the folder's other split, if it has one and it can be listed."""
    top = Path(spec).expanduser()
    if root == top:
        return []
    try:
        return [f for other in ("train", "test") for f in _listing(top / other)[0]
                if top / other != root]  # fmt: skip
    except (DataError, OSError):
        return []  # its own load will say what is wrong with it


def _any_colour(files: list[Path]) -> bool:
    """Whether any of ``files`` is colour. Grey modes are known from the header; colour-mode
    files are decoded in order only until one proves colour."""
    for path in files:
        with _opened(path) as im:  # the header only: no pixels yet
            if im.mode in _GREY_MODES:
                continue
            if _is_colour(_decode(im, path)):
                return True
    return False


def _load_folder(spec: str, split: str, image_size: int) -> Dataset:
    """Images in a folder as uint8 (N, C, image_size, image_size): see the module docstring."""
    root = _split_root(spec, split)
    files, labels, classes = _listing(root)
    read = [_read_image(p, image_size) for p in files]
    if any(colour for _, colour in read) or _any_colour(_other_split_files(spec, root)):
        rgb = [px if px.ndim == 3 else np.repeat(px[..., None], 3, axis=2) for px, _ in read]
        images = np.stack(rgb).transpose(0, 3, 1, 2)  # (N, S, S, 3) -> (N, 3, S, S)
    else:
        images = np.stack([px if px.ndim == 2 else px[..., 0] for px, _ in read])[:, None]
    return Dataset(
        images=torch.from_numpy(np.ascontiguousarray(images)),  # (N, C, S, S)
        labels=None if labels is None else torch.tensor(labels, dtype=torch.int64),  # (N,)
        name=f"folder:{root.resolve()}",
        classes=classes,
        source=f"folder:{root.resolve()}",
    )


def folder_shape(spec: str) -> tuple[int, int]:
    """(channels, size) of ``folder:spec`` (both splits, if it has them) from the image
    headers: size is the shortest side among all its images; colour-mode files are decoded
    only while none has yet proved the folder colour (an RGB file may hold grey pixels)."""
    root = _split_root(spec, "train")
    files = _listing(root)[0] + _other_split_files(spec, root)
    side = None
    candidates = []  # colour-mode files, which may still hold only grey pixels
    for path in files:
        with _opened(path) as im:  # the header only: mode and size, no pixels
            shortest, mode = min(im.size), im.mode
        side = shortest if side is None else min(side, shortest)
        if mode not in _GREY_MODES:
            candidates.append(path)
    return (3 if _any_colour(candidates) else 1), side
