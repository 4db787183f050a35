"""A run's metrics log: one JSON row per logged step in ``metrics.jsonl``, mirrored to
TensorBoard, which also receives the run's sample grids (its Images tab).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from gankit.errors import GankitError
from gankit.files import storage_error, write_text

# --------------------------------------------------------------------------- logging


class MetricsLog:
    """Scalars to ``metrics.jsonl`` (one JSON object per logged step) and to TensorBoard;
    images to TensorBoard alone."""

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

        def scalars(writer) -> None:
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)):
                    writer.add_scalar(key, value, row["step"])

        self._to_tensorboard(scalars)

    def add_image(self, tag: str, image: np.ndarray, step: int) -> None:
        """Show ``image`` in TensorBoard's Images tab under ``tag`` at ``step``: a uint8 array
        shaped (H, W, C) with C = 1 (grey) or 3 (RGB), or (H, W) for grey, as
        :func:`gankit.viz.grid_array` gives. It is stored as a PNG of exactly these pixels and
        channels (a grey image stays one channel). Nothing is written on processes other than
        0 or with ``tensorboard=False``."""
        if not (self.active and self.tensorboard):
            return
        summary = _image_summary(tag, image)
        # the writer's event file (what its own add_image writes to), given our Summary
        self._to_tensorboard(lambda writer: writer._get_file_writer().add_summary(summary, step))

    def _to_tensorboard(self, write: Callable[[Any], None]) -> None:
        """``write(writer)`` with the run's SummaryWriter, made on first use; an OSError (the
        writer thread's, e.g. a full disk) is a StorageError naming the folder."""
        if not (self.active and self.tensorboard):
            return
        try:
            if self._writer is None:
                self._writer = _summary_writer(self.tb_dir)
            write(self._writer)
        except OSError as err:  # TensorBoard's writer thread failed (e.g. a full disk)
            self._writer = None  # its file is unusable; a resume starts a new one
            raise storage_error(self.tb_dir, err) from err

    def truncate_after(self, step: int) -> None:
        """Drop rows logged after ``step`` (they belong to a future a resume will redo)."""
        if not self.active or not self.path.exists():
            return
        rows = [json.dumps(row) for row in read_rows(self.path)[0] if row["step"] <= step]
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


def _image_summary(tag: str, image: np.ndarray):
    """A TensorBoard Summary holding ``image`` (uint8 (H, W), (H, W, 1) or (H, W, 3)) as a
    lossless PNG. Built here rather than by ``SummaryWriter.add_image``, which turns a grey
    image into three channels."""
    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise GankitError(f"add_image takes a uint8 array, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        raise GankitError(f"add_image takes (H, W), (H, W, 1) or (H, W, 3), got {array.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")  # "L" or "RGB"
    encoded = Summary.Image(
        height=array.shape[0],
        width=array.shape[1],
        colorspace=1 if array.ndim == 2 else 3,
        encoded_image_string=buffer.getvalue(),
    )
    return Summary(value=[Summary.Value(tag=tag, image=encoded)])


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The rows of a run's ``metrics.jsonl``."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return read_rows(path)[0]


def read_rows(path: Path) -> tuple[list[dict], int]:
    """The rows of a metrics file and how many lines were skipped: a line torn by a process
    killed mid-write, or any other line that is not a JSON row with a step."""
    rows, skipped = [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
        elif line.strip():
            skipped += 1
    return rows, skipped
