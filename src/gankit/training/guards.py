"""What keeps a run honest and stoppable: the divergence check and rollback, the training
clock, and the stop rule (signals and the time budget, agreed by every process)."""

from __future__ import annotations

import math
import signal
import threading
import time
from typing import TYPE_CHECKING

import torch
from torch import nn

from gankit.errors import GankitError
from gankit.runs import checkpoint
from gankit.training import distributed

if TYPE_CHECKING:
    from gankit.training.loop import Trainer


class TrainingDiverged(GankitError):
    """A loss or weight became NaN or infinite; ``cause`` says which, at which step."""

    def __init__(self, message: str, cause: str = ""):
        super().__init__(message)
        self.cause = cause or message


def weight_norms(nets: dict[str, nn.Module]) -> list[torch.Tensor]:
    """Each network's summed weight norms, on the device: NaN or inf there means a NaN or
    inf weight (one host sync for all of them, when read)."""
    return [
        torch.stack(torch._foreach_norm([p.detach() for p in net.parameters()])).sum()
        for net in nets.values()
    ]


def diverged(trainer: Trainer, what: str) -> TrainingDiverged:
    """The error that stops a diverged run, naming its last good checkpoint and the fixes."""
    cause = f"training diverged at step {trainer.step}: {what}"
    return TrainingDiverged(
        f"{cause}. The last good checkpoint is {last_checkpoint_text(trainer.run_dir)} (left "
        "untouched); resume from it with a lower learning rate (--lr), a stabler loss "
        "(e.g. --set loss.gan=hinge, --set spectral_norm=true), or train with "
        "--on-divergence rollback.",
        cause,
    )


def last_checkpoint_text(run_dir) -> str:
    last = checkpoint.list_checkpoints(run_dir / "checkpoints")
    return str(last[-1]) if last else "none (no checkpoint was written yet)"


class Rollback:
    """``on_divergence = "rollback"``: reload the newest good checkpoint and lower every
    learning rate, at most ``max_rollbacks`` times; else the divergence stops the run."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.count, self.lr_scale = 0, 1.0  # rollbacks so far, learning-rate multiplier

    def recover(self, err: TrainingDiverged) -> None:
        trainer = self.trainer
        tc = trainer.config.train
        if tc.on_divergence != "rollback" or self.count >= tc.max_rollbacks:
            raise err
        path = distributed.on_main(
            trainer.world,
            lambda: checkpoint.latest_checkpoint(trainer.run_dir / "checkpoints"),
            "finding the last good checkpoint",
        )
        if path is None:
            raise err
        diverged_at, count, scale = trainer.step, self.count, self.lr_scale
        trainer.load_state(*trainer.read_checkpoint(path))
        self.count, self.lr_scale = count + 1, scale * tc.rollback_lr_factor
        base = {"g": trainer.config.model.opt_g.lr, "d": trainer.config.model.opt_d.lr}
        for key, opt in trainer.optimizers.items():
            for group in opt.param_groups:
                group["lr"] = base[key] * self.lr_scale
        trainer.log.truncate_after(trainer.step)
        trainer.log.write(
            {
                "step": trainer.step,
                "rollback": self.count,
                "diverged_at": diverged_at,
                "lr_scale": self.lr_scale,
            }
        )
        trainer.notice(
            f"{err.cause}. Rolled back to step {trainer.step} ({path.name}) with "
            f"learning rates × {self.lr_scale:g} (rollback {self.count} of "
            f"{tc.max_rollbacks})."
        )
        trainer.rewound()

    def state(self) -> dict:
        return {"rollbacks": self.count, "lr_scale": self.lr_scale}

    def load_state(self, meta: dict) -> None:
        self.count, self.lr_scale = meta.get("rollbacks", 0), meta.get("lr_scale", 1.0)


class Clock:
    """Training time: the run's total over all its sessions and the rate between laps.
    Evaluation time is excluded from both, and from the time budget."""

    def __init__(self):
        self.elapsed = 0.0
        self.restart(0)

    def restart(self, step: int) -> None:
        """Start timing this session (or again after a rollback) at ``step``."""
        now = time.perf_counter()
        self._lap, self._lap_step = now, step
        self._session, self._excluded = now, 0.0
        self._banked = 0.0  # seconds counted in elapsed at a stop, not yet in a lap's rate

    def lap(self, step: int) -> float:
        """Steps per second since the last lap; adds the lap to ``elapsed``."""
        now = time.perf_counter()
        seconds = now - self._lap
        self.elapsed += seconds
        rate = (step - self._lap_step) / max(seconds + self._banked, 1e-9)
        self._lap, self._lap_step, self._banked = now, step, 0.0
        return rate

    def exclude(self, seconds: float) -> None:
        """``seconds`` just spent on something else (an evaluation)."""
        self._lap += seconds
        self._excluded += seconds

    def session_seconds(self) -> float:
        """Training seconds of this session so far."""
        return time.perf_counter() - self._session - self._excluded

    def stop(self) -> None:
        """The end of a session: count the time since the last lap."""
        now = time.perf_counter()
        self.elapsed += now - self._lap
        self._banked += now - self._lap  # a last row logged after the stop still has its rate
        self._lap = now


class StopRule:
    """When a run stops early: at SIGINT/SIGTERM (after the step in progress, with a
    checkpoint; a second signal stops at once) or when the session's time budget
    (``max_seconds``) is spent. Every process stops after the same step, whichever of them
    was signalled."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        self.signal: int | None = None
        self.interrupted = self.out_of_time = False
        self._handlers: dict = {}

    def __enter__(self) -> StopRule:
        self.agreement = distributed.Agreement(self.trainer.world, 2)
        self.signal, self.interrupted, self.out_of_time = None, False, False
        if threading.current_thread() is threading.main_thread():
            # a signal ignored by whoever started us (nohup, `&` in a script) stays ignored
            self._handlers = {
                sig: signal.signal(sig, self._on_signal)
                for sig in (signal.SIGINT, signal.SIGTERM)
                if signal.getsignal(sig) is not signal.SIG_IGN
            }
        return self

    def __exit__(self, exc_type, *exc) -> None:
        for sig, handler in self._handlers.items():
            signal.signal(sig, handler)
        if exc_type is not None and self._handlers and self.trainer.world.parallel:
            # The run is ending on an error, maybe a process that died. torchrun's agent,
            # seeing it die, sends SIGTERM to the others within a tenth of a second (and
            # SIGKILL 30 s later): let this process say what stopped it and where its last
            # checkpoint is, then exit, instead of vanishing mid-message.
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self._handlers = {}

    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        if self.signal is not None:
            raise KeyboardInterrupt  # second signal: stop now (the last checkpoint is intact)
        self.signal = signum

    def requested(self) -> bool:
        """Whether to stop before the next step (a vote of every process)."""
        budget = self.trainer.config.train.max_seconds or math.inf
        self.interrupted, self.out_of_time = self.agreement.vote(
            [self.signal is not None, self.trainer.clock.session_seconds() >= budget]
        )
        return self.interrupted or self.out_of_time

    def settle(self) -> None:
        """Wait for the last vote in flight (before collective work at the end)."""
        self.agreement.settle()
