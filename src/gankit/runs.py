"""Run folders: where a new run goes, and loading a finished (or stopped) run to use it.

A run folder holds ``config.toml``, ``metrics.jsonl``, ``tensorboard/``, ``real.png``,
``samples/step-N.png`` (from one fixed noise batch), ``reconstructions/`` for models with
an encoder, and ``checkpoints/step-N.safetensors``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from gankit import checkpoint
from gankit.config import RunConfig, from_dict
from gankit.errors import CheckpointError, ConfigError
from gankit.models import GenerativeModel, build_model


def new_run_dir(out: str | Path | None, name: str, root: str | Path = "runs",
                overwrite: bool = False) -> Path:
    """The folder for a new run: ``out`` as given, or ``runs/NAME-0001`` numbered upwards.

    An existing, non-empty ``out`` is refused unless ``overwrite`` (then its old files go).
    """
    if out is None:
        root = Path(root)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"
        taken = [int(m.group(1)) for p in root.glob(f"{safe}-*")
                 if (m := re.fullmatch(re.escape(safe) + r"-(\d+)", p.name))]
        path = root / f"{safe}-{max(taken, default=0) + 1:04d}"
    else:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--out {path} is a file, not a folder")
        if path.exists() and any(path.iterdir()):
            if not overwrite:
                raise ConfigError(f"--out {path} already holds a run: pass --overwrite to "
                                  "replace it, --resume to continue it, or another --out")
            _clear_run(path)
    check_writable(path)
    return path


def check_writable(path: Path, need_bytes: int = 0) -> None:
    """Make ``path`` and prove it writable (a probe file: permission bits do not bind root,
    and a read-only mount shows only on writing) with ``need_bytes`` free; else ConfigError."""
    import shutil

    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".gankit-write-probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"run folder {path} is not writable ({err.strerror or err}): "
                          "choose another --out") from None
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise ConfigError(f"run folder {path} has {free / 2**20:.0f} MiB free but this run needs "
                          f"about {need_bytes / 2**20:.0f} MiB (checkpoints, grids, logs): free "
                          "some space, lower --set keep_checkpoints, or choose another --out")


def _clear_run(path: Path) -> None:
    import shutil

    for child in path.iterdir():
        shutil.rmtree(child) if child.is_dir() else child.unlink()


@dataclass
class Run:
    """A trained model loaded from its run folder, ready to sample, encode or interpolate."""

    path: Path
    config: RunConfig
    model: GenerativeModel
    step: int

    def sample(self, n: int, labels: torch.Tensor | None = None, seed: int = 0) -> torch.Tensor:
        """n uint8 images (n, C, H, W); the same seed gives the same images."""
        rng = torch.Generator(self.model.device).manual_seed(seed)
        return self.model.sample(n, labels, rng)


def load_run(run_dir: str | Path, device: str = "cpu", checkpoint_file: str | Path | None = None
             ) -> Run:
    """Load the newest good checkpoint (or ``checkpoint_file``) of a run folder."""
    run_dir = Path(run_dir)
    if checkpoint_file is None:
        if not run_dir.is_dir():
            raise CheckpointError(f"{run_dir} is not a run folder (it does not exist)")
        checkpoint_file = checkpoint.latest_checkpoint(run_dir / "checkpoints")
        if checkpoint_file is None:
            raise CheckpointError(f"{run_dir} holds no usable checkpoint in checkpoints/: "
                                  "train it first, or pass a run folder of gankit")
    tensors, meta = checkpoint.load_checkpoint(checkpoint_file, device=device)
    config = from_dict(RunConfig, meta["config"])
    model = build_model(config.model).to(device)
    model.load_weights(tensors)
    model.eval()
    return Run(run_dir, config, model, meta["step"])
