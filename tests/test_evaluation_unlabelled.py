"""Evaluators for colour images and for data without labels.

Labelled data of any shape gets the classifier recipe sized for it (RECIPE itself at
1×28×28, so the shipped Fashion-MNIST key stays); data without labels gets a self-supervised
feature network (rotation prediction) with k-means pseudo-classes. The self-supervised tests
measure on the tinted colour set of conftest.py with its labels hidden, on one evaluator per
module built with a shortened recipe; the comments give the measured values."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tinted_dataset
from torch.testing import assert_close

import gankit.evaluation.evaluator as ev
from gankit.data import Dataset, load_dataset
from gankit.errors import ConfigError, DataError
from gankit.evaluation import evaluate_images, format_report, open_evaluation
from gankit.evaluation.during_training import PeriodicEvaluation
from gankit.evaluation.evaluator import (
    RECIPE,
    SHIPPED,
    body_layers,
    build_evaluator,
    describe,
    evaluator_key,
    get_evaluator,
    recipe_for,
    save_evaluator,
)
from gankit.evaluation.self_supervised import fit_head, kmeans, nt_xent, whitening
from gankit.evaluation.suite import Evaluation
from gankit.nets import build_body

SHORT = 200  # pretext steps of this module's self-supervised evaluator (the recipe's: 400)
FASHION_KEY = "f8d28dfb91bf381f"  # the shipped evaluator's


def _blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of uint8 images (N, C, H, W), each channel alone."""
    r, c = int(3 * sigma) + 1, images.shape[1]
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    k = (k / k.sum()).repeat(c, 1)  # (C, 2r + 1)
    out = F.pad(images.float(), (r, r, 0, 0), mode="reflect")
    out = F.conv2d(out, k.view(c, 1, 1, -1), groups=c)
    out = F.conv2d(F.pad(out, (0, 0, r, r), mode="reflect"), k.view(c, 1, -1, 1), groups=c)
    return out.round().clamp(0, 255).to(torch.uint8)


def _same_weights(a, b) -> bool:
    return a.state_dict().keys() == b.state_dict().keys() and all(
        torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items()
    )


def _hidden(images: torch.Tensor, name: str) -> Dataset:
    """Images without labels, as a folder of faces would load."""
    return Dataset(images, None, name, None, "tinted")


# --------------------------------------------------------------------------- recipes


def test_recipes_follow_the_image_shape_and_keep_the_shipped_key(fashion, data_dir):
    assert recipe_for((1, 28, 28)) is RECIPE and body_layers(28) == RECIPE["layers"]
    test = load_dataset("fashion-mnist", "test", data_dir)
    assert evaluator_key(fashion, test, recipe_for((1, 28, 28))) == FASHION_KEY
    assert FASHION_KEY in SHIPPED
    for shape, convs, side in [((3, 32, 32), 3, 4), ((3, 64, 64), 4, 4), ((3, 28, 28), 2, 7)]:
        recipe = recipe_for(shape)
        assert recipe["image_shape"] == list(shape) and "pretext" not in recipe
        assert sum(layer.startswith("conv") for layer in recipe["layers"]) == convs
        body, out = build_body(recipe["layers"][:-3], shape)  # up to the flatten
        assert out == (128 if convs > 2 else 64, side, side)
        assert build_body(recipe["layers"], shape)[1] == (128,)  # 128 features at every size
    unlabelled = recipe_for((3, 32, 32), labelled=False)
    assert unlabelled["pretext"] == "rotation" and unlabelled["layers"] == body_layers(32)
    # the same pixels per step at every size, at least 16 images
    batches = {s: recipe_for((3, s, s), False)["batch_size"] for s in (28, 32, 64, 128)}
    assert batches == {28: 64, 32: 64, 64: 16, 128: 16}
    assert recipe_for((3, 32, 32), False, "contrastive")["temperature"] > 0
    with pytest.raises(DataError, match="unknown pretext task 'jigsaw'"):
        recipe_for((3, 32, 32), False, "jigsaw")


# --------------------------------------------------------------------------- colour classifiers


