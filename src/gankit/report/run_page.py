"""One run's page: where it stands, its curves, its samples over time, the classes it covers,
its nearest training images, reconstructions and latent space, its warnings and its config.
"""

from __future__ import annotations

import re

from gankit.data import class_names
from gankit.evaluation.suite import METRICS
from gankit.report.folder import RunView, eval_values
from gankit.report.html import (
    data_uri,
    esc,
    figure,
    image,
    is_number,
    missing_list,
    number,
    page,
    table,
)
from gankit.report.html import sections as html_sections

MAX_FRAMES = 24  # frames per slider: a long run's grids are thinned to this many
SMOOTHING = 0.6  # weight of the curves' moving average (TensorBoard's default)
# training statistics that are bookkeeping, not curves of their own
_BOOKKEEPING = {"step", "epoch", "elapsed_s", "threads", "images_per_s"}
# evaluation curves: (title, keys); a chart appears when its keys were logged
EVAL_CHARTS = [
    ("FID (lower is better; log scale)", ["eval/fid"]),
    ("KID (lower is better)", ["eval/kid"]),
    ("Precision and recall", ["eval/precision", "eval/recall"]),
    ("Density and coverage", ["eval/density", "eval/coverage"]),
    ("Classes covered", ["eval/classes_covered"]),
    ("Class KL (nats, 0 is ideal)", ["eval/class_kl"]),
    ("Label accuracy", ["eval/label_accuracy"]),
    ("Classifier score", ["eval/classifier_score"]),
    ("Reconstruction error", ["eval/recon_mse"]),
]


# --------------------------------------------------------------------------- curves


def training_groups(rows: list[dict]) -> list[tuple[str, list[str]]]:
    """The training statistics in the rows, grouped one chart each: losses, D's outputs, the
    critic gap, anything else, and throughput."""
    keys: list[str] = []
    for row in rows:
        for k, v in row.items():
            if k not in keys and k not in _BOOKKEEPING and is_number(v):
                keys.append(k)
    losses = [k for k in keys if k.startswith("loss/")]
    outputs = [k for k in keys if k.startswith("D(")]
    rest = [k for k in keys if k not in losses and k not in outputs]
    groups = [("Losses", losses), ("D's outputs: D(x) and D(G(z))", outputs)]
    groups += [(k, [k]) for k in rest]
    groups.append(("Throughput (images/s)", ["images_per_s"]))
    return [(title, ks) for title, ks in groups if ks and any(k in r for r in rows for k in ks)]


def _column(rows: list[dict], key: str) -> list:
    return [row.get(key) if is_number(row.get(key)) else None for row in rows]


def chart_id(key: str, prefix: str) -> str:
    """A chart's element id from the first key it shows: ``train-loss-d``, ``eval-fid``."""
    key = key.removeprefix("eval/")
    return prefix + "-" + re.sub(r"[^a-z0-9]+", "-", key.lower()).strip("-")


def events(view: RunView) -> list[dict]:
    """What happened to the run, at its step: warnings, rollbacks, a divergence or failure."""
    out = [
        {"x": r["step"], "kind": "warning", "text": r["warning"]}
        for r in view.rows
        if "warning" in r
    ]
    out += [
        {
            "x": r["step"],
            "kind": "rollback",
            "text": f"diverged at step {r.get('diverged_at')}: rolled back to step "
            f"{r['step']:,}, learning rates × {r.get('lr_scale')}",
        }
        for r in view.rows
        if "rollback" in r
    ]
    status = view.status or {}
    if status.get("state") in ("diverged", "failed"):
        out.append(
            {"x": status.get("step", 0), "kind": status["state"], "text": status.get("reason", "")}
        )
    return out


def marks(view: RunView) -> list[dict]:
    """Steps to mark on the curves: every event, and the best evaluation."""
    best = best_eval(view)
    found = (
        [{"x": best["step"], "kind": "best", "text": "best FID: best.safetensors"}] if best else []
    )
    return events(view) + found


def best_eval(view: RunView) -> dict | None:
    rows = [r for r in view.eval_rows if is_number(r.get("eval/fid"))]
    return min(rows, key=lambda r: r["eval/fid"]) if rows else None


