"""Metric functions against SciPy, brute-force loops and analytic cases."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import linalg
from torch.testing import assert_close

from gankit.errors import GankitError
from gankit.evaluation import metrics


def randn(n: int, f: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(n, f, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def correlated(n: int, f: int, seed: int) -> torch.Tensor:
    """Gaussian rows with a random full covariance and a random mean."""
    x, a, mu = randn(n, f, seed), randn(f, f, seed + 1), randn(1, f, seed + 2)
    return x @ a + mu  # (n, f)


# --------------------------------------------------------------------------- FID


def test_gaussian_stats_match_numpy():
    x = correlated(50, 6, 0)
    mu, sigma = metrics.gaussian_stats(x.float())
    assert mu.dtype == sigma.dtype == torch.float64
    assert_close(mu, torch.from_numpy(x.numpy().mean(0)), rtol=1e-6, atol=1e-6)
    assert_close(sigma, torch.from_numpy(np.cov(x.numpy(), rowvar=False)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("f", [8, 16])
def test_fid_matches_scipy_sqrtm(f):
    real, fake = correlated(200, f, 10), correlated(200, f, 20)
    r, g = real.numpy(), fake.numpy()
    mu1, mu2 = r.mean(0), g.mean(0)
    s1, s2 = np.cov(r, rowvar=False), np.cov(g, rowvar=False)
    covmean = linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert metrics.fid(real, fake)["fid"] == pytest.approx(expected, rel=1e-8)
    assert metrics.fid(real.float(), fake.float())["fid"] == pytest.approx(expected, rel=1e-4)


def test_fid_of_identical_sets_is_zero():
    x = correlated(200, 12, 30)
    scale = float(metrics.gaussian_stats(x)[1].trace())
    assert metrics.fid(x, x.clone())["fid"] == pytest.approx(0.0, abs=1e-9 * scale)


def test_fid_of_shifted_set_is_squared_shift():
    real, delta = correlated(200, 10, 40), randn(1, 10, 41)
    scale = float(metrics.gaussian_stats(real)[1].trace())
    fid = metrics.fid(real, real + delta)["fid"]
    assert fid == pytest.approx(float((delta**2).sum()), abs=1e-9 * scale)


def test_frechet_distance_analytic_covariances():
    f, zero = 7, torch.zeros(7, dtype=torch.float64)
    eye = torch.eye(f, dtype=torch.float64)
    # Tr(I + 4I − 2·(4I)^½) = F
    assert metrics.frechet_distance(zero, eye, zero, 4 * eye) == pytest.approx(f, rel=1e-12)
    # diagonal: Σ(√a − √b)², plus ‖μ1 − μ2‖²
    a = torch.tensor([1.0, 2.0, 3.0, 0.5, 9.0, 0.0, 4.0], dtype=torch.float64)
    b = torch.tensor([4.0, 2.0, 1.0, 0.5, 1.0, 1.0, 0.0], dtype=torch.float64)
    mu2 = torch.arange(f, dtype=torch.float64)
    expected = float(((a.sqrt() - b.sqrt()) ** 2).sum() + (mu2**2).sum())
    got = metrics.frechet_distance(zero, torch.diag(a), mu2, torch.diag(b))
    assert got == pytest.approx(expected, rel=1e-12)
    # the same covariances in a rotated basis give the same distance
    q, _ = torch.linalg.qr(randn(f, f, 50))
    rotated = metrics.frechet_distance(
        zero, q @ torch.diag(a) @ q.T, q @ mu2, q @ torch.diag(b) @ q.T
    )
    assert rotated == pytest.approx(expected, abs=1e-6)  # √ of ~1e-16 round-off: ~1e-8 each


def test_fid_from_cached_stats_equals_fid():
    real, fake = correlated(100, 8, 60), correlated(120, 8, 61)
    stats = metrics.gaussian_stats(real)
    assert metrics.fid_from_stats(stats, fake) == metrics.fid(real, fake)


def test_fid_errors_are_clear():
    with pytest.raises(GankitError, match="at least 2"):
        metrics.fid(randn(1, 4, 0), randn(10, 4, 1))
    with pytest.raises(GankitError, match="same feature network"):
        metrics.fid(randn(10, 4, 0), randn(10, 5, 1))


# --------------------------------------------------------------------------- KID


def kid_double_loop(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD² with the cubic polynomial kernel, term by term."""
    m, f = len(x), x.shape[1]

    def k(a, b):
        return (float(a @ b) / f + 1) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2 * xy / m**2