def test_labelled_colour_sets_get_classifiers_sized_for_their_shape(
    fashion, tinted, monkeypatch, tmp_path
):
    grey = fashion.subset(700)
    grey_key = evaluator_key(
        Dataset(grey.images[:600], grey.labels[:600], "g:train"),
        Dataset(grey.images[600:], grey.labels[600:], "g:test"),
        recipe_for((1, 28, 28)),
    )
    monkeypatch.setattr(ev, "RECIPE", RECIPE | {"epochs": 1, "min_steps": 40, "batch_size": 32})
    nets = {}
    for size in (32, 64):
        data = tinted if size == 32 else tinted_dataset(fashion, 700, size)
        train = Dataset(data.images[:600], data.labels[:600], "t:train", data.classes, "tinted")
        test = Dataset(data.images[600:700], data.labels[600:700], "t:test", data.classes)
        net = nets[size] = get_evaluator(f"tinted{size}", splits=(train, test), progress=False)
        assert net.kind == "classifier" and net.image_shape == (3, size, size)
        assert net.info["recipe"]["layers"] == body_layers(size) and net.feature_dim == 128
        assert net.info["recipe"]["image_shape"] == [3, size, size]
        assert net.info["test_accuracy"] > 0.8  # the colours give the class away: 1.0 at both
        assert f"-{size}-{net.info['key']}" in net.info["file"]

        evaluation = Evaluation(net, test, train)  # real features cached, as for any data
        assert list(ev.evaluator_cache().glob(f"features-{ev.weights_digest(net)}-*"))
        report = evaluate_images(evaluation, train.images[:50], nearest=tmp_path / f"{size}.png")
        assert report["metrics"]["copy_fraction"] == 1.0  # training images: their own copies
        assert (
            report["nearest"]["train"][0][0] in range(50) and (tmp_path / f"{size}.png").is_file()
        )
        gen = torch.Generator().manual_seed(0)
        noise = torch.randint(0, 256, (100, 3, size, size), generator=gen, dtype=torch.uint8)
        real = evaluation(train.images[:100], memorisation=False)["fid"]
        assert evaluation(noise, memorisation=False)["fid"] > 5 * real

        model = types.SimpleNamespace(channels=1, image_size=28)
        with pytest.raises(ConfigError, match=rf"shape \(3, {size}, {size}\).*\(1, 28, 28\)"):
            PeriodicEvaluation(evaluation, types.SimpleNamespace(model=model))
        model.channels, model.image_size = 3, size
        PeriodicEvaluation(evaluation, types.SimpleNamespace(model=model))  # fits: no error
    assert len({nets[32].info["key"], nets[64].info["key"], grey_key}) == 3
    with pytest.raises(DataError, match=r"shape \(3, 32, 32\), got \(3, 64, 64\)"):
        nets[32].embed(torch.zeros(2, 3, 64, 64, dtype=torch.uint8))


# --------------------------------------------------------------------------- the parts


def test_nt_xent_matches_its_formula():
    gen = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(6, 5, generator=gen, dtype=torch.float64), dim=1)
    sim = z @ z.T / 0.5
    expected = 0.0
    for i in range(6):
        partner = (i + 3) % 6
        others = torch.cat([sim[i, :i], sim[i, i + 1 :]])
        expected -= float(sim[i, partner] - torch.logsumexp(others, 0)) / 6
    assert nt_xent(z, 0.5).item() == pytest.approx(expected, rel=1e-12)
    same = torch.ones(8, 3, dtype=torch.float64) / math.sqrt(3)  # every view alike
    assert nt_xent(same, 0.2).item() == pytest.approx(math.log(7), rel=1e-12)


def test_kmeans_finds_separated_blobs_and_the_head_learns_them():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = torch.arange(300) % 3
    x = centres[truth] + torch.randn(300, 2, generator=gen) * torch.tensor([1.0, 0.3])
    found, clusters = kmeans(x, 3, seed=0)
    again = kmeans(x, 3, seed=0)
    assert torch.equal(found, again[0]) and torch.equal(clusters, again[1])
    for c in range(3):  # each blob is one cluster
        assert len(set(clusters[truth == c].tolist())) == 1
    assert len(set(clusters.tolist())) == 3 and (torch.bincount(clusters).diff() <= 0).all()
    mean, projection = whitening(x, 2)
    z = (x.double() - mean) @ projection.T
    assert_close(torch.cov(z.T), torch.eye(2, dtype=torch.float64), atol=1e-9, rtol=0)
    head = torch.nn.Linear(2, 3)
    assert fit_head(head, x, clusters, mean, projection) == 1.0
    assert torch.equal(head(x).argmax(1), clusters)  # the folded head reads raw features