def run_charts(view: RunView) -> tuple[list[dict], list[dict]]:
    """uPlot chart specs of one run: (training charts, evaluation charts)."""
    rows, evals, run_marks = view.train_rows, view.eval_rows, marks(view)
    training = [
        {
            "id": chart_id("losses" if keys[0].startswith("loss/") else keys[0], "train"),
            "title": title,
            "x": {"step": [r["step"] for r in rows]},
            "lines": [
                {
                    "label": k.removeprefix("loss/"),
                    "key": k,
                    "values": _column(rows, k),
                    "smooth": SMOOTHING,
                }
                for k in keys
            ],
            "marks": run_marks,
        }
        for title, keys in training_groups(rows)
    ]
    evaluation = [
        {
            "id": chart_id(keys[0], "eval"),
            "title": title,
            "x": {"step": [r["step"] for r in evals]},
            "lines": [
                {
                    "label": k.removeprefix("eval/"),
                    "key": k,
                    "values": _column(evals, k),
                    "points": True,
                }
                for k in keys
            ],
            "marks": run_marks,
            "log": keys == ["eval/fid"],  # from ~1,000 untrained to tens: a log scale shows both
        }
        for title, keys in EVAL_CHARTS
        if any(is_number(r.get(k)) for r in evals for k in keys)
    ]
    return training, evaluation


def charts_html(specs: list[dict]) -> str:
    if not specs:
        return ""
    return (
        '<div class="charts">'
        + "".join(
            f'<div class="chart" id="{esc(s["id"])}" data-title="{esc(s["title"])}"></div>'
            for s in specs
        )
        + "</div>"
    )


# --------------------------------------------------------------------------- frames


def thin(frames: list, limit: int = MAX_FRAMES) -> list:
    """At most ``limit`` frames spread evenly over the run, always the first and the last."""
    if len(frames) <= limit:
        return list(frames)
    picks = sorted({round(i * (len(frames) - 1) / (limit - 1)) for i in range(limit)})
    return [frames[i] for i in picks]


def slider(name: str, frames: list, caption: str, data: dict) -> str:
    """A frame and a slider over ``frames`` [(step, path)]: the last frame is in the page's
    HTML; the others, as data URIs, in the page data."""
    shown = thin(frames)
    last = len(shown) - 1
    data.setdefault("frames", {})[name] = [
        {"step": step, "src": None if i == last else data_uri(path)}
        for i, (step, path) in enumerate(shown)
    ]
    step = shown[-1][0]
    kept = f" ({len(shown)} of {len(frames)} grids shown)" if len(shown) < len(frames) else ""
    return (
        f"<figure>{image(shown[-1][1], f'{name} at step {step:,}', f'{name}-frame')}"
        f'<div class="slider"><input type="range" class="frames" id="{name}-slider" min="0" '
        f'max="{last}" value="{last}" step="1" data-frames="{name}" data-image="{name}-frame" '
        f'data-label="{name}-step" aria-label="{esc(name)}: step">'
        f'<output id="{name}-step">step {step:,}</output></div>'
        f"<figcaption>{caption}{kept}</figcaption></figure>"
    )


# --------------------------------------------------------------------------- sections


def _seconds(seconds) -> str:
    if not is_number(seconds):
        return "–"
    return f"{seconds:,.1f} s" if seconds < 10 else f"{seconds:,.0f} s"


def header(view: RunView) -> str:
    state, said = view.state()
    status, cfg = view.status or {}, view.get
    seconds = status.get("train_seconds") or (
        view.train_rows[-1].get("elapsed_s") if view.train_rows else None
    )
    rate = view.images_per_second()
    total = status.get("total_steps") or cfg("train.steps") or "?"
    facts = [
        (
            "model",
            f"<code>{esc(cfg('preset') or 'custom')}</code> ({esc(cfg('model.family', '?'))})",
        ),
        ("what it is", esc(cfg("description") or "–")),
        ("data", f"<code>{esc(cfg('train.data', '?'))}</code>"),
        ("steps", f"{view.step:,} of {number(total)}, batch {number(cfg('train.batch_size'))}"),
        ("training time", _seconds(seconds)),
        ("images/s", f"{rate:,.0f} (median of the logged windows)" if rate else "–"),
        (
            "device",
            esc(
                f"{status.get('device', '?')}, {status.get('threads', '?')} thread(s), "
                f"{status.get('processes', 1)} process(es)"
            )
            if status
            else "–",
        ),
        (
            "versions",
            esc(f"gankit {status.get('gankit', '?')}, PyTorch {status.get('torch', '?')}")
            if status
            else "–",
        ),
        ("seed", number(cfg("train.seed"))),
        ("state", f'<span class="state {esc(state)}">{esc(state)}</span> {esc(said)}'),
    ]
    items = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in facts)
    return f'<header><h1>{esc(view.name)}</h1><dl class="facts">{items}</dl></header>'


