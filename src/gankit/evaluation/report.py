"""Reports: an evaluation as text and JSON, and the comparison table of several runs."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from torch import Tensor

from gankit import files
from gankit.errors import GankitError
from gankit.evaluation.suite import METRICS


def format_value(value) -> str:
    """A metric value as table text."""
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.4e}"
    return str(value)


def format_report(report: dict) -> str:
    """A report as a Markdown table with a header that makes the numbers reproducible."""
    ev = report["evaluator"]
    acc = ev.get("test_accuracy")
    origin = ev.get("origin", "built here")
    if origin != "shipped" and ev.get("file"):
        origin += f": {ev['file']}"
    head = [
        f"{report.get('model') or report.get('samples', 'samples')}"
        + (f" at step {report['step']}" if "step" in report else "")
        + f": {report['n']} samples (seed {report.get('seed', '-')}) against "
        f"{report['reference']} ({report['n_reference']} images)",
        f"evaluator {ev.get('data', 'custom')} {ev.get('key', '')} ({origin})"
        + (f", {ev['kind']}" if ev.get("kind", "classifier") != "classifier" else "")
        + (f", test accuracy {acc:.2%}" if acc is not None else "")
        + f", {ev['feature_dim']} features",
        "",
    ]
    rows = ["| metric | value | meaning |", "|---|---:|---|"]
    values = report["metrics"]
    for key, meaning in METRICS.items():
        if key in values:
            rows.append(f"| {key} | {format_value(values[key])} | {meaning} |")
    hist = values.get("class_histogram")
    if hist is not None:
        rows.append(
            f"| class_histogram | {' '.join(map(str, hist))} | samples per predicted class |"
        )
    return "\n".join(head + rows)


def write_report(report: dict, path: str | Path) -> Path:
    """Write a report as JSON (infinite values as the string "inf"), whole or not at all: a
    failed write is a StorageError naming the file."""
    return files.write_text(path, json.dumps(_finite(report), indent=2) + "\n")


def _finite(value):
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def load_samples(path: str | Path, image_size: int | None = None) -> tuple[Tensor, Tensor | None]:
    """uint8 images (N, C, H, W) and optional labels from an ``.npz`` of samples, of
    ``image_size`` (None: whatever square size the file holds)."""
    from gankit.data import data_shape, load_dataset

    if image_size is None:
        image_size = data_shape(f"npz:{path}")[1]
    data = load_dataset(f"npz:{path}", image_size=image_size)
    return data.images, data.labels


# --------------------------------------------------------------------------- comparison


def compare_rows(run_dirs: Iterable[str | Path]) -> list[dict]:
    """One row per run: model, data, steps, wall time and its latest metrics.

    Metrics come from the run's ``eval.json`` (written by ``gankit eval``) when present,
    else from the last evaluation logged during training (``eval/…`` rows of metrics.jsonl).
    """
    from gankit.config import RunConfig, from_dict, load_toml
    from gankit.runs import read_metrics

    rows = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        if not (run_dir / "config.toml").exists():
            raise GankitError(f"{run_dir} is not a gankit run folder (no config.toml)")
        config = from_dict(RunConfig, load_toml(run_dir / "config.toml"))
        logged = read_metrics(run_dir)
        row = {
            "run": run_dir.name,
            "model": config.preset,
            "data": config.train.data,
            "steps": logged[-1]["step"] if logged else 0,
            "train_s": max((r.get("elapsed_s", 0) for r in logged), default=0),
        }
        if (run_dir / "eval.json").exists():
            report = json.loads((run_dir / "eval.json").read_text())
            row |= {"eval_step": report.get("step"), "n": report["n"]}
            row |= {k: v for k, v in report["metrics"].items() if k in METRICS}
        else:
            evals = [r for r in logged if "eval/fid" in r]
            if evals:
                last = evals[-1]
                row |= {"eval_step": last["step"], "n": last.get("eval/n")}
                row |= {k[5:]: v for k, v in last.items() if k[5:] in METRICS}
        rows.append(row)
    return rows


# The columns `gankit compare` shows (the CSV has every one).
COMPARE_COLUMNS = (
    "run",
    "model",
    "data",
    "steps",
    "train_s",
    "n",
    "fid",
    "kid",
    "precision",
    "recall",
    "density",
    "coverage",
    "classifier_score",
    "classes_covered",
    "class_kl",
    "label_accuracy",
    "nn_ratio",
    "recon_mse",
    "elbo",
)


def rows_to_markdown(rows: list[dict], columns: Iterable[str] | None = None) -> str:
    """Rows of dicts as one Markdown table: ``columns`` that any row has (default: all)."""
    present = list(dict.fromkeys(k for row in rows for k in row))
    columns = present if columns is None else [c for c in columns if c in present]
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("---" if c in ("run", "model", "data") else "---:" for c in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(format_value(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def rows_to_csv(rows: list[dict], path: str | Path | None = None) -> str:
    """Rows of dicts as CSV text (written to ``path`` when given, whole or not at all: a
    failed write is a StorageError naming the file)."""
    import csv
    import io

    columns = list(dict.fromkeys(k for row in rows for k in row))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    if path is not None:
        files.write_text(path, buf.getvalue())
    return buf.getvalue()
