"""Evaluating generated images: every metric of :mod:`gankit.metrics` against one real data
set, on the features of one evaluator — for a trained run, for any ``.npz`` of samples, and
during training.

An :class:`Evaluation` holds what does not change between calls: the evaluator, the real
reference features (the held-out test split) with their Gaussian statistics and k-NN radii,
and the training-set features used by the memorisation check. Real features are cached on
disk beside the evaluator, so a second evaluation of the same data takes seconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from gankit import __version__, files, metrics
from gankit.data import Dataset
from gankit.errors import GankitError
from gankit.evaluator import (
    Evaluator,
    RealFeatures,
    describe,
    get_evaluator,
    load_evaluator,
    load_splits,
    real_features,
)

PR_K, DC_K = 3, 5  # neighbours for precision/recall and density/coverage (the papers' values)
# A class counts as covered when it holds at least this share of its expected count: the
# evaluator's own confusions (shirt vs T-shirt) put up to ~15% of a class's samples elsewhere.
COVERED_SHARE = 0.25

# How each metric reads; the order of rows in a report.
METRICS: dict[str, str] = {
    "fid": "Fréchet distance on evaluator features (lower is better)",
    "kid": "kernel inception distance, unbiased (lower is better)",
    "kid_std": "KID's spread over subsets",
    "precision": "share of samples on the real manifold (fidelity)",
    "recall": "share of real images on the samples' manifold (diversity)",
    "density": "how densely samples crowd real neighbourhoods (~1 for real data)",
    "coverage": "share of real neighbourhoods holding a sample",
    "classifier_score": "Inception-Score analogue (higher: confident and varied)",
    "classifier_score_std": "its spread over 10 splits",
    "classes_covered": "classes the evaluator sees in the samples",
    "class_kl": "KL(sample classes ‖ real classes), nats (0 is ideal)",
    "label_accuracy": "samples classified as the label they were asked for",
    "nn_ratio": "median NN distance to train: samples / real test (<1: copying?)",
    "copy_fraction": "samples nearer to train than 99% of real test images",
    "nn_train_median": "median NN distance of samples to the training set",
    "nn_test_median": "median NN distance of real test images to the training set",
    "recon_mse": "reconstruction error of test images, per pixel on [0, 1]",
    "kl": "KL(q(z|x) ‖ p(z)) of test images, nats per image",
    "elbo": "evidence lower bound on log p(x) of test images, nats per image",
}


class Evaluation:
    """All metrics of generated uint8 images against one real reference set."""

    def __init__(self, evaluator: Evaluator, reference: Dataset, train: Dataset | None = None,
                 cache: bool = True):
        self.evaluator, self.cache = evaluator, cache
        self.reference_images = reference.images  # uint8 (N, C, H, W): for reconstructions
        self.reference: RealFeatures = real_features(evaluator, reference, cache)
        self.reference_stats = metrics.gaussian_stats(self.reference.features)
        self.train = train
        self._manifolds: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
        self._train_features: Tensor | None = None
        self._test_to_train: Tensor | None = None

    @property
    def real_classes(self) -> Tensor:
        """The real class of each reference image (its label, else the evaluator's guess)."""
        ref = self.reference
        return ref.labels if ref.labels is not None else ref.predicted

    def _manifold(self, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """n reference rows (a fixed random subset) with their k-NN radii, computed once.

        Precision/recall and density/coverage compare sets of equal size: with fewer real
        than generated points (or the reverse) the k-NN balls would not be comparable.
        """
        n = min(n, len(self.reference.features))
        if n not in self._manifolds:
            order = torch.randperm(len(self.reference.features),
                                   generator=torch.Generator().manual_seed(0))[:n]
            real = self.reference.features[order.to(self.reference.features.device)]
            self._manifolds[n] = (real, metrics.knn_radii(real, PR_K),
                                  metrics.knn_radii(real, DC_K))
        return self._manifolds[n]

    def _memorisation(self, features: Tensor) -> dict:
        if self._test_to_train is None:
            self._train_features = real_features(self.evaluator, self.train, self.cache).features
            self._test_to_train = metrics.nearest_distances(self.reference.features,
                                                            self._train_features)
        return metrics.memorisation(metrics.nearest_distances(features, self._train_features),
                                    self._test_to_train)

    def __call__(self, images: Tensor, requested: Tensor | None = None,
                 memorisation: bool = True, kid_subsets: int = 100) -> dict:
        """Every metric of uint8 images (N, C, H, W); ``requested``: labels a conditional
        generator was asked for (adds ``label_accuracy``)."""
        if len(images) < 2 * DC_K:
            raise GankitError(f"{len(images)} samples are too few to evaluate: use at least "
                              f"{2 * DC_K} (thousands for stable numbers)")
        features, probs = self.evaluator.embed(images)  # (N, F), (N, K)
        real, radii_pr, radii_dc = self._manifold(len(features))
        out = metrics.fid_from_stats(self.reference_stats, features)
        out |= metrics.kid(self.reference.features, features, subsets=kid_subsets)
        out |= metrics.manifold_metrics(real, features, PR_K, DC_K, radii_pr, radii_dc)
        out |= metrics.classifier_score(probs)
        out |= metrics.mode_coverage(probs.argmax(1), self.evaluator.num_classes,
                                     self.real_classes, requested, COVERED_SHARE)
        if memorisation and self.train is not None:
            out |= self._memorisation(features)
        return out

    def describe(self) -> dict:
        """Evaluator and reference facts for a report."""
        return {"evaluator": describe(self.evaluator), "reference": self.reference.name,
                "n_reference": len(self.reference.features)}


def open_evaluation(data: str, data_dir: str | None = None, image_size: int = 28,
                    device: str | torch.device = "cpu", evaluator: str | Path | None = None,
                    progress: bool = True) -> Evaluation:
    """The evaluation of samples against ``data``'s test split, on the evaluator gankit ships
    for it, else one built and cached the first time, unless an evaluator file is given."""
    train, test = load_splits(data, data_dir, image_size)
    if evaluator:
        net = load_evaluator(evaluator, device)
    else:
        net = get_evaluator(data, data_dir, image_size, device, progress=progress,
                            splits=(train, test))
    return Evaluation(net, test, train)


# --------------------------------------------------------------------------- reports


def evaluate_images(evaluation: Evaluation, images: Tensor, labels: Tensor | None = None,
                    **facts) -> dict:
    """A report (JSON-ready) of uint8 images (N, C, H, W) from any source."""
    started = time.perf_counter()
    values = evaluation(images, labels)
    return {"gankit": __version__, **facts, "n": len(images), **evaluation.describe(),
            "metrics": values, "seconds": round(time.perf_counter() - started, 2)}


def evaluate_run(run, evaluation: Evaluation, n: int = 10_000, seed: int = 0,
                 test: Dataset | None = None) -> dict:
    """Sample ``n`` images from a loaded :class:`gankit.runs.Run` (seeded) and evaluate them;
    models with an encoder also report reconstruction error on ``test`` (default: the
    evaluation's reference split)."""
    started = time.perf_counter()
    model, config = run.model, run.config
    labels = None
    if config.model.conditional:  # every class equally often
        labels = torch.arange(n, device=model.device) % config.model.num_classes
    images = run.sample(n, labels, seed)
    report = evaluate_images(evaluation, images, labels, run=str(run.path),
                             model=config.preset, family=config.model.family,
                             data=config.train.data, step=run.step, seed=seed)
    if hasattr(model, "reconstruction_metrics"):
        images = evaluation.reference_images if test is None else test.images
        report["metrics"] |= model.reconstruction_metrics(images)
    report["seconds"] = round(time.perf_counter() - started, 2)
    return report


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
    head = [f"{report.get('model') or report.get('samples', 'samples')}"
            + (f" at step {report['step']}" if "step" in report else "")
            + f": {report['n']} samples (seed {report.get('seed', '-')}) against "
            f"{report['reference']} ({report['n_reference']} images)",
            f"evaluator {ev.get('data', 'custom')} {ev.get('key', '')} ({origin})"
            + (f", test accuracy {acc:.2%}" if acc is not None else "")
            + f", {ev['feature_dim']} features", ""]
    rows = ["| metric | value | meaning |", "|---|---:|---|"]
    values = report["metrics"]
    for key, meaning in METRICS.items():
        if key in values:
            rows.append(f"| {key} | {format_value(values[key])} | {meaning} |")
    hist = values.get("class_histogram")
    if hist is not None:
        rows.append(f"| class_histogram | {' '.join(map(str, hist))} | samples per predicted "
                    "class |")
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


def load_samples(path: str | Path, image_size: int = 28) -> tuple[Tensor, Tensor | None]:
    """uint8 images (N, 1, H, W) and optional labels from an ``.npz`` of samples."""
    from gankit.data import load_dataset

    data = load_dataset(f"npz:{path}", image_size=image_size)
    return data.images, data.labels


# --------------------------------------------------------------------------- comparison


def compare_rows(run_dirs: Iterable[str | Path]) -> list[dict]:
    """One row per run: model, data, steps, wall time and its latest metrics.

    Metrics come from the run's ``eval.json`` (written by ``gankit eval``) when present,
    else from the last evaluation logged during training (``eval/…`` rows of metrics.jsonl).
    """
    from gankit.config import RunConfig, from_dict, load_toml
    from gankit.train import read_metrics

    rows = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        if not (run_dir / "config.toml").exists():
            raise GankitError(f"{run_dir} is not a gankit run folder (no config.toml)")
        config = from_dict(RunConfig, load_toml(run_dir / "config.toml"))
        logged = read_metrics(run_dir)
        row = {"run": run_dir.name, "model": config.preset, "data": config.train.data,
               "steps": logged[-1]["step"] if logged else 0,
               "train_s": max((r.get("elapsed_s", 0) for r in logged), default=0)}
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
COMPARE_COLUMNS = ("run", "model", "data", "steps", "train_s", "n", "fid", "kid", "precision",
                   "recall", "density", "coverage", "classifier_score", "classes_covered",
                   "class_kl", "label_accuracy", "nn_ratio", "recon_mse", "elbo")


def rows_to_markdown(rows: list[dict], columns: Iterable[str] | None = None) -> str:
    """Rows of dicts as one Markdown table: ``columns`` that any row has (default: all)."""
    present = list(dict.fromkeys(k for row in rows for k in row))
    columns = present if columns is None else [c for c in columns if c in present]
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---" if c in ("run", "model", "data") else "---:"
                            for c in columns) + "|"]
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


