"""Where and how a run computes: its device, CPU threads and seeds."""

from __future__ import annotations

import random

import numpy as np
import torch

from gankit.errors import ConfigError
from gankit.training.cpu import physical_cores

# --------------------------------------------------------------------------- set-up helpers


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device cuda: no CUDA GPU is visible to PyTorch on this machine "
            f"(torch {torch.__version__}); use --device cpu or auto"
        )
    return torch.device(name)


def configure_threads(threads: int, processes: int = 1) -> int:
    """Use ``threads`` CPU threads (0: this process's share of the physical cores it may run
    on, with ``processes`` training processes on the machine)."""
    threads = threads or max(1, physical_cores() // processes)
    torch.set_num_threads(threads)
    return threads


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch's global generators (dropout and friends use them)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integers (NumPy's SeedSequence)."""
    return int(
        np.random.SeedSequence([k % 2**63 for k in keys]).generate_state(2, np.uint64)[0]
        >> np.uint64(1)
    )
