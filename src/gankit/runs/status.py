"""``status.json``: where a run stands — running, finished, stopped, diverged or failed — at
which step of how many, on what machine and for how long. The trainer rewrites it (whole,
atomically) as the run starts and ends; reports read it."""

from __future__ import annotations

import json
from pathlib import Path

from gankit.files import write_text

STATUS = "status.json"
STATES = ("running", "finished", "stopped", "diverged", "failed")


def write_status(run_dir: str | Path, status: dict) -> Path:
    """Replace the run's status file with ``status`` (JSON-ready; ``state`` in STATES)."""
    if status.get("state") not in STATES:
        raise ValueError(f"status state {status.get('state')!r} is not one of {STATES}")
    return write_text(Path(run_dir) / STATUS, json.dumps(status, indent=2) + "\n")


def read_status(run_dir: str | Path) -> dict | None:
    """The run's status, or None when it has none (a run of an older gankit) or the file
    cannot be read as one."""
    try:
        status = json.loads((Path(run_dir) / STATUS).read_text())
    except (OSError, ValueError):
        return None
    return status if isinstance(status, dict) and status.get("state") in STATES else None