def warnings_section(view: RunView) -> str:
    items = [(e["x"], e["kind"], e["text"]) for e in events(view)]
    if not items:
        return "<p>None: the run raised no warning, rollback or divergence.</p>"
    lis = "".join(
        f'<li><span class="step">step {s:,}</span> ({esc(kind)}): {esc(text)}</li>'
        for s, kind, text in items
    )
    return (
        f'<ul class="warnings">{lis}</ul><p class="note">Each is marked on the curves by a '
        "dashed line (red: warning, orange: rollback, black: divergence; green: the best "
        "FID).</p>"
    )


def evaluator_line(facts: dict) -> str:
    """Which feature network the numbers come from: its kind, key and origin."""
    if not facts:
        return ""
    kind = facts.get("kind", "classifier")
    what = (
        "a classifier trained on the data's labels"
        if kind == "classifier"
        else f"a {kind} network trained on the data without labels; its classes are "
        "clusters of the real images' features"
    )
    return (
        f'<p class="note">Evaluator: {esc(what)} (key {esc(facts.get("key", "?"))}, '
        f"{esc(facts.get('origin', 'built here'))}).</p>"
    )


def eval_section(view: RunView, names: list[str] | None) -> str:
    parts = []
    ev = view.evaluation
    if ev:
        head = (
            f"<p><code>gankit eval</code> at step {number(ev.get('step'))}: {number(ev.get('n'))} "
            f"samples (seed {esc(ev.get('seed', '–'))}) against {esc(ev.get('reference', '?'))} "
            f"({number(ev.get('n_reference'))} images).</p>"
        )
        parts.append(head + metrics_table(ev.get("metrics", {})))
    latest = view.eval_rows[-1] if view.eval_rows else None
    if latest:
        values = eval_values(latest)
        best = best_eval(view)
        parts.append(
            f"<h3>Latest evaluation during training (step {latest['step']:,}, "
            f"{number(latest.get('eval/n'))} samples)</h3>"
            + (
                f"<p>Best FID {number(best['eval/fid'])} at step {best['step']:,}: "
                "<code>checkpoints/best.safetensors</code>.</p>"
                if best
                else ""
            )
            + metrics_table(values)
        )
    if not parts:
        return (
            "<p>No evaluation yet: train with <code>--eval-every N</code> for curves, or run "
            f"<code>gankit eval {esc(view.name)}</code> for the full table.</p>"
        )
    return evaluator_line(view.evaluator) + "".join(parts)


def metrics_table(values: dict) -> str:
    rows = [
        [esc(k), number(values[k]), esc(meaning)] for k, meaning in METRICS.items() if k in values
    ]
    return table(["metric", "value", "meaning"], rows, numeric={1})


def class_section(view: RunView, names: list[str] | None) -> str:
    """The class histogram of samples against the real data's: mode collapse at a glance."""
    source, values = None, {}
    if view.evaluation and "class_histogram" in view.evaluation.get("metrics", {}):
        values, source = view.evaluation["metrics"], "gankit eval"
    elif view.eval_rows and "eval/class_histogram" in view.eval_rows[-1]:
        row = view.eval_rows[-1]
        values = eval_values(row)
        source = f"the evaluation at step {row['step']:,}"
    hist = values.get("class_histogram")
    if not hist:
        return "<p>No class histogram yet (it comes with an evaluation).</p>"
    real = values.get("reference_class_histogram") or [1] * len(hist)
    n, n_real = sum(hist) or 1, sum(real) or 1
    top = max(max(h / n for h in hist), max(r / n_real for r in real)) or 1
    rows = []
    for c, (h, r) in enumerate(zip(hist, real, strict=False)):
        share, real_share = h / n, r / n_real
        low = share < 0.25 * real_share
        label = esc(names[c] if names and c < len(names) else c)
        rows.append(
            [
                f'<td class="low">{label}</td>' if low else label,
                f"{share:.1%}",
                f"{real_share:.1%}",
                _bars(share / top, real_share / top),
            ]
        )
    covered = values.get("classes_covered")
    return (
        f"<p>Classes the evaluator sees in the samples ({esc(source)}): {number(covered)} of "
        f"{len(hist)} covered. Blue: samples; grey: real data; a class in red holds under a "
        "quarter of its real share.</p>"
        + f'<div class="bars">{table(["class", "samples", "real", ""], rows, numeric={1, 2})}</div>'
    )


