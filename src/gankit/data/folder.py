"""``folder:PATH``: a folder of images, labelled by class sub-folders when it has them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gankit.data.dataset import Dataset
from gankit.errors import DataError

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}


def _image_files(folder: Path) -> list[Path]:
    """Image files directly inside `folder`, sorted by name; hidden files skipped."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _IMAGE_SUFFIXES
    )


def _read_image(path: Path, size: int) -> np.ndarray:
    """One image file as grayscale uint8 (size, size), resized with Lanczos if needed."""
    from PIL import Image  # Pillow is only needed for folders

    try:
        with Image.open(path) as im:
            im.load()
            gray = im.convert("L")
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read the image: {exc}") from exc
    if gray.size != (size, size):
        gray = gray.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(gray, dtype=np.uint8)  # (size, size)


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


def _load_folder(spec: str, split: str, image_size: int) -> Dataset:
    """Images in a folder: loose files (no labels) or one sub-folder per class. If the
    folder has `train/` and `test/` sub-folders the split picks one, else it is ignored."""
    root = _split_root(spec, split)
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
        files, labels, classes = loose, None, None
    else:
        files, label_list = [], []
        for index, d in enumerate(class_dirs):
            found = _image_files(d)
            files += found
            label_list += [index] * len(found)
        labels = torch.tensor(label_list, dtype=torch.int64)  # (N,)
        classes = [d.name for d in class_dirs]
    images = np.stack([_read_image(p, image_size) for p in files])  # (N, S, S)
    return Dataset(
        images=torch.from_numpy(images).unsqueeze(1),  # (N, 1, S, S)
        labels=labels,
        name=f"folder:{root.resolve()}",
        classes=classes,
        source=f"folder:{root.resolve()}",
    )