def test_self_supervised_build_is_deterministic_and_keyed_by_data_and_recipe(tinted):
    train = _hidden(tinted.images[:600], "t:train")
    test = _hidden(tinted.images[600:700], "t:test")
    quick = {"steps": 6, "batch_size": 16, "head_steps": 20, "kmeans_restarts": 1}
    for pretext in ("rotation", "contrastive"):
        recipe = recipe_for((3, 32, 32), False, pretext) | quick
        a, b = (build_evaluator(train, test, recipe, progress=False) for _ in range(2))
        assert a.kind == f"self-supervised ({pretext})" and a.num_classes == 10
        assert a.info["key"] == b.info["key"] == evaluator_key(train, test, recipe)
        assert _same_weights(a, b) and a.info == b.info
        other = build_evaluator(train, test, recipe | {"seed": 1}, progress=False)
        assert other.info["key"] != a.info["key"] and not _same_weights(a, other)
    changed = _hidden(train.images.clone(), "t:train")
    changed.images[0, 0, 0, 0] ^= 1
    assert evaluator_key(changed, test, recipe) != evaluator_key(train, test, recipe)


# --------------------------------------------------------------------------- unlabelled data


@pytest.fixture(scope="module")
def held(data_dir) -> Dataset:
    """10,000 tinted Fashion-MNIST test garments (seed 1), with labels, never trained on."""
    source = load_dataset("fashion-mnist", "test", data_dir)
    return tinted_dataset(source, 10_000, seed=1, name="tinted:test")


@pytest.fixture(scope="module")
def unlabelled(tinted, held, tmp_path_factory):
    """The evaluator gankit picks for the tinted set with its labels hidden (6,000 training
    images; the first 2,000 held-out ones as its test split), its pretext shortened to SHORT
    steps, built once into a private cache; and the Evaluation against those 2,000."""
    cache = tmp_path_factory.mktemp("unlabelled-cache")
    train, test = _hidden(tinted.images, "tinted:train"), _hidden(held.images[:2000], "t:test")
    with pytest.MonkeyPatch.context() as mp:  # module fixtures run before the autouse one
        mp.setenv("GANKIT_OFFLINE", "1")
        mp.setenv("GANKIT_CACHE", str(cache))
        mp.setattr(ev, "SELF_SUPERVISED", ev.SELF_SUPERVISED | {"steps": SHORT})
        torch.set_num_threads(2)
        net = get_evaluator("tinted", splits=(train, test), progress=False)
        evaluation = Evaluation(net, test, train)
    return types.SimpleNamespace(
        net=net, evaluation=evaluation, train=train, test=test, cache=cache
    )


def test_data_without_labels_gets_a_self_supervised_evaluator(unlabelled, held):
    net = unlabelled.net
    assert net.kind == "self-supervised (rotation)" and net.info["recipe"]["steps"] == SHORT
    assert net.image_shape == (3, 32, 32) and net.feature_dim == 128 and net.num_classes == 10
    assert net.info["classes"] == [f"cluster {i}" for i in range(10)]
    assert sum(net.info["cluster_sizes"]) == 6000 and min(net.info["cluster_sizes"]) > 100
    facts = describe(net)
    assert facts["kind"] == "self-supervised (rotation)" and facts["classes"][9] == "cluster 9"
    assert "test_accuracy" not in facts and facts["head_agreement"] > 0.8  # 0.99
    assert "self-supervised (rotation)" in net.name

    report = evaluate_images(unlabelled.evaluation, held.images[2000:2200], held.labels[2000:2200])
    assert report["evaluator"]["kind"] == "self-supervised (rotation)"
    assert "label_accuracy" not in report["metrics"]  # a generator's labels are not clusters
    assert f"{net.info['key']} (built here: {net.info['file']}), self-supervised (rotation), " in (
        format_report(report)
    )
    # a reference with labels still counts clusters, as the evaluator sees them
    labelled = Evaluation(net, held.subset(2000), cache=False)
    assert torch.equal(labelled.real_classes, unlabelled.evaluation.real_classes)


