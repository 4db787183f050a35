"""cifar10: CIFAR-10 from its official binary distribution, ``cifar-10-binary.tar.gz``.

The archive holds ``cifar-10-batches-bin/`` with ``data_batch_1.bin`` … ``data_batch_5.bin``
(train: 50,000 images), ``test_batch.bin`` (test: 10,000) and ``batches.meta.txt`` (the class
names, one a line). A batch file is exactly 10,000 records of 3,073 bytes: the label (0..9),
then the 32x32 image as three planes, red, green, blue, each row by row. The pickled Python
version (``cifar-10-python.tar.gz``) is never read: unpickling a download can run its code.

The ``.bin`` files are looked for where MNIST's are (:func:`dataset_search_dirs`): the data
dir (``--data-dir`` / $GANKIT_DATA) in its ``cifar10/``, ``cifar-10-batches-bin/`` and
``cifar10/cifar-10-batches-bin/`` sub-folders and itself, the user cache, system copies.
Failing that, the archive itself found in one of those folders, else downloaded into the cache
(unless offline; $GANKIT_MIRROR replaces the official site) and verified by its SHA-256, is
unpacked into the cache: only the seven expected members, each written atomically. A
downloaded archive is removed once unpacked; an archive of the user's is left where it is.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
import torch

from gankit.data.dataset import Dataset
from gankit.data.named import (
    _remove_empty_folders,
    cache_dir,
    dataset_search_dirs,
    download_file,
    download_refusal,
)
from gankit.errors import DataError, StorageError
from gankit.files import atomic_write
from gankit.notices import notice

NAME = "cifar10"
ARCHIVE = "cifar-10-binary.tar.gz"
MIRRORS = ("https://www.cs.toronto.edu/~kriz/",)  # base URLs of ARCHIVE, tried in order
# The SHA-256 of cifar-10-binary.tar.gz (170,052,171 bytes) as www.cs.toronto.edu serves it,
# from TensorFlow Datasets' checksum list tensorflow_datasets/url_checksums/cifar10.txt
# (github.com/tensorflow/datasets: "<url> 170052171 c4a38c50…"); other projects' download
# scripts pin the same value.
ARCHIVE_SHA256 = "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
ARCHIVE_MB = 170  # for messages

SPLITS: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}
META = "batches.meta.txt"
CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
_MEMBER_DIR = "cifar-10-batches-bin"  # the archive's one folder
_PIXELS = 3 * 32 * 32  # R plane, G plane, B plane, each 32x32 row-major
_RECORD = 1 + _PIXELS  # a label byte, then the pixels
_RECORDS = 10_000  # per batch file, exactly
_BATCH_BYTES = _RECORDS * _RECORD  # 30,730,000
_META_MAX_BYTES = 4096  # the real batches.meta.txt is 81 bytes
_ALL_BATCHES = (*SPLITS["train"], *SPLITS["test"])


def read_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 binary batch file, read strictly: uint8 images (10000, 3, 32, 32) and uint8
    labels (10000,); a file of the wrong size or with a label outside 0..9 is a DataError."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size != _BATCH_BYTES:
                problem = "truncated" if size < _BATCH_BYTES else "too long"
                whole = "" if size % _RECORD == 0 else ", not even a whole number of records"
                raise DataError(
                    f"{path}: {problem}: {size:,} bytes ({size // _RECORD:,} records of "
                    f"{_RECORD:,} bytes{whole}); a CIFAR-10 batch file is exactly "
                    f"{_RECORDS:,} records, {_BATCH_BYTES:,} bytes"
                )
            data = f.read(_BATCH_BYTES + 1)
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(data) != _BATCH_BYTES:
        raise DataError(f"{path}: changed while being read ({len(data):,} bytes); try again")
    records = np.frombuffer(data, dtype=np.uint8).reshape(_RECORDS, _RECORD)
    labels = records[:, 0].copy()  # (10000,)
    bad = np.flatnonzero(labels >= len(CLASSES))
    if bad.size:
        first = int(bad[0])
        raise DataError(
            f"{path}: record {first:,} (byte {first * _RECORD:,}) has label {labels[first]}, "
            f"outside 0..{len(CLASSES) - 1}; {bad.size:,} of the {_RECORDS:,} records "
            f"{'has' if bad.size == 1 else 'have'} a bad label: a corrupt file"
        )
    images = np.array(records[:, 1:]).reshape(_RECORDS, 3, 32, 32)  # a writable copy
    return images, labels


def _read_classes(folder: Path) -> list[str]:
    """The class names from ``folder/batches.meta.txt`` (one a line), else the official ones."""
    path = folder / META
    if not path.is_file():
        return list(CLASSES)
    try:
        if path.stat().st_size > _META_MAX_BYTES:
            raise DataError(f"{path}: larger than {_META_MAX_BYTES} bytes; not CIFAR-10's")
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the class names: {exc}") from exc
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != len(CLASSES):
        raise DataError(
            f"{path}: expected {len(CLASSES)} class names, one a line, found {len(names)}; "
            "remove the file to use the official names"
        )
    return names


def _holds(folder: Path, split: str) -> bool:
    return all((folder / f).is_file() for f in SPLITS[split])


def _load_split(folder: Path, split: str) -> Dataset:
    """One split's batch files from ``folder`` as a Dataset of uint8 (N, 3, 32, 32)."""
    parts = [read_cifar_batch(folder / f) for f in SPLITS[split]]
    images = np.concatenate([p[0] for p in parts])  # (N, 3, 32, 32)
    labels = np.concatenate([p[1] for p in parts]).astype(np.int64)  # (N,)
    return Dataset(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels),
        name=f"{NAME}:{split}",
        classes=_read_classes(folder),
        source=NAME,
        split=split,
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _member_file(member: tarfile.TarInfo, archive: Path) -> str | None:
    """The file an archive member unpacks to (a batch file or META), None for one that is
    skipped (e.g. readme.html); an absolute or ``..`` name refuses the whole archive."""
    name = member.name.removeprefix("./")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or ".." in parts or "\\" in name:
        raise DataError(f"{archive}: unsafe member name {member.name!r}; archive refused")
    if len(parts) != 2 or parts[0] != _MEMBER_DIR or parts[1] not in (*_ALL_BATCHES, META):
        return None
    if not member.isreg():
        raise DataError(f"{archive}: {member.name} is not a regular file; archive refused")
    limit = _META_MAX_BYTES if parts[1] == META else _BATCH_BYTES
    if (parts[1] == META and member.size > limit) or (parts[1] != META and member.size != limit):
        raise DataError(
            f"{archive}: {member.name} holds {member.size:,} bytes; expected "
            f"{'at most ' if parts[1] == META else ''}{limit:,}; archive refused"
        )
    return parts[1]


