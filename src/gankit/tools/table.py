"""`gankit table`: every model trained for the same wall-clock budget, scored alike.

Each default and reference preset trains on one data set for ``minutes`` of training time
(its own length does not count: the budget ends it), then 10,000 samples are scored on the
data's evaluator. The table puts each default beside the reference presets of its family,
so "does gankit's default beat the tutorial's design at equal time?" is read off one row.
Run folders are kept; the same command on the same machine reproduces the table. Each
finished run leaves its scored row in ``NAME-sSEED/table-row.json``: the command run again
into the same folder (after a kill, or with more ``--seeds``) reuses the rows made with the
same settings and trains the rest, and the table names every CPU its rows came from.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
import typing
from collections.abc import Callable
from dataclasses import dataclass, is_dataclass
from pathlib import Path

import torch

from gankit.api import configure, launch
from gankit.config import RunConfig, to_dict
from gankit.errors import ConfigError
from gankit.evaluation import evaluate_run, open_evaluation
from gankit.files import write_text
from gankit.presets import DEFAULT_NAMES, preset_names
from gankit.runs import Run
from gankit.tools.bench import machine, resolve_models, write_json
from gankit.version import __version__

# the reference presets each default is measured against (same family of design)
REFERENCES: dict[str, tuple[str, ...]] = {
    "ae": ("ae-000",),
    "vae": ("vae-000",),
    "gan": ("gan-000", "gan-001", "gan-002"),
    "dcgan": ("dcgan-000", "dcgan-001"),
    "wgan": ("wgan-001",),
    "wgan-gp": (),
    "cgan": (),
    "bigan": ("bigan-004",),
}
METRICS = ("fid", "precision", "recall", "coverage", "classes_covered")
# what some families add, shown in the "other" column: key -> (label, format)
EXTRAS = {"label_accuracy": ("label acc", ".2f"), "recon_mse": ("recon MSE", ".4f")}
ROW_FILE = "table-row.json"  # a finished run's scored row, beside its run folder's files


@dataclass
class TableSettings:
    minutes: float = 5.0  # training time of every model
    seeds: int = 1
    eval_n: int = 10_000
    data: str = "fashion-mnist"


def table_models(spec: str | None) -> list[str]:
    """``--models a,b`` checked against the presets, or every default and reference preset.
    All train on the one data set, at its shape: a bench row's ``NAME:CxS`` is refused."""
    names = resolve_models(spec) if spec else preset_names()
    shaped = [name for name in names if ":" in name]
    if shaped:
        raise ConfigError(
            f"--models {','.join(shaped)}: the table trains every model on --data at its own "
            "image shape; give the preset name and the data of that shape (e.g. --data cifar10)"
        )
    return names


def run_table(
    models: list[str], out: str | Path, settings: TableSettings, log: Callable[[str], None] = print
) -> dict:
    """Train and score ``models`` into ``out/NAME-sSEED``; returns the report (rows of
    per-seed results and their means), also written as ``out/table.json``/``table.md``."""
    out = Path(out)
    if settings.minutes <= 0 or settings.seeds < 1 or settings.eval_n < 10:
        raise ConfigError("gankit table: --minutes must be > 0, --seeds >= 1 and --eval-n >= 10")
    evaluation = open_evaluation(settings.data, progress=True)
    report = {
        "gankit": __version__,
        "torch": torch.__version__,
        "machine": machine(),
        "settings": vars(settings).copy(),
        "evaluator": evaluation.describe(),
        "rows": [],
    }
    for name in models:
        runs = [
            _train_and_score(name, seed, out, settings, evaluation, log)
            for seed in range(settings.seeds)
        ]
        report["rows"].append(_summarise(name, runs))
        write_json(report, out / "table.json")  # a killed table keeps the rows it finished
    write_text(out / "table.md", format_table(report) + "\n")
    write_json(report, out / "table.json")
    return report


def _train_and_score(
    name: str, seed: int, out: Path, settings: TableSettings, evaluation, log: Callable[[str], None]
) -> dict:
    # the budget ends every run; one cadence for all, so no design pays for more grids
    config = configure(
        name,
        data=settings.data,
        seed=seed,
        steps=10**9,
        max_seconds=settings.minutes * 60,
        eval_every=0,
        log_every=100,
        sample_every=2000,
        checkpoint_every=5000,
    )
    run_dir = out / f"{name}-s{seed}"
    # what made the run: the table's settings but the number of seeds, and its config
    same = {k: v for k, v in vars(settings).items() if k != "seeds"}
    made = json.loads(json.dumps({"settings": same, "config": to_dict(config)}))
    done = finished_row(run_dir, made)
    if done is not None:
        log(f"{name} (seed {seed}): scored before with the same config, reusing {run_dir}")
        return done
    again = run_dir.exists() and any(run_dir.iterdir())
    if again:  # cut short (killed), or made by another config: trained again
        if not (run_dir / "config.toml").is_file():
            raise ConfigError(
                f"gankit table: {run_dir} exists and is not a run folder; "
                "move it away or choose another --out"
            )
        log(f"{name} (seed {seed}): {run_dir} holds no row of this config: training it again")
    started = time.perf_counter()
    log(f"{name} (seed {seed}): training for {settings.minutes:g} min -> {run_dir}")
    trainer = launch(config, out=run_dir, overwrite=again, progress=False)
    trainer.fit()
    wall = time.perf_counter() - started
    run = Run(trainer.run_dir, trainer.config, trainer.model.eval(), trainer.step)
    result = evaluate_run(run, evaluation, settings.eval_n, seed=0)
    metrics = result["metrics"]
    row = {
        "seed": seed,
        "steps": trainer.step,
        "train_s": round(trainer.clock.elapsed, 1),
        "wall_s": round(wall, 1),
        "run": str(run_dir),
        "cpu": machine()["cpu"],
    }
    row |= {k: metrics[k] for k in (*METRICS, *EXTRAS) if k in metrics}
    write_json(made | {"row": row}, run_dir / ROW_FILE)
    log(
        f"  step {row['steps']}, FID {row['fid']:.1f}, recall {row['recall']:.2f}, "
        f"classes {row['classes_covered']}"
    )
    return row