def test_kid_matches_double_loop_when_all_rows_are_used():
    real, fake = randn(13, 4, 0), randn(13, 4, 1) * 1.5 + 0.3
    out = metrics.kid(real, fake, subsets=1, subset_size=100)
    assert out["kid"] == pytest.approx(kid_double_loop(real.numpy(), fake.numpy()), rel=1e-10)
    assert out["kid_std"] == 0.0


def test_kid_subsets_follow_the_documented_draw():
    real, fake = randn(12, 4, 2), randn(15, 4, 3) + 0.5
    gen = torch.Generator().manual_seed(7)
    expected = []
    for _ in range(3):
        ix, iy = torch.randperm(12, generator=gen)[:10], torch.randperm(15, generator=gen)[:10]
        expected.append(kid_double_loop(real[ix].numpy(), fake[iy].numpy()))
    out = metrics.kid(real, fake, subsets=3, subset_size=10, seed=7)
    assert out["kid"] == pytest.approx(np.mean(expected), rel=1e-10)
    assert out["kid_std"] == pytest.approx(np.std(expected), rel=1e-8)


def test_kid_is_near_zero_for_one_distribution_and_reproducible():
    real, same, shifted = randn(600, 8, 4), randn(600, 8, 5), randn(600, 8, 6) + 0.5
    near = metrics.kid(real, same, subsets=5, subset_size=300)
    far = metrics.kid(real, shifted, subsets=5, subset_size=300)
    # measured: far 1.23 (0.93-1.20 over 20 other seeds), |near|/far 0.002 (at most 0.016)
    assert far["kid"] > 0.05
    assert abs(near["kid"]) < 0.05 * far["kid"]
    assert metrics.kid(real, same, subsets=5, subset_size=300) == near
    assert metrics.kid(real, same, subsets=5, subset_size=300, seed=1) != near


def test_kid_needs_two_rows():
    with pytest.raises(GankitError, match="at least 2"):
        metrics.kid(randn(1, 4, 0), randn(10, 4, 1))


# --------------------------------------------------------------------------- k-NN metrics


