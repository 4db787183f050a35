"""Reports you look at: one self-contained HTML page per run (``report.html`` in its folder,
kept fresh while it trains) and one comparing several runs — ``gankit report``.

A page opens from disk with no network: its images, styles and scripts are inline. It is
made from the files of the run folder alone (no network loads, no lock taken), so it can
be written for a run that is training, stopped, diverged or damaged.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from gankit.files import write_text
from gankit.notices import warn
from gankit.report.compare_page import comparison_page
from gankit.report.figures import write_figures
from gankit.report.folder import RunView, read_run
from gankit.report.html import scrub_paths
from gankit.report.run_page import run_page
from gankit.runs import Run
from gankit.training import Callback, Trainer

REPORT = "report.html"


def write_run_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write the page of the run in ``run_dir`` (to its ``report.html`` unless ``out``)."""
    view = read_run(run_dir)
    out = Path(out) if out else view.path / REPORT
    return write_text(out, scrub_paths(run_page(view), view.path.parent, out.parent))


def write_comparison(run_dirs: list[str | Path], out: str | Path) -> Path:
    """Write one page comparing the runs in ``run_dirs`` to ``out``; each run's name links
    to its own page where it has one."""
    views = [read_run(d) for d in run_dirs]
    out = Path(out)
    hrefs = {
        v.name: Path(os.path.relpath(v.path / REPORT, out.parent)).as_posix()
        for v in views
        if (v.path / REPORT).exists()
    }
    roots = [out.parent, *(v.path.parent for v in views)]
    return write_text(out, scrub_paths(comparison_page(views, hrefs), *roots))


class RefreshReport(Callback):
    """Keeps ``report.html`` in the run folder current: written as the run starts, after
    each evaluation, and at the end (with the interpolation strip and latent plot) or when
    an error stops the run — so a page left open in a browser shows the run on reload.
    A report that cannot be written is said once; training goes on."""

    def __init__(self):
        self.seconds = 0.0  # spent writing reports and figures, this process
        self.writes = 0
        self._failed = False

    def on_fit_start(self, trainer: Trainer) -> None:
        self.refresh(trainer)

    def on_row(self, trainer: Trainer, row: dict) -> None:
        if "eval/fid" in row:
            self.refresh(trainer)

    def on_fit_end(self, trainer: Trainer) -> None:
        self.refresh(trainer, figures=True)

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        self.refresh(trainer, quiet=True)  # the run's own error says what went wrong

    def refresh(self, trainer: Trainer, figures: bool = False, quiet: bool = False) -> None:
        if not trainer.world.main:
            return
        started = time.perf_counter()
        try:
            if figures:
                model = trainer.model
                was_training = model.training
                model.eval()
                try:
                    write_figures(
                        Run(trainer.run_dir, trainer.config, model, trainer.step), trainer.data
                    )
                finally:
                    model.train(was_training)
            write_run_report(trainer.run_dir)
            self.writes += 1
        except Exception as err:  # a report is never worth a run
            if not (self._failed or quiet):
                self._failed = True
                warn(f"could not write the run's report.html ({err}); training goes on")
        self.seconds += time.perf_counter() - started


__all__ = [
    "REPORT",
    "RefreshReport",
    "RunView",
    "comparison_page",
    "read_run",
    "run_page",
    "write_comparison",
    "write_run_report",
]
