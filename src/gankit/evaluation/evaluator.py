"""The evaluator: a small CNN classifier per data set whose penultimate layer is the feature
space of every metric (FID, KID, precision/recall, …) and whose class probabilities give
the classifier score and mode coverage.

Inception features computed on 28×28 digits upscaled to 299×299 RGB say little about digits
and need weights from the internet. gankit instead trains its own feature network on the real
training split, the first time a data set is evaluated (under a minute on two CPU cores
for Fashion-MNIST), and caches it under a key made of the data's content hash and the
training recipe: the same data always gives the same evaluator, changed data a new one. The
build runs on the recipe's thread count whatever the caller's, since float rounding follows
it. The Fashion-MNIST evaluator ships inside the package (``evaluators/``, checked by
SHA-256), so every installation measures with the same weights.

The recipe follows the images' shape (`recipe_for`): RECIPE for 28×28 grayscale, the same
recipe with one more stride-2 block per halving the side needs (32×32: three blocks, 64×64:
four; 128 features always) and the shape written into it for anything else. Data without
labels gets a self-supervised feature network instead (:mod:`self_supervised`): a pretext
task trains the same body, k-means on its features makes pseudo-classes ("cluster 0", …),
and a linear head on the frozen features predicts them, so the file holds body + head as
ever and the class metrics count clusters. ``info["kind"]`` says which ("classifier" when
absent, as in the shipped file).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gankit.data import Dataset, cache_dir, load_dataset
from gankit.errors import CheckpointError, DataError, StorageError
from gankit.evaluation.self_supervised import (
    PRETEXTS,
    fit_head,
    kmeans,
    nearest_centre,
    train_pretext,
    whiten,
    whitening,
)
from gankit.files import FolderBusy, FolderLock, describe_holder, remove_temporaries, storage_error
from gankit.nets import build_body
from gankit.notices import notice, warn
from gankit.runs import checkpoint

# How gankit trains an evaluator. Any change to it changes every cache key.
RECIPE: dict = {
    "version": 2,
    "layers": [
        "conv 32 k5 s2 p2",
        "bn",
        "relu",  # 14×14
        "conv 64 k3 s2 p1",
        "bn",
        "relu",  # 7×7
        "flatten",
        "fc 128",
        "relu",
    ],  # → 128 features
    "epochs": 5,
    "min_steps": 2000,  # small sets get more epochs, up to this many updates
    "batch_size": 128,
    "max_lr": 3e-3,  # one-cycle schedule over the whole run (Adam)
    "seed": 0,
    # Intra-op threads, held for the whole build: the rounding of reductions follows the
    # count, and a 1-thread Fashion-MNIST build ends in other weights than a 2-thread one
    # (92.15% vs 92.03% accuracy). One thread: no dependence on how OpenMP splits work, and
    # no spinning thread stalled by other programs (2 threads took minutes instead of ~25 s
    # while another program used one of two cores; 1 thread takes ~50 s whatever the load).
    "threads": 1,
}

# How gankit trains a self-supervised evaluator for data without labels (`recipe_for` adds
# the body for the image size). Timed on 6,000 tinted 3×32×32 garments, one thread: see
# self_supervised.py for the comparison that chose the pretext task.
SELF_SUPERVISED: dict = {
    "version": 1,
    "pretext": "rotation",
    "steps": 400,
    # images per step at 32×32 (×4 turns for rotation, ×2 views for contrastive); larger
    # images get fewer, for the same pixels per step (at least 16): 64×64 takes 16
    "batch_size": 64,
    "max_lr": 3e-3,  # one-cycle schedule (Adam)
    "clusters": 10,  # k-means pseudo-classes, k-means++ starts
    "cluster_dims": 32,  # k-means on the top principal components, whitened
    "kmeans_restarts": 4,
    "head_steps": 300,  # full-batch Adam steps of the cluster head on frozen features
    "seed": 0,
    "threads": 1,  # as RECIPE's: rounding follows the thread count
}
# What each pretext task adds to the recipe.
PRETEXT_SETTINGS: dict[str, dict] = {
    "rotation": {},
    "contrastive": {"temperature": 0.2, "projection": 64, "jitter": 0.4},
}


def body_layers(size: int) -> list[str]:
    """The evaluator body for square images of side ``size``: RECIPE's two stride-2 blocks
    (28 → 14 → 7), one more 128-channel block for each halving still needed to bring the
    side to at most 7 (32: one, 64: two), then the same 128 features."""
    layers = ["conv 32 k5 s2 p2", "bn", "relu", "conv 64 k3 s2 p1", "bn", "relu"]
    side = math.ceil(math.ceil(size / 2) / 2)
    while side > 7:
        layers += ["conv 128 k3 s2 p1", "bn", "relu"]
        side = math.ceil(side / 2)
    return layers + ["flatten", "fc 128", "relu"]


def recipe_for(shape: tuple[int, ...], labelled: bool = True, pretext: str | None = None) -> dict:
    """The recipe of the evaluator for images of ``shape`` (C, S, S): RECIPE itself for
    labelled 1×28×28 images (the shipped key), else the classifier recipe with the body for
    S and the shape in it (so in the key); without labels, SELF_SUPERVISED with ``pretext``
    (default its own) and the body for S."""
    c, h, w = (int(d) for d in shape)
    if h != w:
        raise DataError(f"evaluators take square images; got {h}×{w}")
    if labelled and (c, h, w) == (1, 28, 28):
        return RECIPE
    sized = {"layers": body_layers(h), "image_shape": [c, h, w]}
    if labelled:
        return RECIPE | sized
    pretext = pretext or SELF_SUPERVISED["pretext"]
    if pretext not in PRETEXTS:
        raise DataError(f"unknown pretext task {pretext!r}; known: {', '.join(PRETEXTS)}")
    base = SELF_SUPERVISED["batch_size"]  # at 32×32: the same pixels per step at any size
    sized["batch_size"] = min(base, max(16, base * 32 * 32 // (h * h)))
    return SELF_SUPERVISED | PRETEXT_SETTINGS[pretext] | {"pretext": pretext} | sized


# Evaluators shipped in the package, by key: (file in SHIPPED_DIR, SHA-256 of its bytes).
# Made by `gankit evaluator build fashion-mnist --rebuild --out FILE` with this RECIPE.
SHIPPED: dict[str, tuple[str, str]] = {
    "f8d28dfb91bf381f": (
        "fashion-mnist-28-f8d28dfb91bf381f.safetensors",  # 92.15% accuracy
        "2d6efdde06e0691f9c01b38153b9be8d1a6537e53abe506f62f92840b0fa0cd8",
    ),
}
SHIPPED_DIR = Path(__file__).with_name("evaluators")
BUILD_WAIT = 3600.0  # seconds a process waits for another one building the same evaluator


class Evaluator(nn.Module):
    """Feature network + linear classifier head; inputs are uint8 images (N, C, H, W)."""

    def __init__(
        self,
        layers: list[str],
        image_shape: tuple[int, int, int],
        num_classes: int,
        mean: float = 0.0,
        std: float = 1.0,
        info: dict | None = None,
    ):
        super().__init__()
        self.body, shape = build_body(layers, image_shape)
        if len(shape) != 1:
            raise DataError(
                f"evaluator layers end in shape {shape}; they must end flat "
                "(e.g. '... flatten, fc 128, relu')"
            )
        self.head = nn.Linear(shape[0], num_classes)
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))
        self.layers, self.image_shape, self.num_classes = list(layers), image_shape, num_classes
        self.info: dict = dict(info or {})

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    @property
    def kind(self) -> str:
        """What the evaluator is: "classifier" (of the data's labels) or "self-supervised
        (PRETEXT)" (its classes are k-means clusters of its features)."""
        return self.info.get("kind", "classifier")

    @property
    def name(self) -> str:
        """A short identifier for reports: data set, key, origin, kind and test accuracy."""
        acc = self.info.get("test_accuracy")
        facts = [self.info.get("origin", "built here")]
        facts += [self.kind] if self.kind != "classifier" else []
        facts += [f"test accuracy {acc:.2%}"] if acc is not None else []
        return (
            f"{self.info.get('data', 'custom')} evaluator {self.info.get('key', '?')} "
            f"({', '.join(facts)})"
        )

    def normalise(self, images: Tensor) -> Tensor:
        """uint8 (N, C, H, W) → standardised floats."""
        return (images.float() / 255.0 - self.mean) / self.std

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Standardised images → (features (N, F), logits (N, classes))."""
        h = self.body(x)
        return h, self.head(h)

    @torch.inference_mode()
    def embed(self, images: Tensor, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
        """uint8 images (N, C, H, W) → (features (N, F) float32, class probabilities (N, K)),
        on the evaluator's device, in eval mode."""
        if tuple(images.shape[1:]) != tuple(self.image_shape):
            raise DataError(
                f"the evaluator takes images of shape {tuple(self.image_shape)}, got "
                f"{tuple(images.shape[1:])}: evaluate with an evaluator built for "
                "this image size"
            )
        was_training = self.training
        self.eval()
        device = self.mean.device
        feats, probs = [], []
        for i in range(0, len(images), batch_size):
            h, logits = self(self.normalise(images[i : i + batch_size].to(device)))
            feats.append(h.float())
            probs.append(logits.float().softmax(1))
        self.train(was_training)
        if not feats:
            return torch.zeros(0, self.feature_dim), torch.zeros(0, self.num_classes)
        return torch.cat(feats), torch.cat(probs)


# --------------------------------------------------------------------------- data and keys


def fingerprint(data: Dataset) -> str:
    """SHA-256 of a data set's images and labels (content, shape and dtype)."""
    h = hashlib.sha256()
    h.update(repr((tuple(data.images.shape), str(data.images.dtype))).encode())
    h.update(data.images.contiguous().numpy().tobytes())
    if data.labels is not None:
        h.update(data.labels.contiguous().numpy().tobytes())
    return h.hexdigest()


def has_test_split(name: str) -> bool:
    """Whether ``name`` has a real held-out test split (named sets, folder: with train/test)."""
    if name.startswith("npz:"):
        return False
    if name.startswith("folder:"):
        root = Path(name.removeprefix("folder:")).expanduser()
        return (root / "train").is_dir() and (root / "test").is_dir()
    return True


def load_splits(
    name: str, data_dir: str | None = None, image_size: int = 28, channels: int = 0
) -> tuple[Dataset, Dataset]:
    """(train, test) of a data set at ``image_size`` (``channels``: 0 as stored, or 1 or 3).
    A set without a test split (``npz:``, a plain folder) is split deterministically: every
    tenth image is held out as the test part."""
    if has_test_split(name):
        return (
            load_dataset(name, "train", data_dir, image_size, channels=channels),
            load_dataset(name, "test", data_dir, image_size, channels=channels),
        )
    data = load_dataset(name, "train", data_dir, image_size, channels=channels)
    held = torch.arange(len(data)) % 10 == 9
    if held.sum() == 0:
        raise DataError(
            f"{data.name}: {len(data)} images are too few to hold any out for "
            "testing an evaluator (need at least 10)"
        )

    def part(mask: Tensor, split: str) -> Dataset:
        labels = data.labels[mask] if data.labels is not None else None
        return Dataset(
            data.images[mask], labels, f"{data.name}:{split}", data.classes, data.source, split
        )

    return part(~held, "train"), part(held, "test")


def evaluator_key(
    train: Dataset, test: Dataset, recipe: dict = RECIPE, prints: tuple[str, str] | None = None
) -> str:
    """16 hex digits naming the evaluator that ``recipe`` trains on these splits
    (``prints``: their fingerprints, when already computed)."""
    train_print, test_print = prints or (fingerprint(train), fingerprint(test))
    text = json.dumps(recipe, sort_keys=True) + train_print + test_print
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _slug(name: str) -> str:
    return name.split(":")[0].lower()


def evaluator_cache() -> Path:
    """Where built evaluators and real-data features are cached (``$GANKIT_CACHE/evaluators``)."""
    return cache_dir("evaluators")


# --------------------------------------------------------------------------- training


def build_evaluator(
    train: Dataset,
    test: Dataset,
    recipe: dict = RECIPE,
    device: str = "cpu",
    progress: bool = True,
    data: str | None = None,
) -> Evaluator:
    """Train the evaluator ``recipe`` describes on ``train`` and measure it on ``test``: a
    classifier of the labels, or for a recipe with a "pretext" (`recipe_for` of data without
    labels) a self-supervised feature network with k-means pseudo-classes. Seeded, on the
    recipe's thread count whatever the caller's, which it gets back afterwards."""
    self_supervised = "pretext" in recipe
    if not self_supervised and (train.labels is None or test.labels is None):
        raise DataError(
            f"{train.name} has no labels, so gankit cannot train a classifier evaluator on "
            "it: build a self-supervised one (get_evaluator and open_evaluation do for data "
            "without labels; here: recipe_for(shape, labelled=False)), or pass --evaluator "
            "FILE, an evaluator built on images of the same kind"
        )
    if self_supervised:
        if len(train) < recipe["clusters"]:
            raise DataError(
                f"{train.name}: {len(train)} images are too few for {recipe['clusters']} "
                "pseudo-classes; use more images"
            )
        with _held_threads(recipe["threads"]) as hold:
            net, facts = _train_self_supervised(train, test, recipe, device, progress, hold)
    else:
        num_classes = max(train.num_classes or 0, test.num_classes or 0)
        if num_classes < 2:
            raise DataError(
                f"{train.name}: an evaluator needs at least 2 classes, found {num_classes}"
            )
        with _held_threads(recipe["threads"]) as hold:
            net, accuracy = _train(train, test, recipe, num_classes, device, progress, hold)
        facts = {"test_accuracy": accuracy, "classes": train.classes}
    prints = (fingerprint(train), fingerprint(test))
    # no timings or paths: the same data and recipe give the same file contents
    net.info = {
        "data": data or train.source,
        "key": evaluator_key(train, test, recipe, prints),
        "recipe": recipe,
        **{k: v for k, v in facts.items() if k != "classes"},
        "train": train.name,
        "test": test.name,
        "n_train": len(train),
        "n_test": len(test),
        "classes": facts["classes"],
        "train_fingerprint": prints[0],
        "test_fingerprint": prints[1],
    }
    return net


@contextmanager
def _held_threads(threads: int) -> Iterator[Callable[[], None]]:
    """Run the block on ``threads`` intra-op threads; it calls the yielded function before
    every step to undo a change from elsewhere (the CPU governor, a callback, another thread
    where torch's count is process-wide). The caller's count is restored on exit."""
    caller = torch.get_num_threads()  # also fixes this thread's own count from here on

    def hold() -> None:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)

    hold()
    try:
        yield hold
    finally:
        torch.set_num_threads(caller)