def _unpack(archive: Path, dest: Path) -> None:
    """Unpack the batch files and META of a verified archive into ``dest``, each atomically;
    on any failure what this call wrote is removed again."""
    written: list[Path] = []
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:  # in archive order: the .gz stream is read once
                fname = _member_file(member, archive)
                if fname is None:
                    continue
                if dest / fname in written:
                    raise DataError(f"{archive}: {member.name} appears twice; archive refused")
                source = tar.extractfile(member)
                assert source is not None  # a regular file
                written.append(dest / fname)
                with source, atomic_write(dest / fname) as out:
                    shutil.copyfileobj(source, out, 1 << 20)
        missing = [f for f in _ALL_BATCHES if dest / f not in written]
        if missing:
            raise DataError(
                f"{archive}: no {', '.join(missing)} under {_MEMBER_DIR}/; "
                "not CIFAR-10's binary archive"
            )
    except (DataError, StorageError, tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        for path in written:
            path.unlink(missing_ok=True)
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{archive}: cannot unpack: {exc}") from exc


def _download(errors: list[str]) -> Path | None:
    """Download the archive into the cache (verified); its path, or None if every mirror
    failed (why: appended to ``errors``)."""
    mirror = os.environ.get("GANKIT_MIRROR")
    dest = cache_dir(NAME) / ARCHIVE
    for base in (mirror,) if mirror else MIRRORS:
        url = base.rstrip("/") + "/" + ARCHIVE
        notice(f"downloading {url} ({ARCHIVE_MB} MB) into {dest.parent}")
        try:
            return download_file(url, dest, ARCHIVE_SHA256)
        except DataError as exc:
            errors.append(str(exc))
    return None


def _describe(folder: Path, split: str) -> str:
    """One line of the not-found message: the folder and what it holds of the split."""
    if not folder.is_dir():
        return f"  {folder}  (no such folder)"
    files = SPLITS[split]
    held = [f for f in files if (folder / f).is_file()]
    if held:
        missing = [f for f in files if f not in held]
        return f"  {folder}  (has {', '.join(held)} but not {', '.join(missing)})"
    return f"  {folder}  (none of the files)"


def _not_found(
    split: str, dirs: list[Path], why_no_download: str | None, errors: list[str]
) -> DataError:
    """The one error raised when a split is nowhere to be found."""
    files = SPLITS[split]
    lines = [
        f"{NAME} ({split}): could not find {', '.join(files)} in one folder, nor {ARCHIVE} in any.",
        "Looked in:",
        *(_describe(d, split) for d in dirs),
    ]
    if why_no_download:
        lines.append(f"Download: skipped ({why_no_download}).")
    else:
        lines += ["Download failed:", *(f"  {e}" for e in errors)]
    lines.append(
        f"To fix: download {MIRRORS[0]}{ARCHIVE} (CIFAR-10's binary version, {ARCHIVE_MB} MB; "
        "not the Python version) into one of the folders above, or unpack it there "
        f"(tar xzf {ARCHIVE} gives {_MEMBER_DIR}/), or pass --data-dir DIR / set "
        "GANKIT_DATA=DIR to a folder holding either."
    )
    return DataError("\n".join(lines))


def _load_cifar10(split: str, data_dir: str | os.PathLike | None, download: bool) -> Dataset:
    """Find (or unpack, or download and unpack) and load one split of CIFAR-10."""
    if split not in SPLITS:
        raise DataError(f"{NAME} has no split {split!r} (splits: {', '.join(SPLITS)})")
    dirs = dataset_search_dirs(NAME, data_dir)
    for folder in dirs:
        if _holds(folder, split):
            return _load_split(folder, split)
    cache = cache_dir(NAME)
    created = [p for p in (cache, *cache.parents) if not p.exists()]  # deepest first
    for folder in dirs:
        archive = folder / ARCHIVE
        if archive.is_file():
            got = _sha256(archive)
            if got != ARCHIVE_SHA256:
                raise DataError(
                    f"{archive}: sha256 {got}, not the official archive's {ARCHIVE_SHA256}; "
                    "remove it, or replace it with a fresh download"
                )
            return _unpack_and_load(archive, cache, split, folder == cache, created)
    why_not = download_refusal(download)
    errors: list[str] = []
    if why_not is None:
        archive = _download(errors)
        if archive is not None:
            return _unpack_and_load(archive, cache, split, True, created)
    raise _not_found(split, dirs, why_not, errors)


def _unpack_and_load(
    archive: Path, cache: Path, split: str, ours: bool, created: list[Path]
) -> Dataset:
    """Unpack ``archive`` into the cache and load the split; an archive of ours (in the cache)
    is removed afterwards, and on failure with the folders this attempt created."""
    try:
        _unpack(archive, cache)
    except DataError:
        if ours:
            archive.unlink(missing_ok=True)
        _remove_empty_folders(created)
        raise
    if ours:
        archive.unlink(missing_ok=True)
    return _load_split(cache, split)
