"""What a report reads from a run folder, and what it found missing.

A :class:`RunView` is everything a page shows of one run, read without loading a network or
taking the run's lock (a run that is training can be read): the config, ``status.json``, the
metrics rows, ``eval.json``, and the image files. A damaged or missing piece is a line in
:attr:`RunView.missing`, never an error: a report of a broken run is when it is needed most.
"""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from gankit.config import load_toml
from gankit.runs import RUN_EVALUATOR, RUN_FIGURES, RUN_LOCK, read_status
from gankit.runs.metrics_log import read_rows

_STEP_FILE = re.compile(r"step-(\d+)\.png")


@dataclass
class RunView:
    path: Path
    config: dict = field(default_factory=dict)
    config_text: str = ""
    status: dict | None = None
    rows: list[dict] = field(default_factory=list)
    evaluation: dict | None = None  # eval.json
    evaluator: dict = field(default_factory=dict)  # which evaluator scored it (kind, key, …)
    samples: list[tuple[int, Path]] = field(default_factory=list)  # (step, PNG), by step
    reconstructions: list[tuple[int, Path]] = field(default_factory=list)
    images: dict[str, Path] = field(default_factory=dict)  # real, nearest, latent, …
    missing: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    def get(self, dotted: str, default=None):
        """A config value by its dotted path (``train.seed``)."""
        node = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node

    @property
    def train_rows(self) -> list[dict]:
        """Rows of training statistics (not evaluations, rollbacks or other events)."""
        return [r for r in self.rows if "images_per_s" in r]

    @property
    def eval_rows(self) -> list[dict]:
        return [r for r in self.rows if "eval/fid" in r]

    @property
    def step(self) -> int:
        """The step the run reached, as far as the folder tells."""
        candidates = [self.status.get("step", 0) if self.status else 0]
        candidates += [r["step"] for r in self.rows[-1:]] + [s for s, _ in self.samples[-1:]]
        return max(candidates)

    def seconds_at(self, step: int) -> float | None:
        """Training seconds at ``step``, interpolated between logged rows."""
        points = [(r["step"], r["elapsed_s"]) for r in self.train_rows if "elapsed_s" in r]
        if not points:
            return None
        if step <= points[0][0]:
            return points[0][1] * step / points[0][0] if points[0][0] else 0.0
        for (s0, t0), (s1, t1) in zip(points, points[1:], strict=False):
            if s0 <= step <= s1:
                return t0 + (t1 - t0) * (step - s0) / max(s1 - s0, 1)
        return points[-1][1]

    def images_per_second(self) -> float | None:
        """The median of the logged throughputs (robust to a slow first window)."""
        values = [r["images_per_s"] for r in self.train_rows[1:] or self.train_rows]
        return statistics.median(values) if values else None

    def state(self) -> tuple[str, str]:
        """(state, what to say about it): finished, running, stopped, diverged, failed."""
        status = self.status
        if status is None:
            return "unknown", "no status.json (a run of an older gankit, or never started)"
        state, reason = status["state"], status.get("reason", "")
        step, total = status.get("step", 0), status.get("total_steps", 0)
        if state == "running" and not _training_now(self.path):
            return "stopped", (
                f"its process ended without a word near step {self.step:,} (killed?); "
                f"`gankit train --resume {self.name}` continues it"
            )
        said = {
            "finished": f"finished all {total:,} steps",
            "running": f"training: step {self.step:,} of {total:,} when last written",
            "stopped": f"stopped at step {step:,} of {total:,}: {reason}",
            "diverged": f"diverged: {reason}",
            "failed": f"failed at step {step:,}: {reason}",
        }[state]
        rollbacks = [r for r in self.rows if "rollback" in r]
        if rollbacks:
            said += f"; rolled back {len(rollbacks)} time(s)"
        return state, said


def eval_values(row: dict) -> dict:
    """An evaluation row's metrics by their plain names (``eval/fid`` -> ``fid``)."""
    return {k.removeprefix("eval/"): v for k, v in row.items() if k.startswith("eval/")}


def read_run(path: str | Path) -> RunView:
    """Everything a report shows of the run in ``path`` (see :class:`RunView`)."""
    view = RunView(Path(path))
    folder, missing = view.path, view.missing
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a run folder (it does not exist)")
    config_file = folder / "config.toml"
    try:
        view.config_text = config_file.read_text()
        view.config = load_toml(config_file)
    except (OSError, ValueError) as err:
        missing.append(f"config.toml could not be read ({_why(err)})")
    view.status = read_status(folder)
    metrics = folder / "metrics.jsonl"
    if metrics.exists():
        view.rows, torn = read_rows(metrics)
        if torn:
            missing.append(
                f"metrics.jsonl: {torn} line(s) could not be read (torn by a kill, or "
                "damaged) and are left out"
            )
    else:
        missing.append("metrics.jsonl is missing: no curves")
    eval_file = folder / "eval.json"
    if eval_file.exists():
        try:
            view.evaluation = json.loads(eval_file.read_text())
        except (OSError, ValueError) as err:
            missing.append(f"eval.json could not be read ({_why(err)})")
    view.evaluator = _evaluator(folder, view.evaluation)
    view.samples = _frames(folder / "samples")
    if not view.samples:
        missing.append("samples/ holds no grids")
    view.reconstructions = _frames(folder / "reconstructions")
    candidates = {
        "real": folder / "real.png",
        "nearest": folder / "eval-nearest.png",
        "latent": folder / RUN_FIGURES / "latent.png",
        "manifold": folder / RUN_FIGURES / "latent-manifold.png",
        "interpolation": folder / RUN_FIGURES / "interpolation.png",
    }
    view.images = {key: p for key, p in candidates.items() if p.is_file()}
    return view


def _evaluator(folder: Path, evaluation: dict | None) -> dict:
    """Which evaluator scored the run: ``gankit eval``'s (in eval.json), else the one its
    evaluations during training used (``evaluator.json``); {} when neither says."""
    if evaluation and isinstance(evaluation.get("evaluator"), dict):
        return evaluation["evaluator"]
    try:
        facts = json.loads((folder / RUN_EVALUATOR).read_text())
    except (OSError, ValueError):
        return {}
    return facts if isinstance(facts, dict) else {}


def _frames(folder: Path) -> list[tuple[int, Path]]:
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _STEP_FILE.fullmatch(p.name))]
    return sorted(found)


def _training_now(folder: Path) -> bool:
    """Whether the process named in the run's lock file still lives (on this host); a run
    released its lock when the file is empty."""
    try:
        holder = json.loads((folder / RUN_LOCK).read_text() or "{}")
    except (OSError, ValueError):
        return False
    if not holder:
        return False
    if holder.get("host") != socket.gethostname():
        return True  # another machine's process: assume it lives
    try:
        os.kill(int(holder["pid"]), 0)
    except (KeyError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _why(err: Exception) -> str:
    return getattr(err, "strerror", None) or str(err).splitlines()[0]
