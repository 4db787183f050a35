"""Run folders: where a new run goes, and loading a finished (or stopped) run to use it.

A run folder holds ``config.toml``, ``metrics.jsonl``, ``tensorboard/``, ``real.png``,
``samples/step-N.png`` (from one fixed noise batch), ``reconstructions/`` for models with
an encoder, and ``checkpoints/step-N.safetensors``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from gankit.config import RunConfig, from_dict
from gankit.errors import CheckpointError, ConfigError
from gankit.files import FolderLock, remove_temporaries
from gankit.models import GenerativeModel, build_model
from gankit.runs import checkpoint

RUN_LOCK = ".gankit-lock"  # in a run folder: held by the process training there
RUN_FIGURES = "figures"  # in a run folder: the report's interpolation strip and latent plot
RUN_EVALUATOR = "evaluator.json"  # which evaluator scored the run while it trained
_PROBE = ".gankit-write-probe"

# run folders this process has claimed (locked) and not yet handed to a Trainer:
# resolved path -> (lock, whether this process created the folder)
_claims: dict[Path, tuple[FolderLock, bool]] = {}


def lock_run(path: str | Path) -> FolderLock:
    """Lock run folder ``path`` for training in this process; FolderBusy names the process
    that already trains there. The OS drops the lock when this process ends, however."""
    return FolderLock(path, RUN_LOCK, "its training lock").acquire()


def claim_run_dir(path: str | Path, created: bool = False) -> FolderLock:
    """Lock ``path`` and keep the lock for the Trainer that will train there (it takes it
    with :func:`take_claim`); ``created``: this process made the folder."""
    lock = lock_run(path)
    _claims[Path(path).resolve()] = (lock, created)
    return lock


def take_claim(path: str | Path) -> tuple[FolderLock, bool]:
    """The lock this process claimed on ``path`` (and whether it created the folder), or a
    newly taken one."""
    claimed = _claims.pop(Path(path).resolve(), None)
    return claimed if claimed is not None else (lock_run(path), False)


def holds_run(path: str | Path) -> bool:
    """Whether run folder ``path`` holds nothing but this process's lock (no run yet)."""
    path = Path(path)
    return path.is_dir() and all(
        p.name == RUN_LOCK or p.name.startswith(_PROBE) for p in path.iterdir()
    )


def discard_empty_run(lock: FolderLock) -> None:
    """Remove a run folder that this process created and never wrote to (a refused run),
    then release its lock."""
    folder = lock.folder
    if lock.held and holds_run(folder):
        try:
            (folder / RUN_LOCK).unlink()
            folder.rmdir()
        except OSError:
            pass  # kept: nothing in it but the lock file
    lock.release()


def new_run_dir(
    out: str | Path | None, name: str, root: str | Path = "runs", overwrite: bool = False
) -> Path:
    """The folder for a new run, locked for this process: ``out`` as given, or
    ``runs/NAME-0001`` numbered upwards.

    An existing, non-empty ``out`` is refused unless ``overwrite`` (then its old files go);
    one that another process trains in is refused whatever ``overwrite`` says.
    """
    if out is None:
        root = Path(root)
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "run"
        taken = [
            int(m.group(1))
            for p in root.glob(f"{safe}-*")
            if (m := re.fullmatch(re.escape(safe) + r"-(\d+)", p.name))
        ]
        number = max(taken, default=0) + 1
        while True:  # mkdir is atomic: two processes never get one number
            path = root / f"{safe}-{number:04d}"
            try:
                path.mkdir(parents=True)
                break
            except FileExistsError:
                number += 1
            except OSError as err:
                raise ConfigError(
                    f"cannot create run folder {path} ({err.strerror or err}): choose another --out"
                ) from None
        created = True
    else:
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--out {path} is a file, not a folder")
        created = not path.exists()
    check_writable(path)
    lock = claim_run_dir(path, created)  # before anything in it is read or deleted
    if not holds_run(path):
        if not overwrite:
            discard_claim(path)
            raise ConfigError(
                f"--out {path} already holds a run: pass --overwrite to "
                "replace it, --resume to continue it, or another --out"
            )
        _clear_run(path, keep=lock.path)
    return path


