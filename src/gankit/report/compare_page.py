"""Several runs on one page: their curves overlaid (by step or by training time), their
final numbers in one table with the best of each column marked, their last sample grids
side by side, and the config keys that differ between them."""

from __future__ import annotations

from gankit.evaluation.suite import METRICS
from gankit.report.folder import RunView, eval_values
from gankit.report.html import esc, image, is_number, missing_list, number, page, table
from gankit.report.html import sections as html_sections
from gankit.report.run_page import chart_id, charts_html, training_groups

# final-metric columns, and which way is better (None: no "best")
COLUMNS: dict[str, str | None] = {
    "fid": "min",
    "kid": "min",
    "precision": "max",
    "recall": "max",
    "density": None,
    "coverage": "max",
    "classes_covered": "max",
    "class_kl": "min",
    "label_accuracy": "max",
    "classifier_score": "max",
    "recon_mse": "min",
    "nn_ratio": None,
}
# evaluation curves overlaid: key -> title
EVAL_KEYS = {
    "fid": "FID (lower is better; log scale)",
    "kid": "KID (lower is better)",
    "precision": "Precision (fidelity)",
    "recall": "Recall (diversity)",
    "coverage": "Coverage",
    "classes_covered": "Classes covered",
}


def final_metrics(view: RunView) -> tuple[dict, str]:
    """A run's final numbers and where they come from: ``eval.json``, else its latest
    evaluation during training; ({}, "") when it has neither."""
    if view.evaluation and view.evaluation.get("metrics"):
        ev = view.evaluation
        return ev[
            "metrics"
        ], f"gankit eval, step {number(ev.get('step'))}, {number(ev.get('n'))} samples"
    if view.eval_rows:
        row = view.eval_rows[-1]
        values = eval_values(row)
        return values, f"training, step {row['step']:,}, {number(row.get('eval/n'))} samples"
    return {}, ""


def _aligned(series: list[list[tuple[float, float]]]) -> tuple[list, list[list]]:
    """One shared x axis for several (x, y) series: the union of their x values, each
    series' y placed at its own x and null elsewhere."""
    xs = sorted({x for points in series for x, _ in points})
    index = {x: i for i, x in enumerate(xs)}
    columns = []
    for points in series:
        column = [None] * len(xs)
        for x, y in points:
            column[index[x]] = y
        columns.append(column)
    return xs, columns


def overlay(views: list[RunView], key: str, title: str, prefix: str, smooth: float | None) -> dict:
    """A chart of ``key`` with one line per run, by step and by training seconds."""
    by_step, by_time = [], []
    for view in views:
        rows = [r for r in view.rows if is_number(r.get(key))]
        by_step.append([(r["step"], r[key]) for r in rows])
        by_time.append(
            [(round(t, 2), r[key]) for r in rows if (t := view.seconds_at(r["step"])) is not None]
        )
    steps, step_columns = _aligned(by_step)
    seconds, time_columns = _aligned(by_time)
    return {
        "id": chart_id(key, prefix),
        "title": title,
        "x": {"step": steps, "seconds": seconds},
        "xlabels": {"step": "step", "seconds": "training seconds"},
        "lines": [
            {
                "label": view.name,
                "key": key,
                "run": view.name,
                "values": step_columns[i],
                "by": {"seconds": time_columns[i]},
                "smooth": smooth,
                "points": smooth is None,
                "colour": i,
            }
            for i, view in enumerate(views)
        ],
        "marks": [],
        "log": key == "eval/fid",
    }


def comparison_charts(views: list[RunView]) -> tuple[list[dict], list[dict]]:
    keys: list[str] = []
    for view in views:
        keys += [k for _, ks in training_groups(view.train_rows) for k in ks if k not in keys]
    training = [overlay(views, k, k, "train", 0.6) for k in keys if k != "images_per_s"]
    evaluation = [
        overlay(views, f"eval/{k}", title, "eval", None)
        for k, title in EVAL_KEYS.items()
        if any(f"eval/{k}" in r for v in views for r in v.eval_rows)
    ]
    return training, evaluation


def runs_table(views: list[RunView], hrefs: dict[str, str]) -> str:
    rows = []
    for view in views:
        state, said = view.state()
        seconds = (view.status or {}).get("train_seconds")
        rate = view.images_per_second()
        rows.append(
            [
                f'<a href="{esc(hrefs[view.name])}"><code>{esc(view.name)}</code></a>'
                if view.name in hrefs
                else f"<code>{esc(view.name)}</code>",
                f"<code>{esc(view.get('preset') or 'custom')}</code>",
                f"<code>{esc(view.get('train.data', '?'))}</code>",
                f"{view.step:,}",
                f"{seconds:,.0f}" if is_number(seconds) else "–",
                f"{rate:,.0f}" if rate else "–",
                f'<span class="state {esc(state)}">{esc(state)}</span> {esc(said)}',
            ]
        )
    return table(
        ["run", "model", "data", "steps", "training s", "images/s", "state"],
        rows,
        numeric={3, 4, 5},
    )


