"""Evaluating generated images: every metric of :mod:`gankit.evaluation.metrics` against one
real data set, on the features of one evaluator — for a trained run, for any ``.npz`` of
samples, and during training.

An :class:`Evaluation` holds what does not change between calls: the evaluator, the real
reference features (the held-out test split) with their Gaussian statistics and k-NN radii,
and the training-set features used by the memorisation check and the nearest-neighbour grid.
Real features are cached on disk beside the evaluator, so a second evaluation of the same data
takes seconds.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import Tensor

from gankit.config import RunConfig
from gankit.data import Dataset
from gankit.errors import GankitError
from gankit.evaluation import metrics
from gankit.evaluation.evaluator import (
    Evaluator,
    RealFeatures,
    describe,
    get_evaluator,
    load_evaluator,
    load_splits,
    real_features,
)
from gankit.models import Reconstructing
from gankit.version import __version__
from gankit.viz import save_grid

PR_K, DC_K = 3, 5  # neighbours for precision/recall and density/coverage (the papers' values)
# A class counts as covered when it holds at least this share of its expected count: the
# evaluator's own confusions (shirt vs T-shirt) put up to ~15% of a class's samples elsewhere.
COVERED_SHARE = 0.25
# The nearest-neighbour grid: this many samples nearest the training set (the likeliest
# copies), then this many random ones (what a typical sample's neighbours look like), each
# beside its NEAREST_K nearest training images.
NEAREST_CLOSEST, NEAREST_RANDOM, NEAREST_K = 8, 8, 3

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

    def __init__(
        self,
        evaluator: Evaluator,
        reference: Dataset,
        train: Dataset | None = None,
        cache: bool = True,
    ):
        self.evaluator, self.cache = evaluator, cache
        self.reference_images = reference.images  # uint8 (N, C, H, W): for reconstructions
        self.reference: RealFeatures = real_features(evaluator, reference, cache)
        self.reference_stats = metrics.gaussian_stats(self.reference.features)
        self.train = train
        self._manifolds: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
        self._train_features: Tensor | None = None
        self._test_to_train: Tensor | None = None

    @property
    def classifies_labels(self) -> bool:
        """Whether the evaluator's classes are the data's labels (a classifier), not the
        clusters of a self-supervised one."""
        return self.evaluator.kind == "classifier"

    @property
    def real_classes(self) -> Tensor:
        """The real class of each reference image: its label for a classifier, else (no
        labels, or clusters for classes) the evaluator's own assignment."""
        ref = self.reference
        return ref.labels if ref.labels is not None and self.classifies_labels else ref.predicted

    def _manifold(self, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """n reference rows (a fixed random subset) with their k-NN radii, computed once.

        Precision/recall and density/coverage compare sets of equal size: with fewer real
        than generated points (or the reverse) the k-NN balls would not be comparable.
        """
        n = min(n, len(self.reference.features))
        if n not in self._manifolds:
            order = torch.randperm(
                len(self.reference.features), generator=torch.Generator().manual_seed(0)
            )[:n]
            real = self.reference.features[order.to(self.reference.features.device)]
            self._manifolds[n] = (
                real,
                metrics.knn_radii(real, PR_K),
                metrics.knn_radii(real, DC_K),
            )
        return self._manifolds[n]

    def _train_reference(self) -> Tensor:
        """The training-set features, with the test images' distances to them (once)."""
        if self.train is None:
            raise GankitError(
                "this evaluation has no training set: the memorisation check and the "
                "nearest training images need one"
            )
        if self._test_to_train is None:
            self._train_features = real_features(self.evaluator, self.train, self.cache).features
            self._test_to_train = metrics.nearest_distances(
                self.reference.features, self._train_features
            )
        return self._train_features

    def nearest_training(self, features: Tensor, k: int = 1) -> tuple[Tensor, Tensor]:
        """(N, k) distances and (N, k) training-set indices of the k training images nearest
        each of N evaluator feature rows (N, F), nearest first; a copy of a training image
        is at distance 0."""
        return metrics.nearest_neighbours(features, self._train_reference(), k)

    def measure(
        self,
        images: Tensor,
        requested: Tensor | None = None,
        memorisation: bool = True,
        kid_subsets: int = 100,
    ) -> tuple[dict, Tensor, Tensor | None]:
        """Every metric of uint8 images (N, C, H, W), as `__call__`, with the images'
        evaluator features (N, F) and each image's distance to its nearest training image
        (N,) (None when the memorisation check did not run)."""
        if len(images) < 2 * DC_K:
            raise GankitError(
                f"{len(images)} samples are too few to evaluate: use at least "
                f"{2 * DC_K} (thousands for stable numbers)"
            )
        features, probs = self.evaluator.embed(images)  # (N, F), (N, K)
        real, radii_pr, radii_dc = self._manifold(len(features))
        out = metrics.fid_from_stats(self.reference_stats, features)
        out |= metrics.kid(self.reference.features, features, subsets=kid_subsets)
        out |= metrics.manifold_metrics(real, features, PR_K, DC_K, radii_pr, radii_dc)
        out |= metrics.classifier_score(probs)
        if not self.classifies_labels:
            requested = None  # a generator's labels are not the evaluator's clusters
        out |= metrics.mode_coverage(
            probs.argmax(1), self.evaluator.num_classes, self.real_classes, requested, COVERED_SHARE
        )
        to_train = None
        if memorisation and self.train is not None:
            to_train = self.nearest_training(features)[0][:, 0]  # (N,)
            out |= metrics.memorisation(to_train, self._test_to_train)
        return out, features, to_train

    def __call__(
        self,
        images: Tensor,
        requested: Tensor | None = None,
        memorisation: bool = True,
        kid_subsets: int = 100,
    ) -> dict:
        """Every metric of uint8 images (N, C, H, W); ``requested``: labels a conditional
        generator was asked for (adds ``label_accuracy`` under a classifier evaluator)."""
        return self.measure(images, requested, memorisation, kid_subsets)[0]

    def write_nearest(
        self,
        images: Tensor,
        features: Tensor,
        to_train: Tensor,
        path: str | Path,
        k: int = NEAREST_K,
    ) -> dict:
        """Write the nearest-neighbour grid of `choose_nearest_samples`'s samples to ``path``
        (a PNG, atomically): one row per sample, the uint8 sample (from ``images`` (N, C, H, W),
        with ``features`` (N, F) and ``to_train`` (N,) from `measure`) then its k nearest
        training images in evaluator features, nearest first. Return the report's "nearest"
        entry: the file's name, the samples shown and their neighbours' indices and distances,
        and the test images' median distance to the training set for scale."""
        chosen = choose_nearest_samples(to_train)  # (R,)
        dist, idx = self.nearest_training(features[chosen.to(features.device)], k)  # (R, k)
        idx = idx.cpu()
        train = self.train.images[idx.flatten()].view(*idx.shape, *images.shape[1:])
        rows = torch.cat([images[chosen.to(images.device)].cpu().unsqueeze(1), train], 1)
        path = Path(path)
        save_grid(rows.flatten(0, 1), path, nrow=k + 1, scale=2)  # R rows of 1 + k tiles
        closest = min(NEAREST_CLOSEST, len(chosen))
        return {
            "file": path.name,
            "k": k,
            "closest": closest,
            "random": len(chosen) - closest,
            "samples": chosen.tolist(),
            "train": idx.tolist(),
            "distance": [[float(f"{v:.4g}") for v in row] for row in dist.cpu().tolist()],
            "nn_test_median": float(torch.quantile(self._test_to_train.double(), 0.5)),
        }

    def describe(self) -> dict:
        """Evaluator and reference facts for a report."""
        return {
            "evaluator": describe(self.evaluator),
            "reference": self.reference.name,
            "n_reference": len(self.reference.features),
        }


def open_evaluation(
    data: str,
    data_dir: str | None = None,
    image_size: int = 28,
    device: str | torch.device = "cpu",
    evaluator: str | Path | None = None,
    progress: bool = True,
    channels: int = 0,
) -> Evaluation:
    """The evaluation of samples against ``data``'s test split at ``image_size`` (and
    ``channels``: 0 as stored, else 1 or 3, as the model makes them), on the evaluator gankit
    ships for it, else one built and cached the first time (a classifier sized for the
    images, or a self-supervised network when the data has no labels), unless an evaluator
    file is given."""
    train, test = load_splits(data, data_dir, image_size, channels)
    if evaluator:
        net = load_evaluator(evaluator, device)
    else:
        net = get_evaluator(
            data, data_dir, image_size, device, progress=progress, splits=(train, test)
        )
    return Evaluation(net, test, train)


def open_run_evaluation(
    config: RunConfig,
    device: str | torch.device = "cpu",
    *,
    data: str | None = None,
    data_dir: str | None = None,
    evaluator: str | Path | None = None,
    progress: bool = True,
) -> Evaluation:
    """The evaluation a run of ``config`` is scored on: its data (or ``data``) in the shape
    its model makes, on its evaluator (or ``evaluator``)."""
    tc, mc = config.train, config.model
    return open_evaluation(
        data or tc.data,
        data_dir or tc.data_dir or None,
        mc.image_size,
        device,
        evaluator or tc.evaluator or None,
        progress,
        channels=mc.channels,
    )


def choose_nearest_samples(
    to_train: Tensor, closest: int = NEAREST_CLOSEST, random: int = NEAREST_RANDOM, seed: int = 0
) -> Tensor:
    """Indices of the samples to show beside their nearest training images, from each
    sample's distance to its nearest training image (N,): the ``closest`` samples nearest the
    training set, nearest first (the likeliest copies: if any sample copies a training image,
    it is here), then ``random`` of the others drawn with a generator seeded with ``seed``, in
    order of distance (typical samples, for scale). Fewer when N is smaller."""
    d = to_train.flatten().cpu()  # (N,)
    order = d.argsort(stable=True)  # nearest first; ties by sample index
    first, rest = order[:closest], order[closest:]
    gen = torch.Generator().manual_seed(seed)
    drawn = rest[torch.randperm(len(rest), generator=gen)[:random]]
    drawn = drawn[d[drawn].argsort(stable=True)]
    return torch.cat([first, drawn])


def evaluate_images(
    evaluation: Evaluation,
    images: Tensor,
    labels: Tensor | None = None,
    *,
    nearest: str | Path | None = None,
    **facts,
) -> dict:
    """A report (JSON-ready) of uint8 images (N, C, H, W) from any source. With ``nearest``
    (a PNG path) and a training set, also `Evaluation.write_nearest`'s grid there and its
    entry, "nearest"."""
    started = time.perf_counter()
    values, features, to_train = evaluation.measure(images, labels)
    report = {
        "gankit": __version__,
        **facts,
        "n": len(images),
        **evaluation.describe(),
        "metrics": values,
    }
    if nearest is not None and to_train is not None:
        report["nearest"] = evaluation.write_nearest(images, features, to_train, nearest)
    return report | {"seconds": round(time.perf_counter() - started, 2)}


def evaluate_run(
    run,
    evaluation: Evaluation,
    n: int = 10_000,
    seed: int = 0,
    test: Dataset | None = None,
    *,
    nearest: str | Path | None = None,
) -> dict:
    """Sample ``n`` images from a loaded :class:`gankit.runs.Run` (seeded) and evaluate them;
    models with an encoder also report reconstruction error on ``test`` (default: the
    evaluation's reference split). ``nearest``: as in `evaluate_images`."""
    started = time.perf_counter()
    model, config = run.model, run.config
    labels = None
    if config.model.conditional:  # every class equally often
        labels = torch.arange(n, device=model.device) % config.model.num_classes
    images = run.sample(n, labels, seed)
    report = evaluate_images(
        evaluation,
        images,
        labels,
        nearest=nearest,
        run=str(run.path),
        model=config.preset,
        family=config.model.family,
        data=config.train.data,
        step=run.step,
        seed=seed,
        temperature=config.model.latent.temperature,
    )
    if isinstance(model, Reconstructing):
        images = evaluation.reference_images if test is None else test.images
        report["metrics"] |= model.reconstruction_metrics(images)
    report["seconds"] = round(time.perf_counter() - started, 2)
    return report