def discard_claim(path: str | Path) -> None:
    """Give up this process's claim on ``path`` (removing the folder if it made it empty)."""
    claimed = _claims.pop(Path(path).resolve(), None)
    if claimed is not None:
        lock, created = claimed
        discard_empty_run(lock) if created else lock.release()


def check_writable(path: Path, need_bytes: int = 0) -> None:
    """Make ``path`` and prove it writable (a probe file: permission bits do not bind root,
    and a read-only mount shows only on writing) with ``need_bytes`` free; else ConfigError."""
    import shutil

    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f"{_PROBE}-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"run folder {path} is not writable ({err.strerror or err}): choose another --out"
        ) from None
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise ConfigError(
            f"run folder {path} has {free / 2**20:.0f} MiB free but this run needs "
            f"about {need_bytes / 2**20:.0f} MiB (checkpoints, grids, logs): free "
            "some space, lower --set keep_checkpoints, or choose another --out"
        )


def prepare_run_dir(path: Path, need_bytes: int = 0) -> None:
    """A run folder ready for the process that holds its lock: writable with ``need_bytes``
    free, and cleared of the temporary files a killed run left behind."""
    check_writable(path, need_bytes)
    checkpoint.remove_stale_temp_files(path / "checkpoints")
    for folder in ("samples", "reconstructions"):
        remove_temporaries(path / folder)
    for name in ("config.toml", "metrics.jsonl", "real.png"):
        remove_temporaries(path, of=name)


def _clear_run(path: Path, keep: Path) -> None:
    import shutil

    for child in path.iterdir():
        if child != keep:
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

    def interpolations(
        self, rows: int = 8, steps: int = 10, mode: str = "slerp", seed: int = 0
    ) -> torch.Tensor:
        """uint8 images (rows × steps, C, H, W): ``rows`` walks through the latent space,
        each between two seeded random codes (a conditional model: one class per walk)."""
        from gankit.viz import interpolation_path

        rng = torch.Generator(self.model.device).manual_seed(seed)
        anchors = self.model.sample_latent(rows + 1, rng)  # (rows + 1, D)
        z = interpolation_path(anchors, steps, mode).reshape(rows * steps, -1)
        labels = None
        if self.config.model.conditional:
            labels = torch.arange(rows, device=z.device).repeat_interleave(steps)
            labels %= self.config.model.num_classes
        return self.model.generate(z, labels)

    def codes(self, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
        """The codes (an encoder's means) of uint8 images (N, C, H, W), as (N, D) on the CPU;
        for models with an encoder (AE, VAE, BiGAN)."""
        codes = []
        with torch.inference_mode():
            for i in range(0, len(images), batch):
                x = self.model.prepare(images[i : i + batch].to(self.model.device))
                codes.append(self.model.encode(x)[0].cpu())
        return torch.cat(codes)


def load_run(
    run_dir: str | Path, device: str = "cpu", checkpoint_file: str | Path | None = None
) -> Run:
    """Load the newest good checkpoint (or ``checkpoint_file``) of a run folder."""
    run_dir = Path(run_dir)
    if checkpoint_file is None:
        if not run_dir.is_dir():
            raise CheckpointError(f"{run_dir} is not a run folder (it does not exist)")
        checkpoint_file = checkpoint.latest_checkpoint(run_dir / "checkpoints")
        if checkpoint_file is None:
            raise CheckpointError(
                f"{run_dir} holds no usable checkpoint in checkpoints/: "
                "train it first, or pass a run folder of gankit"
            )
    tensors, meta = checkpoint.load_checkpoint(checkpoint_file, device=device)
    config = from_dict(RunConfig, meta["config"])
    model = build_model(config.model).to(device)
    model.load_weights(tensors)
    model.eval()
    return Run(run_dir, config, model, meta["step"])
