"""The data set container: uint8 images (N, C, H, W), optional labels and class names."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gankit.errors import DataError


@dataclass
class Dataset:
    """uint8 images (N, C, H, W), optional int64 labels (N,), a name and the class names;
    where they came from as ``source`` (what ``--data`` takes) and ``split``."""

    images: torch.Tensor  # uint8 (N, C, H, W), C == 1 for grayscale
    labels: torch.Tensor | None  # int64 (N,), or None when the set has no labels
    name: str  # for people: e.g. "fashion-mnist:train", "folder:/path", "npz:/path"
    classes: list[str] | None = None  # class names, indexed by label, where known
    source: str = ""  # the data spec that loads it: "fashion-mnist", "folder:/abs/path", …
    split: str = ""  # "train", "test", "all" or "" (a folder or an archive: one set)

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
        return Dataset(
            self.images[:n].clone(), labels, f"{self.name}[:{n}]", classes, self.source, self.split
        )
