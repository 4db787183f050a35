"""Callbacks: everything a run does besides its updates.

A :class:`Callback` has five hooks — the start of :meth:`~gankit.training.Trainer.fit`, the
end of each step, each logged row, the end of ``fit``, and an error that stops the run —
and may keep state in checkpoints.
The loop's own jobs are callbacks of this same kind (logging and progress, sample grids,
checkpoints, CPU threads, and evaluation in :mod:`gankit.evaluation.during_training`), so a
user's callback can do anything a built-in one does.

Step hooks run on every process of a data-parallel run (a checkpoint or an evaluation is
collective work); :meth:`Callback.on_row` runs on process 0 alone, which speaks for the run.
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import torch

from gankit.runs import write_status
from gankit.training.cpu import ThreadGovernor
from gankit.training.guards import TrainingDiverged
from gankit.version import __version__

if TYPE_CHECKING:
    from gankit.training.loop import Trainer


class Callback:
    """Hooks into a run; override the ones you need (each does nothing here)."""

    def on_fit_start(self, trainer: Trainer) -> None:
        """Before the first step of this call to ``fit`` (``trainer.step`` is 0 on a new run)."""

    def on_step_end(self, trainer: Trainer) -> None:
        """After each step; ``trainer.step`` counts the steps done."""

    def on_row(self, trainer: Trainer, row: dict) -> None:
        """Each row the run logs: training statistics, or an evaluation's ``eval/*`` values."""

    def on_fit_end(self, trainer: Trainer) -> None:
        """After the last step of this call to ``fit`` (the end, a time budget or a signal)."""

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        """The run stops on an error (a divergence, a full disk, a second Ctrl-C): record
        what you must, on this process alone. An error raised here is ignored."""

    def state(self) -> dict:
        """JSON-ready state for the checkpoint's metadata (keys shared by all callbacks)."""
        return {}

    def load_state(self, meta: dict) -> None:
        """Restore from a checkpoint's metadata (what :meth:`state` wrote, if anything)."""


class Evaluating(Callback):
    """A callback that scores the model while it trains, as ``train.eval_every`` asks
    (:class:`gankit.evaluation.during_training.PeriodicEvaluation`)."""


class RowFunction(Callback):
    """A plain function of each logged row as a callback (``gankit.train(callbacks=[f])``)."""

    def __init__(self, function: Callable[[dict], None]):
        self.function = function

    def on_row(self, trainer: Trainer, row: dict) -> None:
        self.function(row)


def as_callbacks(items: Iterable[Callback | Callable[[dict], None]]) -> list[Callback]:
    """Callbacks from callbacks and plain row functions."""
    return [item if isinstance(item, Callback) else RowFunction(item) for item in items]


def due(step: int, every: int, total: int) -> bool:
    """Whether a job done every ``every`` steps (and at the last one) falls on ``step``."""
    return step % every == 0 or step == total


# --------------------------------------------------------------------------- built-ins


class LogRows(Callback):
    """Every ``log_every`` steps (and at the last): the window's mean statistics as a row,
    with images/s; a live bar on a terminal, else a plain progress line every 15 s."""

    def __init__(self, progress: bool = True):
        self.progress = progress
        self.bar = None
        self.last_row: dict = {}
        self._last_eval: dict = {}
        self._last_line = 0.0

    def on_fit_start(self, trainer: Trainer) -> None:
        from tqdm.auto import tqdm

        self.interactive = sys.stderr.isatty()
        self.show = self.progress and trainer.world.main
        self.bar = tqdm(
            total=trainer.total_steps,
            initial=trainer.step,
            disable=not (self.show and self.interactive),
            desc=trainer.config.preset or "train",
            unit="step",
            dynamic_ncols=True,
            mininterval=0.5,
        )

    def on_step_end(self, trainer: Trainer) -> None:
        if due(trainer.step, trainer.config.train.log_every, trainer.total_steps):
            self.log(trainer)
        self.bar.update(1)

    def log(self, trainer: Trainer) -> None:
        """Log the statistics gathered since the last row (on every process: they are
        averaged over processes)."""
        values = trainer.flush_stats()
        rate = trainer.clock.lap(trainer.step)
        images_per_s = rate * trainer.batches_per_step * trainer.config.train.batch_size
        batches = trainer.batches
        row = {
            "step": trainer.step,
            "epoch": round(batches.drawn / batches.per_epoch, 4),
            "images_per_s": round(images_per_s, 1),
            "elapsed_s": round(trainer.clock.elapsed, 2),
            "threads": torch.get_num_threads(),
        } | values
        self.last_row = trainer.emit(row)

    def on_row(self, trainer: Trainer, row: dict) -> None:
        if "eval/fid" in row:
            self._last_eval = row
            return
        self.bar.set_postfix_str(self.postfix(row), refresh=False)
        now, last = time.monotonic(), row["step"] == trainer.total_steps
        if self.show and not self.interactive and (now - self._last_line >= 15 or last):
            self._last_line = now
            print(
                f"step {row['step']}/{trainer.total_steps} {self.postfix(row)}",
                file=sys.stderr,
                flush=True,
            )

    def postfix(self, row: dict) -> str:
        """Losses, D outputs, the latest FID and throughput, in a few words."""
        shown = {k: v for k, v in row.items() if k.startswith(("loss/", "D(", "critic"))}
        parts = [f"{k.removeprefix('loss/')}={v:.3g}" for k, v in shown.items()]
        if self._last_eval:
            ev = self._last_eval
            parts.append(f"FID={ev['eval/fid']:.3g} classes={ev['eval/classes_covered']}")
        return " ".join(parts + [f"{row['images_per_s']:.0f} img/s"])

    def rewind(self, trainer: Trainer) -> None:
        """The run went back to an earlier step (a rollback)."""
        self.bar.reset(total=trainer.total_steps)
        self.bar.update(trainer.step)

    def on_fit_end(self, trainer: Trainer) -> None:
        if trainer.has_stats():  # stopped between logs: keep the window's values
            self.log(trainer)
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class SampleGrids(Callback):
    """The fixed-noise sample grid (and reconstructions) every ``sample_every`` steps, at
    the start of a new run and at the end."""

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.step == 0:
            trainer.save_grids()  # the untrained model's grid, for comparison

    def on_step_end(self, trainer: Trainer) -> None:
        if trainer.step % trainer.config.train.sample_every == 0:
            trainer.save_grids()

    def on_fit_end(self, trainer: Trainer) -> None:
        if trainer.step % trainer.config.train.sample_every != 0:
            trainer.save_grids()


