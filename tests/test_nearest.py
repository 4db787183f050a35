"""Memorisation at a glance: each sample's nearest training images in evaluator features
(`metrics.nearest_neighbours`, `Evaluation.nearest_training`), the samples chosen to show
(`choose_nearest_samples`), and the grid `gankit eval` writes beside eval.json."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from gankit.cli import main
from gankit.errors import GankitError
from gankit.evaluation import metrics
from gankit.evaluation.suite import (
    NEAREST_CLOSEST,
    NEAREST_K,
    NEAREST_RANDOM,
    choose_nearest_samples,
)
from gankit.runs import load_run

TILE, PAD, SCALE = 28, 2, 2  # the grid's tiles, gankit.viz.make_grid's padding, its upscaling


def _brute_force(query: torch.Tensor, reference: torch.Tensor, k: int):
    d = torch.cdist(query.double(), reference.double())  # (Nq, Nr)
    return d.topk(k, dim=1, largest=False)


@pytest.fixture
def copies():
    """500 training feature rows; 40 queries of which rows 20, 21, 22 copy training rows
    7, 42, 311 and the rest are fresh."""
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(500, 16, generator=gen) * 3 + 5  # off-centre: cancellation matters
    fresh = torch.randn(37, 16, generator=gen) * 3 + 5
    query = torch.cat([fresh[:20], train[[7, 42, 311]], fresh[20:]])
    return train, query


@pytest.mark.parametrize("chunk", [metrics.CHUNK_ENTRIES, 1000])  # one block, or many
def test_nearest_neighbours_find_copies_at_distance_zero(copies, chunk, monkeypatch):
    monkeypatch.setattr(metrics, "CHUNK_ENTRIES", chunk)
    train, query = copies
    dist, idx = metrics.nearest_neighbours(query, train, k=3)
    assert dist.shape == idx.shape == (40, 3)
    assert idx[20:23, 0].tolist() == [7, 42, 311]
    assert torch.equal(dist[20:23, 0], torch.zeros(3))  # exact, not round-off
    assert (dist[:20, 0] > 0).all() and (dist[23:, 0] > 0).all()
    assert (dist[:, 1:] >= dist[:, :-1]).all()  # nearest first
    expected = _brute_force(query, train, 3)
    assert torch.equal(idx, expected.indices)
    torch.testing.assert_close(dist.double(), expected.values, atol=1e-4, rtol=1e-5)
    # k = 1 is nearest_distances
    assert torch.equal(metrics.nearest_neighbours(query, train)[0][:, 0],
                       metrics.nearest_distances(query, train))  # fmt: skip


def test_nearest_neighbours_exclude_self_across_blocks(copies, monkeypatch):
    monkeypatch.setattr(metrics, "CHUNK_ENTRIES", 1000)  # 2 rows a block: offsets matter
    train, _ = copies
    dist, idx = metrics.nearest_neighbours(train, train, k=2, exclude_self=True)
    assert not (idx == torch.arange(500)[:, None]).any()
    d = torch.cdist(train.double(), train.double()).fill_diagonal_(float("inf"))
    expected = d.topk(2, dim=1, largest=False)
    assert torch.equal(idx, expected.indices)
    torch.testing.assert_close(dist.double(), expected.values, atol=1e-4, rtol=1e-5)


def test_nearest_neighbours_refuse_bad_requests():
    x = torch.randn(5, 4)
    with pytest.raises(GankitError, match="k >= 1"):
        metrics.nearest_neighbours(x, x, k=0)
    with pytest.raises(GankitError, match="at least 6"):
        metrics.nearest_neighbours(x, x, k=6)
    with pytest.raises(GankitError, match="feature sizes differ"):
        metrics.nearest_neighbours(x, torch.randn(5, 3))


def test_choose_nearest_samples_ranks_copies_first_then_random_others():
    gen = torch.Generator().manual_seed(1)
    to_train = torch.rand(100, generator=gen) + 1
    to_train[[63, 5, 88]] = 0.0  # three copies
    to_train[40] = 0.5  # a near copy
    chosen = choose_nearest_samples(to_train)
    assert len(chosen) == NEAREST_CLOSEST + NEAREST_RANDOM
    assert chosen[:4].tolist() == [5, 63, 88, 40]  # copies by sample index, then the near copy
    closest = chosen[:NEAREST_CLOSEST]
    assert torch.equal(closest, to_train.argsort(stable=True)[:NEAREST_CLOSEST])
    drawn = chosen[NEAREST_CLOSEST:]
    assert len(set(chosen.tolist())) == len(chosen)  # no sample twice
    assert (to_train[drawn] >= to_train[closest].max()).all()
    assert (to_train[drawn].diff() >= 0).all()  # shown in order of distance
    assert torch.equal(chosen, choose_nearest_samples(to_train))  # seeded
    assert not torch.equal(drawn, choose_nearest_samples(to_train, seed=1)[NEAREST_CLOSEST:])
    # fewer samples than rows to show: every sample, once
    few = choose_nearest_samples(to_train[:11])
    assert sorted(few.tolist()) == list(range(11)) and few[0] == 5


@pytest.mark.slow
def test_evaluation_finds_training_copies_among_real_images(evaluation, tmp_path):
    train, test = evaluation.train.images, evaluation.reference_images
    picks = [7, 1234, 45678]
    for i in picks:  # each pick appears once in the training set, so its index is the answer
        assert int((train == train[i]).flatten(1).all(1).sum()) == 1
    samples = torch.cat([test[:20], train[picks], test[20:40]])  # copies at 20, 21, 22
    values, features, to_train = evaluation.measure(samples)
    dist, idx = evaluation.nearest_training(features, NEAREST_K)
    assert idx[20:23, 0].tolist() == picks
    assert (dist[20:23, 0] <= 1e-4 * values["nn_test_median"]).all()
    assert (dist[:20, 0] > 0.01 * values["nn_test_median"]).all()
    assert torch.equal(to_train, dist[:, 0])
    assert sorted(choose_nearest_samples(to_train)[:3].tolist()) == [20, 21, 22]

    entry = evaluation.write_nearest(samples, features, to_train, tmp_path / "x-nearest.png")
    assert (tmp_path / "x-nearest.png").exists()
    assert entry["file"] == "x-nearest.png" and entry["k"] == NEAREST_K
    assert entry["closest"] == NEAREST_CLOSEST and entry["random"] == NEAREST_RANDOM
    assert sorted(entry["samples"][:3]) == [20, 21, 22]
    assert sorted(row[0] for row in entry["train"][:3]) == sorted(picks)
    assert all(row[0] <= 1e-4 * values["nn_test_median"] for row in entry["distance"][:3])
    assert entry["nn_test_median"] == pytest.approx(values["nn_test_median"])


def _tile(grid: np.ndarray, row: int, col: int) -> np.ndarray:
    """The 28×28 image at (row, col) of a grid from viz.make_grid upscaled SCALE times."""
    small = grid[::SCALE, ::SCALE]
    top, left = row * (TILE + PAD) + PAD, col * (TILE + PAD) + PAD
    return small[top : top + TILE, left : left + TILE]


@pytest.mark.slow
def test_cli_eval_writes_the_nearest_grid_beside_eval_json(
    trained, evaluation, tmp_path, data_dir, capsys
):
    from PIL import Image

    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)  # tests read `trained`; this one writes into a copy
    n = 60
    assert main(["eval", str(run_dir), "--data-dir", str(data_dir), "--n", str(n)]) == 0
    assert "eval-nearest.png" in capsys.readouterr().out
    report = json.loads((run_dir / "eval.json").read_text())
    entry = report["nearest"]
    assert entry["file"] == "eval-nearest.png"  # relative: beside eval.json
    png = run_dir / entry["file"]
    assert png.exists() and not list(run_dir.glob(".eval-nearest.png.*"))  # no temp left
    rows, cols = NEAREST_CLOSEST + NEAREST_RANDOM, 1 + NEAREST_K
    assert len(entry["samples"]) == rows and len(set(entry["samples"])) == rows
    assert all(0 <= i < n for i in entry["samples"])
    assert np.array(entry["train"]).shape == np.array(entry["distance"]).shape == (rows, 3)
    d = np.array(entry["distance"])
    assert (np.diff(d, axis=1) >= 0).all()  # each row: nearest training image first
    closest = d[: entry["closest"], 0]
    assert (np.diff(closest) >= 0).all() and closest.max() <= d[entry["closest"] :, 0].min()
    assert entry["nn_test_median"] == pytest.approx(report["metrics"]["nn_test_median"])

    grid = np.array(Image.open(png))
    assert grid.shape == (
        SCALE * (rows * (TILE + PAD) + PAD),
        SCALE * (cols * (TILE + PAD) + PAD),
    )  # (964, 244)
    samples = load_run(run_dir).sample(n, None, 0)  # what `gankit eval` drew (seed 0)
    train = evaluation.train.images
    for r in (0, rows - 1):
        assert np.array_equal(_tile(grid, r, 0), samples[entry["samples"][r], 0].numpy())
        for c in range(1, cols):
            assert np.array_equal(_tile(grid, r, c), train[entry["train"][r][c - 1], 0].numpy())

    # --out elsewhere: the grid follows the report's name
    out = tmp_path / "other" / "best.json"
    assert main(["eval", str(run_dir), "--data-dir", str(data_dir), "--n", str(n),
                 "--out", str(out)]) == 0  # fmt: skip
    assert json.loads(out.read_text())["nearest"]["file"] == "best-nearest.png"
    assert (tmp_path / "other" / "best-nearest.png").exists()