def _train(
    train: Dataset,
    test: Dataset,
    recipe: dict,
    num_classes: int,
    device: str,
    progress: bool,
    hold: Callable[[], None],
) -> tuple[Evaluator, float]:
    """The recipe's training run: (network in eval mode, its test accuracy)."""
    torch.manual_seed(recipe["seed"])
    x = train.images.float().div_(255.0)
    mean, std = x.mean().item(), x.std().item()
    net = Evaluator(recipe["layers"], tuple(train.images.shape[1:]), num_classes, mean, std)
    net.to(device).train()
    x = ((x - mean) / std).to(device)  # (N, C, H, W) standardised, resident
    y = train.labels.to(device)
    bs = min(recipe["batch_size"], len(x))
    per_epoch = len(x) // bs
    epochs = max(recipe["epochs"], math.ceil(recipe.get("min_steps", 0) / per_epoch))
    opt = torch.optim.Adam(net.parameters(), recipe["max_lr"], foreach=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, recipe["max_lr"], total_steps=epochs * per_epoch
    )
    gen = torch.Generator().manual_seed(recipe["seed"])
    started = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen).to(device)
        for i in range(per_epoch):
            hold()
            idx = order[i * bs : (i + 1) * bs]
            loss = F.cross_entropy(net(x[idx])[1], y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        hold()
        if progress or epoch == epochs - 1:
            accuracy = _accuracy(net, test)
        if progress:
            notice(
                f"evaluator epoch {epoch + 1}/{epochs}: test accuracy "
                f"{accuracy:.2%} ({time.perf_counter() - started:.0f} s)"
            )
    return net.eval(), accuracy


def _train_self_supervised(
    train: Dataset,
    test: Dataset,
    recipe: dict,
    device: str,
    progress: bool,
    hold: Callable[[], None],
) -> tuple[Evaluator, dict]:
    """The self-supervised recipe: the pretext task trains the body, k-means of the
    training features makes the pseudo-classes, a linear head on the frozen features learns
    them. (network in eval mode, facts for its info)."""
    torch.manual_seed(recipe["seed"])
    mean, std = _moments(train.images)
    k = recipe["clusters"]
    net = Evaluator(recipe["layers"], tuple(train.images.shape[1:]), k, mean, std).to(device)
    pretext = PRETEXTS[recipe["pretext"]](net.feature_dim, recipe).to(device)
    done = train_pretext(net.body, pretext, train.images, net.normalise, recipe, hold, progress)
    hold()
    features = net.embed(train.images)[0].clone()  # (N, F), out of inference mode
    white = whitening(features, recipe["cluster_dims"])  # (F,), (d, F)
    centres, clusters = kmeans(
        whiten(features, *white), k, recipe["seed"], recipe["kmeans_restarts"]
    )
    hold()
    fit = fit_head(net.head, features, clusters, *white, steps=recipe["head_steps"])
    test_features, probs = net.embed(test.images)
    agree = probs.argmax(1).cpu() == nearest_centre(whiten(test_features, *white), centres).cpu()
    if progress:
        notice(
            f"evaluator: {recipe['pretext']} pretext trained in {done['seconds']:.0f} s, "
            f"{k} clusters, the head agrees with them on {agree.float().mean():.1%} of the "
            "test images"
        )
    return net.eval(), {
        "kind": f"self-supervised ({recipe['pretext']})",
        "pretext_loss": done["pretext_loss"],
        "head_agreement": agree.float().mean().item(),  # on the test split
        "head_train_agreement": fit,
        "cluster_sizes": torch.bincount(clusters, minlength=k).tolist(),
        "classes": [f"cluster {i}" for i in range(k)],
    }


def _moments(images: Tensor, chunk: int = 4096) -> tuple[float, float]:
    """Mean and std of uint8 images scaled to [0, 1], over every pixel (in float64
    chunks, so no float copy of the whole set is made)."""
    total = squares = 0.0
    for i in range(0, len(images), chunk):
        x = images[i : i + chunk].double().div_(255.0)
        total += float(x.sum())
        squares += float(x.square().sum())
    n = images.numel()
    mean = total / n
    return mean, math.sqrt(max(squares / n - mean * mean, 0.0) * n / max(n - 1, 1))


def _accuracy(net: Evaluator, data: Dataset) -> float:
    _, probs = net.embed(data.images)
    return (probs.argmax(1).cpu() == data.labels).float().mean().item()


# --------------------------------------------------------------------------- files

# Where a loaded evaluator came from: set on load, never written into its file.
_LOCAL = ("file", "origin", "sha256")


class EvaluatorFileError(CheckpointError):
    """An evaluator file that cannot be used; ``reason`` says why."""

    def __init__(self, path: Path, reason: str):
        super().__init__(
            f"{path} is not a usable gankit evaluator file: {reason}; build one "
            "with `gankit evaluator build DATA --out FILE`"
        )
        self.path, self.reason = path, reason


def save_evaluator(net: Evaluator, path: str | os.PathLike) -> Path:
    """Write an evaluator as one checksummed safetensors file (weights + JSON description);
    a failed write is a StorageError naming the file, and leaves any previous one intact."""
    meta = {
        "kind": "gankit-evaluator",
        "layers": net.layers,
        "image_shape": list(net.image_shape),
        "num_classes": net.num_classes,
        "info": {k: v for k, v in net.info.items() if k not in _LOCAL},
    }
    return checkpoint.save_checkpoint(path, net.state_dict(), meta)


def load_evaluator(path: str | os.PathLike, device: str | torch.device = "cpu") -> Evaluator:
    """Load an evaluator file written by :func:`save_evaluator` (checksums verified); its
    ``info`` gains the file, its SHA-256 and its origin ("shipped" when its bytes are those
    of an evaluator gankit ships, else "built here")."""
    path = Path(path)
    try:
        digest = _sha256(path)
        tensors, meta = checkpoint.load_checkpoint(path, device="cpu")
    except OSError as err:
        raise CheckpointError(
            f"cannot read the evaluator file {path} ({err.strerror}): check "
            "the path, or build one with `gankit evaluator build DATA --out "
            "FILE`"
        ) from None
    except CheckpointError as err:
        raise EvaluatorFileError(path, _reason(err, path)) from None
    if meta.get("kind") != "gankit-evaluator":
        raise EvaluatorFileError(
            path, f"it holds {meta.get('kind', 'a training checkpoint')}, not an evaluator"
        )
    net = Evaluator(
        meta["layers"], tuple(meta["image_shape"]), meta["num_classes"], info=meta["info"]
    )
    try:
        net.load_state_dict(tensors)
    except RuntimeError as err:
        raise EvaluatorFileError(
            path, f"the weights do not match the layers it describes ({str(err).splitlines()[0]})"
        ) from None
    shipped = any(digest == sha for _, sha in SHIPPED.values())
    net.info |= {
        "file": str(path),
        "origin": "shipped" if shipped else "built here",
        "sha256": digest,
    }
    return net.to(device).eval()


def shipped_evaluator(
    key: str, device: str | torch.device = "cpu", folder: str | os.PathLike | None = None
) -> Evaluator:
    """The evaluator gankit ships for ``key`` (from ``folder``, default the package's), its
    bytes checked against the SHA-256 it shipped with."""
    name, expected = SHIPPED[key]
    path = Path(folder or SHIPPED_DIR) / name
    try:
        digest = _sha256(path)
    except OSError as err:
        raise CheckpointError(
            f"gankit's shipped evaluator {path} cannot be read "
            f"({err.strerror}): the installation is incomplete; reinstall "
            "gankit (e.g. pip install --force-reinstall gankit)"
        ) from None
    if digest != expected:
        raise CheckpointError(
            f"gankit's shipped evaluator {path} is damaged: its SHA-256 is "
            f"{digest[:16]}…, not the {expected[:16]}… it shipped with; "
            "reinstall gankit (e.g. pip install --force-reinstall gankit)"
        )
    return load_evaluator(path, device)


def evaluator_path(data: str, key: str, image_size: int = 28) -> Path:
    """Where the evaluator of ``data`` with ``key`` is cached."""
    return evaluator_cache() / f"{_slug(data)}-{image_size}-{key}.safetensors"


def get_evaluator(
    data: str,
    data_dir: str | None = None,
    image_size: int = 28,
    device: str | torch.device = "cpu",
    rebuild: bool = False,
    progress: bool = True,
    splits: tuple[Dataset, Dataset] | None = None,
    recipe: dict | None = None,
    channels: int = 0,
) -> Evaluator:
    """The evaluator of a data set: the one gankit ships when data and recipe are those it
    was built from, else the cached one, trained first if there is none (or ``rebuild``).
    ``recipe`` defaults to `recipe_for` the images: a classifier sized for their shape, or a
    self-supervised network when the data has no labels. Processes that need the same
    evaluator take turns: the second loads the first's file."""
    train, test = splits or load_splits(data, data_dir, image_size, channels)
    if recipe is None:
        labelled = train.labels is not None and test.labels is not None
        recipe = recipe_for(tuple(train.images.shape[1:]), labelled)
    key = evaluator_key(train, test, recipe)
    if key in SHIPPED and not rebuild:
        return shipped_evaluator(key, device)
    path = evaluator_path(data, key, int(train.images.shape[-1]))
    net = _load_cached(path, device) if not rebuild else None
    if net is not None:
        return net
    with cache_entry(path, f"builds the {data} evaluator") as waited:
        net = _load_cached(path, device) if waited else None  # the other process's
        if net is not None:
            return net
        if progress:
            kind = f"self-supervised ({recipe['pretext']}) " if "pretext" in recipe else ""
            notice(
                f"building the {data} {kind}evaluator on {len(train)} training images "
                f"(once; cached as {path})"
            )
        net = build_evaluator(train, test, recipe, str(device), progress, data)
        net.info["origin"] = "built here"
        if _write_cache(lambda: save_evaluator(net, path), path, "the evaluator"):
            net.info |= {"file": str(path), "sha256": _sha256(path)}
    return net


def _load_cached(path: Path, device: str | torch.device) -> Evaluator | None:
    """The cached evaluator at ``path``; None if there is none, or (saying so) a damaged one."""
    if not path.exists():
        return None
    try:
        return load_evaluator(path, device)
    except EvaluatorFileError as err:
        warn(f"the cached evaluator file {path} is damaged ({err.reason}): rebuilding it")
        return None


def describe(net: Evaluator) -> dict:
    """The facts that make a metric reproducible: which evaluator (shipped or built here,
    which file), its kind ("classifier" or "self-supervised (PRETEXT)"), its accuracy (or
    its cluster head's agreement with the clusters), data and class names."""
    keep = (
        "data",
        "key",
        "origin",
        "file",
        "sha256",
        "test_accuracy",
        "head_agreement",
        "train",
        "test",
        "n_train",
        "n_test",
        "classes",
    )
    facts = {k: net.info[k] for k in keep if k in net.info}
    return {"kind": net.kind} | facts | {"feature_dim": net.feature_dim}


# --------------------------------------------------------------------------- the cache


@contextmanager
def cache_entry(path: Path, doing: str) -> Iterator[bool]:
    """Hold the lock of one cache file, after deleting what a killed writer left of it;
    yields whether it waited for another process that held it (``doing`` says what that one
    does, in the one line this prints then). A cache where no lock can be made (read-only,
    full) is used without one: writing to it will warn."""
    lock = FolderLock(path.parent, f".{path.name}.lock", f"the lock of {path.name}")
    waited = False
    try:
        try:
            lock.acquire()
        except FolderBusy as busy:
            notice(
                f"another process {doing} ({describe_holder(busy.holder)}); "
                f"this one goes on with its {path.name} when it is done",
                "waiting",
            )
            waited = True
            lock.acquire(wait=BUILD_WAIT)
    except (StorageError, OSError):
        pass  # no lock file can be made here: go on without one
    try:
        if lock.held:
            remove_temporaries(path.parent, of=path.name)
        yield waited
    finally:
        lock.release()


_WARNED: set[str] = set()  # cache files whose failed write was reported (once a process)


def _write_cache(write: Callable[[], object], path: Path, what: str) -> bool:
    """Write one cache file; a full disk or read-only cache is a warning, once per file, as
    the caller goes on with what it holds in memory. Whether it was written."""
    try:
        write()
        return True
    except (StorageError, OSError) as err:
        if not isinstance(err, StorageError):
            err = storage_error(path, err)
        if str(path) not in _WARNED:
            _WARNED.add(str(path))
            warn(
                f"{err}. Going on with {what} in memory: it is not cached, "
                "so the next run computes it again"
            )
        return False


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _reason(err: CheckpointError, path: Path) -> str:
    """What a checkpoint error says is wrong with ``path``, without its advice about runs."""
    text = str(err).removeprefix(f"{path} ").removeprefix("is not a usable gankit checkpoint: ")
    text = re.split(r"\. The file is corrupt|; (?:this file|delete|check|upgrade)", text)[0]
    return "it " + text if text.startswith(("is ", "uses ")) else text


@dataclass
class RealFeatures:
    """Evaluator outputs on one real split: features, predicted classes and true labels."""

    name: str  # e.g. "fashion-mnist:test"
    features: Tensor  # (N, F) float32
    predicted: Tensor  # (N,) int64
    labels: Tensor | None  # (N,) int64


def real_features(net: Evaluator, data: Dataset, cache: bool = True) -> RealFeatures:
    """The evaluator's features of real images, cached beside the evaluator under the
    digests of its weights and of the images (a full disk only costs the cache)."""
    if not cache:
        return _embed(net, data)
    path = (
        evaluator_cache() / f"features-{weights_digest(net)}-{fingerprint(data)[:16]}.safetensors"
    )
    found = _load_features(path, net.mean.device)
    if found is not None:
        return found
    with cache_entry(path, f"computes the evaluator features of {data.name}") as waited:
        found = _load_features(path, net.mean.device) if waited else None
        if found is not None:
            return found  # the other process's
        out = _embed(net, data)
        tensors = {"features": out.features, "predicted": out.predicted}
        if out.labels is not None:
            tensors["labels"] = out.labels
        _write_cache(
            lambda: checkpoint.save_checkpoint(path, tensors, {"name": data.name}),
            path,
            f"the features of {data.name}",
        )
    return out


def weights_digest(net: Evaluator) -> str:
    """16 hex digits of SHA-256 over the evaluator's weights (two builds under one key may
    differ in rounding, so cached features are keyed by this, not by the key)."""
    h = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


def _embed(net: Evaluator, data: Dataset) -> RealFeatures:
    features, probs = net.embed(data.images)
    labels = data.labels.to(net.mean.device) if data.labels is not None else None
    return RealFeatures(data.name, features, probs.argmax(1), labels)


def _load_features(path: Path, device: torch.device) -> RealFeatures | None:
    """Cached features; None if there are none or the file is unusable (computed again)."""
    if not path.exists():
        return None
    try:
        tensors, meta = checkpoint.load_checkpoint(path, device=str(device))
    except CheckpointError:
        return None
    return RealFeatures(
        meta["name"], tensors["features"], tensors["predicted"], tensors.get("labels")
    )
