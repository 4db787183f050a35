"""A run's metrics log: one JSON row per logged step in ``metrics.jsonl``, mirrored to
TensorBoard.
"""

from __future__ import annotations

import json
from pathlib import Path

from gankit.files import storage_error, write_text

# --------------------------------------------------------------------------- logging


class MetricsLog:
    """Scalars to ``metrics.jsonl`` (one JSON object per logged step) and to TensorBoard."""

    def __init__(self, run_dir: Path, tensorboard: bool = True, active: bool = True):
        self.path = run_dir / "metrics.jsonl"
        self.tb_dir = run_dir / "tensorboard"
        self.tensorboard = tensorboard
        self.active = active  # False: writes nothing (processes other than 0 of a run)
        self._writer = None

    def write(self, row: dict) -> None:
        """Append ``row`` (one whole line per write: a reader skips a line torn by a kill)."""
        if not self.active:
            return
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(row) + "\n")
        except OSError as err:
            raise storage_error(self.path, err) from err
        if self.tensorboard:
            try:
                if self._writer is None:
                    self._writer = _summary_writer(self.tb_dir)
                for key, value in row.items():
                    if key != "step" and isinstance(value, (int, float)):
                        self._writer.add_scalar(key, value, row["step"])
            except OSError as err:  # TensorBoard's writer thread failed (e.g. a full disk)
                self._writer = None  # its file is unusable; a resume starts a new one
                raise storage_error(self.tb_dir, err) from err

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (they belong to a future a resume will redo)."""
        if not self.active or not self.path.exists():
            return
        rows = [json.dumps(row) for row in _parse_rows(self.path) if row["step"] <= step]
        write_text(self.path, "".join(r + "\n" for r in rows))  # a kill leaves the old whole

    def close(self) -> None:
        if self._writer is not None:
            writer, self._writer = self._writer, None
            try:
                writer.close()
            except OSError:
                pass  # the write that failed has already stopped the run, naming the file


def _summary_writer(folder: Path):
    """A TensorBoard SummaryWriter on ``folder``. Its background thread's write errors reach
    the trainer at the next write, as a StorageError: they are not also printed as a thread
    traceback."""
    import threading

    from torch.utils.tensorboard import SummaryWriter  # slow import: only when used

    if not getattr(threading.excepthook, "gankit", False):
        previous = threading.excepthook

        def hook(args):
            if not (
                isinstance(args.exc_value, OSError)
                and type(args.thread).__name__ == "_AsyncWriterThread"
            ):
                previous(args)

        hook.gankit = True
        threading.excepthook = hook
    try:
        return SummaryWriter(str(folder))
    except OSError as err:
        raise storage_error(folder, err) from err


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return _parse_rows(path)


def _parse_rows(path: Path) -> list[dict]:
    """JSON rows of a metrics file, skipping a line torn by a process killed mid-write."""
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
