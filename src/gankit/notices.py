"""One channel for what gankit tells its user while it works — warnings and notes on
standard error, said once per run (by process 0 of a ``torchrun`` job) and above any
progress bar. Errors are exceptions (:mod:`gankit.errors`), never notices."""

from __future__ import annotations

import os
import sys


def main_process() -> bool:
    """Whether this process speaks for the run: the only one, or rank 0 under torchrun."""
    return os.environ.get("RANK", "0") == "0"


def notice(text: str, kind: str = "") -> None:
    """``gankit: [kind: ]text`` on stderr, from process 0 only (``kind``: e.g. "warning")."""
    if not main_process():
        return
    from tqdm.auto import tqdm  # writes above a live progress bar, or plainly without one

    tqdm.write(f"gankit: {kind + ': ' if kind else ''}{text}", file=sys.stderr)


def warn(text: str) -> None:
    """A warning: something the user may want to act on; the work goes on."""
    notice(text, "warning")