def distances(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Full (N, M) Euclidean distance matrix by direct subtraction."""
    a, b = a.double().numpy(), b.double().numpy()
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


def brute_radii(x: torch.Tensor, k: int) -> np.ndarray:
    d = distances(x, x)
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)[:, k - 1]


@pytest.fixture
def sets():
    """30 real and 25 partly overlapping fake points in 2-D."""
    return randn(30, 2, 70), randn(25, 2, 71) * 1.3 + 0.8


@pytest.mark.parametrize("k", [1, 3, 5])
def test_knn_radii_match_brute_force(sets, k):
    real, _ = sets
    assert_close(metrics.knn_radii(real, k), torch.from_numpy(brute_radii(real, k)))
    assert_close(
        metrics.knn_radii(real.float(), k).double(),
        torch.from_numpy(brute_radii(real, k)),
        rtol=1e-5,
        atol=1e-5,
    )


def test_knn_radius_excludes_only_the_point_itself():
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0]])  # a duplicate is another row
    assert_close(metrics.knn_radii(x, 1), torch.tensor([0.0, 0.0, 5.0]))
    with pytest.raises(GankitError, match="k \\+ 1 rows"):
        metrics.knn_radii(x, 3)


def test_precision_recall_match_brute_force(sets):
    real, fake = sets
    k = 3
    d = distances(fake, real)  # (M, N)
    precision = (d <= brute_radii(real, k)[None, :]).any(1).mean()
    recall = (d.T <= brute_radii(fake, k)[None, :]).any(1).mean()
    out = metrics.precision_recall(real, fake, k)
    assert 0 < out["precision"] < 1 and 0 < out["recall"] < 1  # a case that can fail
    assert out == pytest.approx({"precision": precision, "recall": recall}, abs=1e-12)


def test_density_coverage_match_brute_force(sets):
    real, fake = sets
    k = 5
    d, radii = distances(fake, real), brute_radii(real, k)
    density = (d <= radii[None, :]).sum() / (k * len(fake))
    coverage = (d.min(0) <= radii).mean()
    out = metrics.density_coverage(real, fake, k)
    assert 0 < out["coverage"] < 1
    assert out == pytest.approx({"density": density, "coverage": coverage}, abs=1e-12)


def test_cached_real_radii_give_the_same_manifold_metrics(sets):
    real, fake = sets
    assert metrics.precision_recall(
        real, fake, 3, real_radii=metrics.knn_radii(real, 3)
    ) == metrics.precision_recall(real, fake, 3)
    assert metrics.density_coverage(
        real, fake, 5, real_radii=metrics.knn_radii(real, 5)
    ) == metrics.density_coverage(real, fake, 5)


def test_manifold_metrics_on_identical_and_distant_sets(sets):
    real, _ = sets
    pr = metrics.precision_recall(real, real.clone())
    dc = metrics.density_coverage(real, real.clone())
    assert pr == {"precision": 1.0, "recall": 1.0} and dc["coverage"] == 1.0
    far = real + 100.0
    assert metrics.precision_recall(real, far) == {"precision": 0.0, "recall": 0.0}
    assert metrics.density_coverage(real, far) == {"density": 0.0, "coverage": 0.0}


def test_balls_are_closed():
    real = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0]])  # 1-NN radii 2, 2, 8
    fake = torch.tensor([[0.0, 2.0], [0.0, 2.0]])  # exactly on the first ball's boundary
    assert metrics.precision_recall(real, fake, k=1)["precision"] == 1.0
    assert metrics.density_coverage(real, fake, k=1) == pytest.approx(
        {"density": 1.0, "coverage": 1 / 3}
    )


def test_nearest_distances_match_brute_force_and_are_exact_for_copies(sets):
    real, fake = sets
    assert_close(
        metrics.nearest_distances(fake, real), torch.from_numpy(distances(fake, real).min(1))
    )
    d = distances(real, real)
    np.fill_diagonal(d, np.inf)
    assert_close(
        metrics.nearest_distances(real, real, exclude_self=True), torch.from_numpy(d.min(1))
    )
    offset = real.float() * 10 + 1000.0  # large norms: the expanded form alone would not give 0
    assert torch.equal(metrics.nearest_distances(offset[:7], offset), torch.zeros(7))


@pytest.mark.parametrize("entries", [1, 64])
def test_chunked_distances_give_the_same_answers(monkeypatch, sets, entries):
    real, fake = sets
    full = (
        metrics.knn_radii(real, 3),
        metrics.nearest_distances(fake, real),
        metrics.precision_recall(real, fake),
        metrics.density_coverage(real, fake),
    )
    calls = []
    blocks = metrics._distance_blocks

    def counted(a, b):
        for i, d in blocks(a, b):
            calls.append(len(d))
            yield i, d

    monkeypatch.setattr(metrics, "CHUNK_ENTRIES", entries)
    monkeypatch.setattr(metrics, "_distance_blocks", counted)
    assert_close(metrics.knn_radii(real, 3), full[0])
    assert max(calls) == max(1, entries // len(real)) and len(calls) >= 15  # many blocks ran
    assert_close(metrics.nearest_distances(fake, real), full[1])
    assert metrics.precision_recall(real, fake) == full[2]
    assert metrics.density_coverage(real, fake) == full[3]


# --------------------------------------------------------------------------- classifier


def test_classifier_score_of_confident_uniform_predictions_is_the_class_count():
    probs = torch.eye(10).repeat(20, 1)  # (200, 10): each part of 20 holds every class twice
    out = metrics.classifier_score(probs, splits=10)
    assert out["classifier_score"] == pytest.approx(10.0, rel=1e-12)
    assert out["classifier_score_std"] == pytest.approx(0.0, abs=1e-12)


def test_classifier_score_of_identical_rows_is_one():
    probs = torch.softmax(randn(1, 6, 80), dim=1).repeat(50, 1)
    assert metrics.classifier_score(probs, splits=5)["classifier_score"] == pytest.approx(1.0)


def test_classifier_score_matches_numpy_with_splits():
    p = torch.softmax(randn(103, 7, 81) * 2, dim=1).numpy()  # 5 parts of 20; 3 rows dropped
    scores = []
    for k in range(5):
        part = p[k * 20 : (k + 1) * 20]
        py = part.mean(0, keepdims=True)
        scores.append(np.exp((part * (np.log(part) - np.log(py))).sum(1).mean()))
    out = metrics.classifier_score(torch.from_numpy(p), splits=5)
    assert out["classifier_score"] == pytest.approx(np.mean(scores), rel=1e-10)
    assert out["classifier_score_std"] == pytest.approx(np.std(scores), rel=1e-8)
    assert metrics.classifier_score(torch.from_numpy(p[:3]), splits=10)["classifier_score"] == 1.0


# --------------------------------------------------------------------------- mode coverage


def test_mode_coverage_of_a_collapsed_generator():
    out = metrics.mode_coverage(torch.full((100,), 3), num_classes=10)
    assert out["class_histogram"] == [0, 0, 0, 100, 0, 0, 0, 0, 0, 0]
    assert out["classes_covered"] == 1
    assert out["class_kl"] == pytest.approx(math.log(10), rel=1e-12)
    assert "label_accuracy" not in out


def test_mode_coverage_of_uniform_predictions_and_label_accuracy():
    predicted = torch.arange(100) % 10
    requested = torch.randint(0, 10, (100,), generator=torch.Generator().manual_seed(0))
    out = metrics.mode_coverage(predicted, 10, requested=requested)
    assert out["classes_covered"] == 10
    assert out["class_kl"] == pytest.approx(0.0, abs=1e-12)
    assert out["label_accuracy"] == pytest.approx(int((predicted == requested).sum()) / 100)


def test_mode_coverage_against_non_uniform_real_labels():
    real_labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    predicted = torch.tensor([0] * 10 + [1] * 2 + [2] * 88)  # class 1: 2 < 0.1·100·0.3
    out = metrics.mode_coverage(predicted, 3, real_labels=real_labels)
    p_gen, p_real = np.array([0.10, 0.02, 0.88]), np.array([0.5, 0.3, 0.2])
    assert out["class_histogram"] == [10, 2, 88]
    assert out["classes_covered"] == 2
    assert out["class_kl"] == pytest.approx(float((p_gen * np.log(p_gen / p_real)).sum()))


def test_mode_coverage_kl_is_infinite_on_a_class_real_data_lacks():
    out = metrics.mode_coverage(torch.tensor([0, 1, 2]), 3, real_labels=torch.tensor([0, 1]))
    assert out["class_kl"] == math.inf
    out = metrics.mode_coverage(torch.tensor([0, 1, 1]), 3, real_labels=torch.tensor([0, 1]))
    assert out["classes_covered"] == 2  # an absent class is never covered, even at 0 ≥ 0.1·0
    assert out["class_kl"] == pytest.approx(math.log(2 / 3) / 3 + 2 / 3 * math.log(4 / 3))
    with pytest.raises(GankitError, match="num_classes"):
        metrics.mode_coverage(torch.tensor([0, 3]), 3)


# --------------------------------------------------------------------------- memorisation


def test_memorisation_flags_copies():
    train, test = randn(500, 3, 90), randn(300, 3, 91)
    out = metrics.memorisation(
        metrics.nearest_distances(train[:200].clone(), train),
        metrics.nearest_distances(test, train),
    )
    assert out["nn_train_median"] == 0.0 and out["nn_ratio"] == 0.0
    assert out["copy_fraction"] == 1.0 and out["nn_test_median"] > 0


def test_memorisation_of_fresh_samples_reads_as_no_copying():
    train, test, fake = randn(2000, 2, 92), randn(3000, 2, 93), randn(3000, 2, 94)
    out = metrics.memorisation(
        metrics.nearest_distances(fake, train), metrics.nearest_distances(test, train)
    )
    # measured: 0.968 and 0.0137; over 20 other seeds 0.971-1.041 and 0.0067-0.0153 (the 99th
    # percentile of 3,000 distances makes 0.01 ± 0.002 by chance alone)
    assert out["nn_ratio"] == pytest.approx(1.0, abs=0.06)
    assert out["copy_fraction"] == pytest.approx(0.01, abs=0.008)
    expected = np.median(metrics.nearest_distances(fake, train).numpy())
    assert out["nn_train_median"] == pytest.approx(expected, rel=1e-12)


def test_every_metric_returns_json_ready_values(sets):
    real, fake = sets
    results = [
        metrics.fid(real, fake),
        metrics.kid(real, fake, subsets=2),
        metrics.precision_recall(real, fake),
        metrics.density_coverage(real, fake),
        metrics.classifier_score(torch.softmax(real, 1)),
        metrics.mode_coverage(torch.tensor([0, 1, 1]), 2, requested=torch.tensor([0, 1, 0])),
        metrics.memorisation(torch.rand(5), torch.rand(5) + 0.1),
    ]
    for out in results:
        assert json.loads(json.dumps(out)) == out
        assert all(type(v) in (float, int, list) for v in out.values())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_manifold_metrics_in_one_pass_equal_the_separate_functions(dtype, monkeypatch):
    gen = torch.Generator().manual_seed(5)
    real = torch.randn(300, 6, generator=gen, dtype=dtype)
    fake = torch.randn(250, 6, generator=gen, dtype=dtype) * 1.3 + 0.4
    separate = metrics.precision_recall(real, fake, 3) | metrics.density_coverage(real, fake, 5)
    assert 0 < separate["recall"] < 1 and 0 < separate["coverage"] < 1  # cases that can fail
    monkeypatch.setattr(metrics, "CHUNK_ENTRIES", 7 * 300)  # several blocks
    fused = metrics.manifold_metrics(real, fake, 3, 5)
    assert fused == pytest.approx(separate, abs=1.0 / 250 if dtype == torch.float32 else 1e-12)
    copies = metrics.manifold_metrics(real, real.clone())
    assert copies["precision"] == copies["recall"] == copies["coverage"] == 1.0
