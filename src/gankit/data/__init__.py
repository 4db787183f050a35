"""Image data sets: a strict IDX reader, the named sets (MNIST, Fashion-MNIST, mnist-5k,
CIFAR-10), image folders and ``.npz`` archives, where their files are looked for, and verified
downloads.

Every loader returns a :class:`Dataset` of uint8 images shaped (N, C, H, W), C = 1 (grey) or
3 (RGB), and optional int64 labels; scaling to [0, 1] or [-1, 1] is the model's business, not
the loader's.
"""

from gankit.data.cifar import read_cifar_batch
from gankit.data.dataset import Dataset
from gankit.data.idx import read_idx
from gankit.data.load import class_names, data_shape, load_dataset, to_channels
from gankit.data.named import (
    DATASETS,
    SYSTEM_DATA_DIRS,
    IdxSet,
    cache_dir,
    dataset_search_dirs,
    download_file,
)

__all__ = [
    "DATASETS",
    "SYSTEM_DATA_DIRS",
    "Dataset",
    "IdxSet",
    "cache_dir",
    "class_names",
    "data_shape",
    "dataset_search_dirs",
    "download_file",
    "load_dataset",
    "read_cifar_batch",
    "read_idx",
    "to_channels",
]