def finished_row(run_dir: Path, made: dict) -> dict | None:
    """The scored row that a finished run left in ``run_dir`` if it was ``made`` (table
    settings and run config) as now, else None."""
    try:
        stored = json.loads((run_dir / ROW_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stored, dict) or set(made) - set(stored):
        return None
    for key, value in made.items():
        same = (
            same_config(stored[key], value)
            if key == "config" and isinstance(stored[key], dict) and isinstance(value, dict)
            else stored[key] == value
        )
        if not same:
            return None
    return stored.get("row")


def same_config(stored: dict, made: dict, cls: type = RunConfig) -> bool:
    """Whether a run config stored as plain dicts is ``made`` (the same, as plain dicts). A
    key the stored one lacks counts as its default: a setting gankit gained since the run
    was made, at its default, is how the run was made. A key only the stored one has (one
    gankit dropped) makes them differ. A preset's ``description`` is prose about the run,
    not part of it: a reworded one does not make it another run."""
    if set(stored) - set(made):
        return False
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name not in made or (cls is RunConfig and f.name == "description"):
            continue
        want = made[f.name]
        if f.name in stored:
            have = stored[f.name]
        else:
            try:
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            except (ConfigError, TypeError):  # no valid default (a table of settings)
                return False
            have = json.loads(json.dumps(to_dict(default) if is_dataclass(default) else default))
        inner = hints[f.name]
        if is_dataclass(inner) and isinstance(have, dict) and isinstance(want, dict):
            if not same_config(have, want, inner):
                return False
        elif have != want:
            return False
    return True


def _summarise(name: str, runs: list[dict]) -> dict:
    row: dict = {"model": name, "default": name in DEFAULT_NAMES, "runs": runs}
    for key in ("steps", "train_s", "wall_s", *METRICS, *EXTRAS):
        values = [r[key] for r in runs if key in r]
        if values:
            row[key] = statistics.fmean(values)
            row[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
    return row


def verdicts(report: dict) -> dict[str, str]:
    """For each default: whether its mean FID beats every measured reference of its family."""
    fid = {r["model"]: r["fid"] for r in report["rows"]}
    out = {}
    for name, refs in REFERENCES.items():
        measured = [(fid[r], r) for r in refs if r in fid]
        if name not in fid or not measured:
            continue
        best, which = min(measured)
        out[name] = (
            f"beats {which} ({best:.3g})"
            if fid[name] < best
            else f"**does not beat {which}** ({best:.3g})"
        )
    return out


def format_table(report: dict) -> str:
    """The Markdown table: one row per model, mean ± std over seeds."""
    s = report["settings"]
    seeds = f", mean ± std of {s['seeds']} seeds" if s["seeds"] > 1 else ""
    judged = verdicts(report)
    evaluator = report["evaluator"]["evaluator"]
    cpus = sorted(
        {run.get("cpu") for row in report["rows"] for run in row.get("runs", ())} - {None}
    )
    where = " and ".join(cpus) or report["machine"]["cpu"]
    lines = [
        f"{s['minutes']:g} minutes of training each on {s['data']}, "
        f"{s['eval_n']:,} samples scored on the {evaluator.get('data', '?')} evaluator "
        f"{evaluator.get('key', '?')} ({evaluator.get('origin', '?')}){seeds}; "
        f"{where}, {report['machine']['threads']} threads.",
        "",
        "| model | steps | FID | precision | recall | coverage | classes | other | vs reference |",
        "|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for row in report["rows"]:
        name = f"`{row['model']}`" + ("" if row["default"] else " (reference)")
        other = "; ".join(
            f"{label} {_cell(row, key, spec)}"
            for key, (label, spec) in EXTRAS.items()
            if row.get(key) is not None
        )
        lines.append(
            f"| {name} | {row['steps']:,.0f} | {_cell(row, 'fid', '.1f')} | "
            f"{_cell(row, 'precision', '.2f')} | {_cell(row, 'recall', '.2f')} | "
            f"{_cell(row, 'coverage', '.2f')} | {_cell(row, 'classes_covered', '.0f')} | "
            f"{other} | {judged.get(row['model'], '')} |"
        )
    return "\n".join(lines)


def _cell(row: dict, key: str, spec: str) -> str:
    value, std = row.get(key), row.get(f"{key}_std")
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec) + (f" ± {format(std, spec)}" if std is not None else "")