# --------------------------------------------------------------------------- Inception FID


def inception_fid(fake: Tensor, real: Tensor) -> dict:
    """FID on Inception-v3 features through torch-fidelity, for comparison with papers.

    Needs the optional package ``torch-fidelity`` and its Inception weights (downloaded once
    to the torch hub cache); without either this raises a GankitError saying which.
    """
    try:
        import torch_fidelity
    except ImportError:
        raise GankitError(
            "Inception FID needs the optional package torch-fidelity (pip install "
            "torch-fidelity) and, the first time, internet access to fetch its Inception "
            "weights; gankit's own FID (the default) needs neither") from None

    class _Images(torch.utils.data.Dataset):
        def __init__(self, images: Tensor):
            self.images = images

        def __len__(self) -> int:
            return len(self.images)

        def __getitem__(self, i: int) -> Tensor:
            x = self.images[i]
            return x.expand(3, *x.shape[1:]) if x.shape[0] == 1 else x  # grey → RGB, uint8

    try:
        out = torch_fidelity.calculate_metrics(input1=_Images(fake.cpu()),
                                               input2=_Images(real.cpu()), fid=True,
                                               verbose=False, cuda=torch.cuda.is_available())
    except (OSError, RuntimeError, ValueError) as err:  # URLError is an OSError
        raise GankitError(
            "Inception FID failed: torch-fidelity could not load or fetch its Inception "
            f"weights ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
            "Download them once on a machine with internet access (they go to "
            "~/.cache/torch/hub/checkpoints) or use gankit's own FID") from None
    return {"inception_fid": float(out["frechet_inception_distance"])}

