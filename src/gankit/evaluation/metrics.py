"""Metric functions for generative models, on feature vectors of real and generated images.

Every metric is a small function returning a plain dict of floats, ints and lists (JSON-ready).
FID: Heusel et al. 2017. KID: Bińkowski et al. 2018. Improved precision/recall: Kynkäänniemi
et al. 2019. Density/coverage: Naeem et al. 2020. Inception (classifier) score: Salimans et al.
2016. Distances are computed in row blocks of at most `CHUNK_ENTRIES` entries, never as a full
N×M matrix.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from gankit.errors import GankitError

CHUNK_ENTRIES = 1 << 26  # most entries in one distance block (≈64 M: 256 MB in float32)


def _features(x: Tensor, name: str, min_rows: int = 1) -> Tensor:
    """Check that ``x`` is a (N, F) feature matrix with at least ``min_rows`` rows."""
    if x.dim() != 2:
        raise GankitError(f"{name} must be (N, F) feature vectors; got shape {tuple(x.shape)}")
    if len(x) < min_rows:
        raise GankitError(f"{name} has {len(x)} rows; this metric needs at least {min_rows}")
    return x


# --------------------------------------------------------------------------- FID


def gaussian_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean (F,) and unbiased covariance (F, F) of (N, F) features, in float64."""
    x = _features(features, "features", 2).double()
    mu = x.mean(0)  # (F,)
    xc = x - mu  # (N, F)
    return mu, xc.T @ xc / (len(x) - 1)  # (F,), (F, F)


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½) (Heusel et al. 2017, eq. 6)."""
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise GankitError(
            f"statistics of different feature sizes: {tuple(mu1.shape)} vs "
            f"{tuple(mu2.shape)}; compute both with the same feature network"
        )
    mu1, sigma1 = mu1.double(), sigma1.double()
    mu2, sigma2 = mu2.to(mu1), sigma2.to(sigma1)
    # Tr((Σ1Σ2)^½) = Tr((SΣ2S)^½) with S = Σ1^½: Σ1Σ2 = S·(SΣ2) shares its eigenvalues with
    # (SΣ2)·S, which is symmetric PSD, so eigvalsh applies and no complex sqrtm is needed.
    lam, v = torch.linalg.eigh(sigma1)
    s = (v * lam.clamp_min(0).sqrt()) @ v.T  # (F, F)
    m = s @ sigma2 @ s
    tr_sqrt = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0).sqrt().sum()
    diff = mu1 - mu2
    value = float(diff @ diff + sigma1.trace() + sigma2.trace() - 2 * tr_sqrt)
    scale = float(diff @ diff + sigma1.trace() + sigma2.trace())
    return 0.0 if -1e-6 * scale < value < 0 else value  # round-off below zero


def fid_from_stats(real_stats: tuple[Tensor, Tensor], fake: Tensor) -> dict:
    """FID of ``fake`` features against cached real (μ, Σ) from `gaussian_stats`."""
    return {"fid": frechet_distance(*real_stats, *gaussian_stats(fake))}


def fid(real: Tensor, fake: Tensor) -> dict:
    """Fréchet distance between Gaussians fitted to real and fake features."""
    return fid_from_stats(gaussian_stats(real), fake)


# --------------------------------------------------------------------------- KID


def kid(
    real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0
) -> dict:
    """Unbiased MMD² with k(x, y) = (xᵀy/F + 1)³, mean and std over random subsets.

    Bińkowski et al. 2018. Each subset draws m = min(subset_size, N, M) rows of each set
    without replacement (``randperm`` of real, then of fake, from one CPU generator seeded
    with ``seed``); the std is the population std over subsets (0 for one subset).
    """
    _features(real, "real", 2)
    _features(fake, "fake", 2)
    if real.shape[1] != fake.shape[1]:
        raise GankitError(
            f"real has {real.shape[1]} features, fake {fake.shape[1]}; "
            "compute both with the same feature network"
        )
    if subsets < 1:
        raise GankitError(f"kid needs subsets >= 1; got {subsets}")
    gen = torch.Generator().manual_seed(seed)
    m, f = min(subset_size, len(real), len(fake)), real.shape[1]
    dtype = torch.promote_types(torch.promote_types(real.dtype, fake.dtype), torch.float32)
    values = []
    for _ in range(subsets):
        x = real[torch.randperm(len(real), generator=gen)[:m].to(real.device)].to(dtype)
        y = fake[torch.randperm(len(fake), generator=gen)[:m].to(fake.device)].to(dtype)
        y = y.to(x.device)  # (m, F) each
        # products in the inputs' precision (≥ float32), kernel sums in float64
        kxx, kyy, kxy = ((a @ b.T / f + 1).double() ** 3 for a, b in ((x, x), (y, y), (x, y)))
        within = (kxx.sum() - kxx.trace() + kyy.sum() - kyy.trace()) / (m * (m - 1))
        values.append(within - 2 * kxy.mean())
    v = torch.stack(values)
    return {"kid": float(v.mean()), "kid_std": float(v.std(correction=0))}


# --------------------------------------------------------------------------- distances


def _distance_blocks(a: Tensor, b: Tensor) -> Iterator[tuple[int, Tensor]]:
    """Yield (start, D): Euclidean distances (r, M) from rows a[start:start + r] to all of b."""
    if a.shape[1] != b.shape[1]:
        raise GankitError(
            f"feature sizes differ ({a.shape[1]} vs {b.shape[1]}); compute both "
            "sets with the same feature network"
        )
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    a, b = a.to(dtype), b.to(a.device, dtype)
    shift = b.mean(0)  # distances are shift-invariant; centring shrinks the cancellation
    b = b - shift  # (M, F)
    b2 = (b * b).sum(1)  # (M,)
    rows = max(1, CHUNK_ENTRIES // max(len(b), 1))
    for i in range(0, len(a), rows):
        x = a[i : i + rows] - shift  # (r, F)
        d2 = torch.addmm(b2, x, b.T, alpha=-2).add_((x * x).sum(1, keepdim=True))  # (r, M)
        yield i, d2.clamp_min_(0).sqrt_()  # ‖x‖² + ‖y‖² − 2xᵀy, safe at 0


def _gathered_norm(a: Tensor, b: Tensor, idx: Tensor) -> Tensor:
    """‖a_i − b_idx(i)‖ by direct subtraction: exact for duplicates, unlike the expanded form."""
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    return (a.to(dtype) - b[idx.to(b.device)].to(a.device, dtype)).norm(dim=1)  # (N,)


def knn_radii(features: Tensor, k: int) -> Tensor:
    """(N,) distance of each row to its k-th nearest neighbour among the other rows."""
    _features(features, "features")
    if not 1 <= k < len(features):
        raise GankitError(
            f"k={k} nearest neighbours need k >= 1 and at least k + 1 rows; "
            f"got {len(features)} rows"
        )
    idx = []
    for i, d in _distance_blocks(features, features):
        rows = torch.arange(len(d), device=d.device)
        d[rows, i + rows] = math.inf  # the point itself does not count
        idx.append(d.topk(k, dim=1, largest=False).indices[:, -1])
    return _gathered_norm(features, features, torch.cat(idx))


def nearest_neighbours(
    query: Tensor, reference: Tensor, k: int = 1, exclude_self: bool = False
) -> tuple[Tensor, Tensor]:
    """(Nq, k) distances and (Nq, k) indices of each query row's k nearest reference rows,
    nearest first.

    Candidates come from the blockwise expanded-form distances; their distances are then
    recomputed by direct subtraction (exact 0 for copies) and the k re-sorted by them. With
    ``exclude_self``, query and reference are the same set: row i is not matched to reference
    row i (other rows equal to it still count).
    """
    _features(query, "query")
    _features(reference, "reference", k + 1 if exclude_self else k)
    if k < 1:
        raise GankitError(f"nearest neighbours need k >= 1; got k={k}")
    if exclude_self and query.shape != reference.shape:
        raise GankitError(
            "exclude_self needs query and reference to be the same set; got "
            f"shapes {tuple(query.shape)} and {tuple(reference.shape)}"
        )
    idx = []
    for i, d in _distance_blocks(query, reference):
        if exclude_self:
            rows = torch.arange(len(d), device=d.device)
            d[rows, i + rows] = math.inf
        # argmin is much faster than topk for the single nearest row (the common case)
        idx.append(d.argmin(1, keepdim=True) if k == 1 else d.topk(k, 1, largest=False).indices)
    idx = torch.cat(idx)  # (Nq, k)
    dist = torch.stack([_gathered_norm(query, reference, idx[:, j]) for j in range(k)], 1)
    dist, order = dist.sort(dim=1, stable=True)
    return dist, idx.to(order.device).gather(1, order)


def nearest_distances(query: Tensor, reference: Tensor, exclude_self: bool = False) -> Tensor:
    """(Nq,) distance from each query row to its nearest reference row (`nearest_neighbours`
    with k = 1).

    With ``exclude_self``, query and reference are the same set: row i is not matched to
    reference row i (other rows equal to it still count).
    """
    return nearest_neighbours(query, reference, 1, exclude_self)[0][:, 0]


def _ball_counts(query: Tensor, reference: Tensor, radii: Tensor) -> Tensor:
    """(Nq,) number of reference balls B(r_i, radii_i) holding each query row."""
    counts = torch.zeros(len(query), dtype=torch.long, device=query.device)
    for i, d in _distance_blocks(query, reference):
        counts[i : i + len(d)] = (d <= radii.to(d)).sum(1).to(counts.device)
    return counts


# --------------------------------------------------------------------------- manifolds


def precision_recall(
    real: Tensor, fake: Tensor, k: int = 3, real_radii: Tensor | None = None
) -> dict:
    """Improved precision and recall from k-NN balls (Kynkäänniemi et al. 2019, eq. 1–2).

    ``real_radii``: `knn_radii(real, k)` when already known (a cached reference set).
    """
    real_radii = knn_radii(real, k) if real_radii is None else real_radii
    fake_radii = knn_radii(fake, k)
    precision = (_ball_counts(fake, real, real_radii) > 0).double().mean()
    recall = (_ball_counts(real, fake, fake_radii) > 0).double().mean()
    return {"precision": float(precision), "recall": float(recall)}


def density_coverage(
    real: Tensor, fake: Tensor, k: int = 5, real_radii: Tensor | None = None
) -> dict:
    """Density and coverage from real k-NN balls (Naeem et al. 2020, eq. 5–6)."""
    _features(fake, "fake")
    radii = knn_radii(real, k) if real_radii is None else real_radii  # (N,)
    density = _ball_counts(fake, real, radii).sum().double() / (k * len(fake))
    nearest_fake = nearest_distances(real, fake)  # (N,)
    coverage = (nearest_fake <= radii.to(nearest_fake)).double().mean()
    return {"density": float(density), "coverage": float(coverage)}


def manifold_metrics(
    real: Tensor,
    fake: Tensor,
    k_pr: int = 3,
    k_dc: int = 5,
    real_radii_pr: Tensor | None = None,
    real_radii_dc: Tensor | None = None,
) -> dict:
    """Precision, recall, density and coverage together, with one pass over the fake × real
    distances instead of four; same definitions as `precision_recall` and `density_coverage`.
    """
    _features(fake, "fake")
    radii_pr = knn_radii(real, k_pr) if real_radii_pr is None else real_radii_pr  # (N,)
    radii_dc = knn_radii(real, k_dc) if real_radii_dc is None else real_radii_dc  # (N,)
    fake_radii = knn_radii(fake, k_pr)  # (M,)
    device = fake.device
    radii_pr, radii_dc = radii_pr.to(device), radii_dc.to(device)
    in_real = torch.zeros(len(fake), dtype=torch.bool, device=device)  # precision
    balls = torch.zeros(len(fake), dtype=torch.long, device=device)  # density
    in_fake = torch.zeros(len(real), dtype=torch.bool, device=device)  # recall
    nearest = torch.full((len(real),), math.inf, device=device)  # coverage: nearest fake
    nearest_idx = torch.zeros(len(real), dtype=torch.long, device=device)
    for i, d in _distance_blocks(fake, real):  # d: (r, N) from fake rows i… to every real
        in_real[i : i + len(d)] = (d <= radii_pr.to(d)).any(1)
        balls[i : i + len(d)] = (d <= radii_dc.to(d)).sum(1)
        in_fake |= (d <= fake_radii[i : i + len(d), None].to(d)).any(0)
        low, idx = d.min(0)
        better = low < nearest
        nearest = torch.where(better, low.to(nearest), nearest)
        nearest_idx = torch.where(better, idx + i, nearest_idx)
    exact = _gathered_norm(real, fake, nearest_idx)  # (N,) as `nearest_distances` computes it
    return {
        "precision": float(in_real.double().mean()),
        "recall": float(in_fake.double().mean()),
        "density": float(balls.sum().double() / (k_dc * len(fake))),
        "coverage": float((exact <= radii_dc.to(exact)).double().mean()),
    }


# --------------------------------------------------------------------------- classifier


def classifier_score(probs: Tensor, splits: int = 10) -> dict:
    """exp(E_x KL(p(y|x) ‖ p(y))) on each of ``splits`` parts (Salimans et al. 2016).

    Like the standard Inception Score, parts are consecutive with N // splits rows each (a
    remainder is dropped) and the std is the population std over parts.
    """
    p = _features(probs, "probs").double()  # (N, C)
    splits = max(1, min(splits, len(p)))
    size = len(p) // splits
    scores = []
    for part in p[: size * splits].split(size):
        py = part.mean(0, keepdim=True)  # (1, C) marginal p(y) over the part
        kl = (torch.xlogy(part, part) - torch.xlogy(part, py)).sum(1)  # (size,), 0·log0 = 0
        scores.append(kl.mean().exp())
    s = torch.stack(scores)
    return {"classifier_score": float(s.mean()), "classifier_score_std": float(s.std(correction=0))}


def mode_coverage(
    predicted: Tensor,
    num_classes: int,
    real_labels: Tensor | None = None,
    requested: Tensor | None = None,
    min_share: float = 0.1,
) -> dict:
    """Class histogram of generated images, classes covered, KL(p_gen ‖ p_real) in nats,
    and the real histogram (``reference_class_histogram``) when ``real_labels`` are given.

    A class is covered when its count is ≥ 1 and ≥ min_share × N·p_real(c); p_real is the
    histogram of ``real_labels`` (uniform when None). ``label_accuracy`` (predicted ==
    requested) is reported only when the requested labels of a conditional generator are given.
    """
    pred = predicted.flatten().long().cpu()  # (N,)
    if len(pred) == 0 or pred.min() < 0 or pred.max() >= num_classes:
        raise GankitError(
            f"predicted must be a non-empty set of class indices in "
            f"[0, {num_classes}); check num_classes and the classifier output"
        )
    hist = torch.bincount(pred, minlength=num_classes)  # (C,)
    if real_labels is None:
        p_real = torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64)
    else:
        labels = real_labels.flatten().long().cpu()
        real_counts = torch.bincount(labels, minlength=num_classes)[:num_classes]
        p_real = real_counts.double() / real_counts.sum()
    covered = (hist >= 1) & (hist >= min_share * len(pred) * p_real)
    p_gen = hist.double() / len(pred)  # (C,)
    if ((p_gen > 0) & (p_real == 0)).any():
        kl = math.inf  # mass on a class the real data never shows
    else:
        kl = float((torch.xlogy(p_gen, p_gen) - torch.xlogy(p_gen, p_real)).sum())
    out = {"class_histogram": hist.tolist(), "classes_covered": int(covered.sum()), "class_kl": kl}
    if real_labels is not None:  # the real data's histogram, to show beside the samples'
        out["reference_class_histogram"] = real_counts.tolist()
    if requested is not None:
        req = requested.flatten().long().cpu()
        if req.shape != pred.shape:
            raise GankitError(f"requested has {len(req)} labels for {len(pred)} predictions")
        out["label_accuracy"] = float((pred == req).double().mean())
    return out


# --------------------------------------------------------------------------- memorisation


def memorisation(fake_to_train: Tensor, test_to_train: Tensor) -> dict:
    """Do samples sit closer to the training set than fresh real images do?

    Inputs are `nearest_distances` to the training features. nn_ratio < 1 and a large
    copy_fraction (samples closer than the 1st percentile of test distances) suggest copying.
    """
    f = fake_to_train.flatten().double()  # (Nf,)
    t = test_to_train.flatten().double().to(f.device)  # (Nt,)
    if len(f) == 0 or len(t) == 0:
        raise GankitError("memorisation needs non-empty fake and test distances")
    fake_median, test_median = torch.quantile(f, 0.5), torch.quantile(t, 0.5)
    if test_median == 0:
        raise GankitError(
            "over half the test images duplicate training images; "
            "deduplicate the test split before measuring memorisation"
        )
    return {
        "nn_train_median": float(fake_median),
        "nn_test_median": float(test_median),
        "nn_ratio": float(fake_median / test_median),
        "copy_fraction": float((f < torch.quantile(t, 0.01)).double().mean()),
    }