class Checkpoints(Callback):
    """A checkpoint every ``checkpoint_every`` steps and at the end (older ones pruned);
    with ``on_divergence = "rollback"``, one at the start of a new run to roll back to."""

    def __init__(self):
        self.last = None  # the newest checkpoint this call to fit wrote

    def on_fit_start(self, trainer: Trainer) -> None:
        if trainer.step == 0 and trainer.config.train.on_divergence == "rollback":
            self.last = trainer.save_checkpoint()

    def on_step_end(self, trainer: Trainer) -> None:
        tc = trainer.config.train
        if trainer.step % tc.checkpoint_every == 0 and trainer.step < trainer.total_steps:
            self.last = trainer.save_checkpoint()

    def on_fit_end(self, trainer: Trainer) -> None:
        self.last = trainer.save_checkpoint()


class FollowLoad(Callback):
    """Fewer CPU threads while other programs use cores, all of them again once they stop
    (spinning threads on a taken core slow every step). Only for ``threads = 0``."""

    def __init__(self, threads: int):
        self.governor = ThreadGovernor(threads)

    def on_step_end(self, trainer: Trainer) -> None:
        threads = self.governor.poll()
        governor = self.governor
        if threads is not None and threads < governor.max_threads and len(governor.changes) == 1:
            trainer.notice(
                f"other programs are using the CPU: training on {threads} of "
                f"{governor.max_threads} threads while they do (spinning threads on "
                "a taken core would slow every step; --set threads=N fixes the count)"
            )


class RunStatus(Callback):
    """``status.json`` (process 0): where the run stands — running, finished, stopped (and
    why), diverged or failed — at which step, on what device and threads, for how long."""

    def __init__(self):
        self.started = ""

    def on_fit_start(self, trainer: Trainer) -> None:
        self.started = self.started or _now()
        self.write(trainer, "running")

    def on_fit_end(self, trainer: Trainer) -> None:
        stop, tc = trainer.stop, trainer.config.train
        if trainer.step >= trainer.total_steps:
            self.write(trainer, "finished")
        elif stop.interrupted:
            self.write(trainer, "stopped", "a signal (Ctrl-C or SIGTERM)")
        else:
            self.write(trainer, "stopped", f"the time budget of {tc.max_seconds:g} s was spent")

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        if isinstance(error, TrainingDiverged):
            self.write(trainer, "diverged", error.cause)
        elif isinstance(error, KeyboardInterrupt):
            self.write(trainer, "stopped", "a second signal stopped it at once")
        else:
            self.write(trainer, "failed", f"{type(error).__name__}: {error}".split(". ")[0])

    def write(self, trainer: Trainer, state: str, reason: str = "") -> None:
        if not trainer.world.main:
            return
        write_status(
            trainer.run_dir,
            {
                "state": state,
                "reason": reason,
                "step": trainer.step,
                "total_steps": trainer.total_steps,
                "train_seconds": round(trainer.clock.elapsed, 2),
                "device": str(trainer.device),
                "threads": torch.get_num_threads(),
                "processes": trainer.world.size,
                "gankit": __version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
                "started": self.started,
                "updated": _now(),
            },
        )

    def state(self) -> dict:
        return {"started": self.started}

    def load_state(self, meta: dict) -> None:
        self.started = meta.get("started", "")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