def _bars(sample: float, real: float) -> str:
    """A table cell with two bars: the samples' share of a class and the real data's."""
    fills = "".join(
        f'<div class="fill {kind}" style="width:{100 * share:.1f}%"></div>'
        for kind, share in (("sample", sample), ("real", real))
    )
    return f'<td class="bar">{fills}</td>'


def run_body(view: RunView, data: dict) -> str:
    names = class_names(view.get("train.data", ""))
    if view.evaluator.get("kind", "classifier") != "classifier":  # mode coverage of clusters
        names = view.evaluator.get("classes") or None
    training, evaluation = run_charts(view)
    data["charts"] = training + evaluation
    conditional = bool(view.get("model.conditional"))
    sections: list[tuple[str, str, str]] = []  # (anchor, title, html)
    sections.append(("warnings", "Warnings, rollbacks and divergence", warnings_section(view)))
    sections.append(
        (
            "training",
            "Training curves",
            charts_html(training)
            + '<p class="note">Thin lines: the logged values (each the mean over its '
            f"window of {number(view.get('train.log_every'))} steps); thick: smoothed.</p>"
            if training
            else '<p class="missing">No training rows logged yet.</p>',
        )
    )
    sections.append(
        (
            "evaluation",
            "Evaluation",
            charts_html(evaluation) + eval_section(view, names),
        )
    )
    if view.samples:
        caption = (
            "Samples from the same fixed noise at every saved step: move the slider to "
            "watch the model learn."
        )
        if conditional:
            cols = ", ".join(f"{i}: {n}" for i, n in enumerate(names or [])) or "0, 1, 2, …"
            caption += f" Each column is one class ({esc(cols)})."
        grids = slider("samples", view.samples, caption, data)
        if "real" in view.images:
            grids += figure(view.images["real"], "Real training images, for comparison.")
        grids = f'<div class="pair">{grids}</div>'
        sections.append(("samples", "Samples over training", grids))
    sections.append(("classes", "Classes: mode coverage", class_section(view, names)))
    if "nearest" in view.images:
        sections.append(
            (
                "nearest",
                "Nearest training images",
                figure(
                    view.images["nearest"],
                    "Each row: a sample, then its nearest training images in the evaluator's "
                    "feature space (from <code>gankit eval</code>). Copies would look alike.",
                ),
            )
        )
    looks = []
    if view.reconstructions:
        looks.append(
            slider(
                "reconstructions",
                view.reconstructions,
                "Fixed real images above their reconstructions, over training.",
                data,
            )
        )
    for key, caption in (
        (
            "interpolation",
            "Interpolations: each row walks the latent space between two random codes (slerp).",
        ),
        ("latent", "The codes of real images, coloured by class."),
        ("manifold", "The decoded 2-D latent grid."),
    ):
        if key in view.images:
            looks.append(figure(view.images[key], caption))
    if looks:
        shown = [
            name
            for name, present in (
                ("reconstructions", view.reconstructions),
                ("interpolations", "interpolation" in view.images),
                ("the latent space", "latent" in view.images),
            )
            if present
        ]
        title = ", ".join(shown[:-1]) + (" and " if len(shown) > 1 else "") + shown[-1]
        sections.append(("latent", title[0].upper() + title[1:], "".join(looks)))
    if view.missing:
        sections.append(("missing", "What this page could not show", missing_list(view.missing)))
    sections.append(
        ("config", "Config", f"<pre>{esc(view.config_text or '(no config.toml)')}</pre>")
    )
    return header(view) + html_sections(sections)


def run_page(view: RunView) -> str:
    data: dict = {"kind": "run", "run": view.name}
    body = run_body(view, data)
    return page(f"{view.name} — gankit report", body, data)
