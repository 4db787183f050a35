"""Batches of training images, in an order that depends only on the seed and its counters."""

from __future__ import annotations

import torch

from gankit.errors import ConfigError
from gankit.training.distributed import Shard
from gankit.training.environment import derive_seed

# --------------------------------------------------------------------------- batches


class Batches:
    """Batches of uint8 images (and labels) from tensors already on the training device.

    ``epoch`` sampler: a fresh permutation per epoch, the last partial batch dropped.
    ``random`` sampler: every batch drawn anew without replacement. The order depends only on
    the seed and the counters in :meth:`state`, so a resumed run sees the same batches. With
    ``world`` processes, ``batch_size`` is the global batch and process ``rank`` gets its
    contiguous share of each one: together they see exactly the single-process batches.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor | None,
        batch_size: int,
        seed: int,
        sampler: str = "epoch",
        rank: int = 0,
        world: int = 1,
    ):
        if batch_size > len(images):
            raise ConfigError(
                f"train.batch_size = {batch_size} is larger than the data set "
                f"({len(images)} images): lower it"
            )
        if batch_size % world:
            raise ConfigError(
                f"train.batch_size = {batch_size} is the global batch and must "
                f"split evenly over {world} processes: use a multiple of {world}"
            )
        self.shard = Shard(rank, world)
        self.images, self.labels = images, labels
        self.batch_size, self.seed, self.sampler = batch_size, seed, sampler
        self.epoch, self.pos, self.drawn = 0, 0, 0
        self._perm: torch.Tensor | None = None

    @property
    def per_epoch(self) -> int:
        """Batches in one epoch."""
        return len(self.images) // self.batch_size

    def _randperm(self, *keys: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(derive_seed(self.seed, *keys))
        return torch.randperm(len(self.images), generator=gen).to(self.images.device)

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The next (images (B, C, H, W) uint8, labels (B,) or None)."""
        if self.sampler == "random":
            idx = self._randperm(1, self.drawn)[: self.batch_size]
        else:
            if self.pos + self.batch_size > len(self.images):
                self.epoch, self.pos, self._perm = self.epoch + 1, 0, None
            if self._perm is None:
                self._perm = self._randperm(0, self.epoch)
            idx = self._perm[self.pos : self.pos + self.batch_size]
            self.pos += self.batch_size
        self.drawn += 1
        idx = self.shard.take(idx)  # this process's share of the global batch, in order
        return self.images[idx], (self.labels[idx] if self.labels is not None else None)

    def state(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "drawn": self.drawn}

    def load_state(self, state: dict) -> None:
        self.epoch, self.pos, self.drawn = state["epoch"], state["pos"], state["drawn"]
        self._perm = None