def test_fid_orders_real_blurred_one_cluster_and_noise(unlabelled, held):
    evaluation, net = unlabelled.evaluation, unlabelled.net
    real = held.images[2000:4000]
    rest, rest_labels = held.images[2000:], held.labels[2000:]
    clusters = net.embed(rest)[1].argmax(1)
    gen = torch.Generator().manual_seed(1)
    sets = {
        "real": real,
        "blurred": _blur(real, 1.0),
        "one cluster": rest[clusters == 0][:1000],
        "one class": rest[rest_labels == 1][:1000],  # trousers
        "noise": torch.randint(0, 256, real.shape, generator=gen, dtype=torch.uint8),
    }
    m = {k: evaluation(v, memorisation=False, kid_subsets=10) for k, v in sets.items()}
    fid = {k: v["fid"] for k, v in m.items()}
    # 0.47 < 9.5 < 38 (one cluster), 72 (one class) < 361
    assert fid["real"] < fid["blurred"] < fid["one cluster"] < fid["noise"], fid
    assert fid["blurred"] < fid["one class"] < fid["noise"], fid
    assert fid["blurred"] > 5 * fid["real"]  # 20×
    assert fid["one cluster"] > 2 * fid["blurred"]  # 4×
    assert fid["noise"] > 3 * max(fid["one cluster"], fid["one class"])  # 5×
    assert m["real"]["classes_covered"] == 10 and m["real"]["class_kl"] < 0.02  # 0.003
    # cluster 0 holds 22% of the reference: KL = −log 0.22 = 1.52
    assert m["one cluster"]["classes_covered"] == 1 and m["one cluster"]["class_kl"] > 1.0
    assert m["one class"]["classes_covered"] <= 3  # 1
    assert m["real"]["recall"] > 0.6 and m["one cluster"]["recall"] < 0.4  # 0.93, 0.22


def test_samples_missing_half_the_pseudo_classes_are_flagged(unlabelled, held):
    evaluation, net = unlabelled.evaluation, unlabelled.net
    rest = held.images[2000:]
    clusters = net.embed(rest)[1].argmax(1)
    half = rest[clusters % 2 == 0][:2000]  # clusters 0, 2, 4, 6, 8
    whole = evaluation(rest[:2000], memorisation=False, kid_subsets=10)
    missing = evaluation(half, memorisation=False, kid_subsets=10)
    assert whole["classes_covered"] == 10 and whole["class_kl"] < 0.02  # 0.003
    assert 4 <= missing["classes_covered"] <= 6  # 5
    # −log of the share the even clusters hold in the reference (57%): 0.57
    assert missing["class_kl"] > 0.4
    hist = np.array(missing["class_histogram"])
    assert hist[1::2].sum() < 0.1 * hist.sum()  # 0
    assert missing["fid"] > 5 * whole["fid"]  # 9.9 against 0.47


def test_self_supervised_evaluator_is_cached(unlabelled, monkeypatch):
    monkeypatch.setenv("GANKIT_CACHE", str(unlabelled.cache))
    monkeypatch.setattr(ev, "SELF_SUPERVISED", ev.SELF_SUPERVISED | {"steps": SHORT})
    built = []
    real_build = ev.build_evaluator
    monkeypatch.setattr(
        ev, "build_evaluator", lambda *a, **k: built.append(1) or real_build(*a, **k)
    )
    again = get_evaluator("tinted", splits=(unlabelled.train, unlabelled.test), progress=False)
    net = unlabelled.net
    assert built == [] and again.info["file"] == net.info["file"]
    assert again.info["key"] == net.info["key"] and again.kind == net.kind
    assert _same_weights(again, net)
    assert again.info["classes"] == net.info["classes"]


def test_open_evaluation_of_an_unlabelled_folder(fashion, tmp_path, monkeypatch):
    from PIL import Image

    folder = tmp_path / "faces"
    folder.mkdir()
    for i, image in enumerate(fashion.images[:150, 0].numpy()):
        Image.fromarray(image).save(folder / f"{i:03d}.png")
    quick = {"steps": 5, "batch_size": 16, "head_steps": 20, "kmeans_restarts": 1}
    monkeypatch.setattr(ev, "SELF_SUPERVISED", ev.SELF_SUPERVISED | quick)
    evaluation = open_evaluation(f"folder:{folder}", progress=False)
    net = evaluation.evaluator
    assert net.kind == "self-supervised (rotation)" and net.info["n_train"] == 135
    assert net.image_shape == tuple(evaluation.train.images.shape[1:])
    values = evaluation(evaluation.train.images[:40])
    assert len(values["class_histogram"]) == 10 and "classes_covered" in values

    path = save_evaluator(net, tmp_path / "mine.safetensors")  # --evaluator FILE: used as is
    given = open_evaluation(f"folder:{folder}", evaluator=path, progress=False)
    assert given.evaluator.info["file"] == str(path) and given.evaluator.kind == net.kind
    assert _same_weights(given.evaluator, net)