def metrics_table(views: list[RunView]) -> str:
    finals = [final_metrics(v) for v in views]
    columns = [c for c in COLUMNS if any(c in values for values, _ in finals)]
    if not columns:
        return (
            "<p>No run has been evaluated: train with <code>--eval-every N</code> or run "
            "<code>gankit eval RUN_DIR</code>.</p>"
        )
    best = {}
    for c in columns:
        values = [v[c] for v, _ in finals if is_number(v.get(c))]
        if COLUMNS[c] and len(values) > 1:
            best[c] = (min if COLUMNS[c] == "min" else max)(values)
    rows = []
    for view, (values, source) in zip(views, finals, strict=True):
        cells = [f"<code>{esc(view.name)}</code>"]
        for c in columns:
            text = number(values.get(c)) if c in values else "–"
            mark = c in best and values.get(c) == best[c]
            cells.append(f'<td class="num best">{text}</td>' if mark else text)
        rows.append(cells + [esc(source or "not evaluated")])
    legend = "".join(f"<li><code>{esc(c)}</code>: {esc(METRICS.get(c, ''))}</li>" for c in columns)
    return (
        table(["run", *columns, "from"], rows, numeric=set(range(1, len(columns) + 1)))
        + '<p class="note">Bold: the best value of a column. Numbers from evaluations of '
        "different sample counts (10,000 for <code>gankit eval</code>, 2,000 during training) "
        f'or different evaluators do not compare exactly.</p><ul class="note">{legend}</ul>'
    )


def _flatten(config: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = value
    return out


def config_differences(views: list[RunView]) -> str:
    flat = [_flatten(v.config) for v in views]
    keys = sorted({k for f in flat for k in f} - {"description"})
    differing = [k for k in keys if len({repr(f.get(k, "—")) for f in flat}) > 1]
    if not differing:
        return "<p>None: every run has the same config.</p>"
    rows = [[f"<code>{esc(k)}</code>"] + [esc(f.get(k, "—")) for f in flat] for k in differing]
    return table(["key", *[esc(v.name) for v in views]], rows)


def last_grids(views: list[RunView]) -> str:
    cells = []
    for view in views:
        if view.samples:
            step, path = view.samples[-1]
            shown = image(path, f"{view.name} at step {step:,}")
            caption = f"<code>{esc(view.name)}</code>, step {step:,}"
            cells.append(f"<figure>{shown}<figcaption>{caption}</figcaption></figure>")
        else:
            cells.append(
                f'<figure><p class="missing">{esc(view.name)}: no sample grid</p></figure>'
            )
    return f'<div class="gallery">{"".join(cells)}</div>'


def comparison_page(views: list[RunView], hrefs: dict[str, str] | None = None) -> str:
    """The page comparing ``views``; ``hrefs``: a link to each run's own page, by name."""
    data: dict = {"kind": "comparison", "runs": [v.name for v in views]}
    training, evaluation = comparison_charts(views)
    data["charts"] = training + evaluation
    axis = (
        '<p id="x-axis-choice"><label>Curves by <select id="x-axis"><option value="step">step'
        '</option><option value="seconds">training time</option></select></label></p>'
    )
    missing = [f"{v.name}: {m}" for v in views for m in v.missing]
    sections = [
        ("runs", "Runs", runs_table(views, hrefs or {})),
        ("metrics", "Final numbers", metrics_table(views)),
        ("samples", "Last samples", last_grids(views)),
        ("differences", "Config keys that differ", config_differences(views)),
        (
            "evaluation",
            "Evaluation curves",
            axis + charts_html(evaluation)
            if evaluation
            else "<p>No run was evaluated while training (<code>--eval-every</code>).</p>",
        ),
        ("training", "Training curves", (axis if not evaluation else "") + charts_html(training)),
    ]
    if missing:
        sections.append(("missing", "What this page could not show", missing_list(missing)))
    title = f"{len(views)} runs compared"
    runs = esc(", ".join(v.name for v in views))
    body = f'<header><h1>{esc(title)}</h1><p class="lead">{runs}</p></header>'
    body += html_sections(sections)
    return page(f"{title} — gankit report", body, data)
