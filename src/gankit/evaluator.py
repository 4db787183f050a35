"""The evaluator: a small CNN classifier per data set whose penultimate layer is the feature
space of every metric (FID, KID, precision/recall, …) and whose class probabilities give
the classifier score and mode coverage.

Inception features computed on 28×28 digits upscaled to 299×299 RGB say little about digits
and need weights from the internet. gankit instead trains its own feature network on the real
training split, the first time a data set is evaluated (under a minute on two CPU cores
for Fashion-MNIST), and caches it under a key made of the data's content hash and the
training recipe: the same data always gives the same evaluator, changed data a new one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gankit import checkpoint
from gankit.data import Dataset, cache_dir, load_dataset
from gankit.errors import CheckpointError, DataError
from gankit.nets import build_body

# How gankit trains an evaluator. Any change to it changes every cache key.
RECIPE: dict = {
    "version": 1,
    "layers": ["conv 32 k5 s2 p2", "bn", "relu",  # 14×14
               "conv 64 k3 s2 p1", "bn", "relu",  # 7×7
               "flatten", "fc 128", "relu"],  # → 128 features
    "epochs": 5,
    "min_steps": 2000,  # small sets get more epochs, up to this many updates
    "batch_size": 128,
    "max_lr": 3e-3,  # one-cycle schedule over the whole run (Adam)
    "seed": 0,
}


class Evaluator(nn.Module):
    """Feature network + linear classifier head; inputs are uint8 images (N, C, H, W)."""

    def __init__(self, layers: list[str], image_shape: tuple[int, int, int], num_classes: int,
                 mean: float = 0.0, std: float = 1.0, info: dict | None = None):
        super().__init__()
        self.body, shape = build_body(layers, image_shape)
        if len(shape) != 1:
            raise DataError(f"evaluator layers end in shape {shape}; they must end flat "
                            "(e.g. '... flatten, fc 128, relu')")
        self.head = nn.Linear(shape[0], num_classes)
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))
        self.layers, self.image_shape, self.num_classes = list(layers), image_shape, num_classes
        self.info: dict = dict(info or {})

    @property
    def feature_dim(self) -> int:
        return self.head.in_features

    @property
    def name(self) -> str:
        """A short identifier for reports: data set, key and test accuracy."""
        acc = self.info.get("test_accuracy")
        text = f"{self.info.get('data', 'custom')} evaluator {self.info.get('key', '?')}"
        return text + (f" (test accuracy {acc:.2%})" if acc is not None else "")

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
            raise DataError(f"the evaluator takes images of shape {tuple(self.image_shape)}, got "
                            f"{tuple(images.shape[1:])}: evaluate with an evaluator built for "
                            "this image size")
        was_training = self.training
        self.eval()
        device = self.mean.device
        feats, probs = [], []
        for i in range(0, len(images), batch_size):
            h, logits = self(self.normalise(images[i:i + batch_size].to(device)))
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


def load_splits(name: str, data_dir: str | None = None, image_size: int = 28
                ) -> tuple[Dataset, Dataset]:
    """(train, test) of a data set. A set without a test split (``npz:``, a plain folder) is
    split deterministically: every tenth image is held out as the test part."""
    if has_test_split(name):
        return (load_dataset(name, "train", data_dir, image_size),
                load_dataset(name, "test", data_dir, image_size))
    data = load_dataset(name, "train", data_dir, image_size)
    held = torch.arange(len(data)) % 10 == 9
    if held.sum() == 0:
        raise DataError(f"{data.name}: {len(data)} images are too few to hold any out for "
                        "testing an evaluator (need at least 10)")

    def part(mask: Tensor, split: str) -> Dataset:
        labels = data.labels[mask] if data.labels is not None else None
        return Dataset(data.images[mask], labels, f"{data.name}:{split}", data.classes)

    return part(~held, "train"), part(held, "test")


def evaluator_key(train: Dataset, test: Dataset, recipe: dict = RECIPE,
                  prints: tuple[str, str] | None = None) -> str:
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


def build_evaluator(train: Dataset, test: Dataset, recipe: dict = RECIPE, device: str = "cpu",
                    progress: bool = True, data: str | None = None) -> Evaluator:
    """Train an evaluator on ``train`` and measure its accuracy on ``test`` (seeded)."""
    if train.labels is None or test.labels is None:
        raise DataError(f"{train.name} has no labels, so gankit cannot train an evaluator on it: "
                        "pass --evaluator FILE, an evaluator built on labelled images of the same "
                        "kind (e.g. `gankit evaluator build fashion-mnist --out FILE`)")
    num_classes = max(train.num_classes or 0, test.num_classes or 0)
    if num_classes < 2:
        raise DataError(f"{train.name}: an evaluator needs at least 2 classes, found "
                        f"{num_classes}")
    prints = (fingerprint(train), fingerprint(test))
    key = evaluator_key(train, test, recipe, prints)
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
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe["max_lr"],
                                                total_steps=epochs * per_epoch)
    gen = torch.Generator().manual_seed(recipe["seed"])
    started = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=gen).to(device)
        for i in range(per_epoch):
            idx = order[i * bs:(i + 1) * bs]
            loss = F.cross_entropy(net(x[idx])[1], y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        if progress or epoch == epochs - 1:
            accuracy = _accuracy(net, test)
        if progress:
            print(f"  evaluator epoch {epoch + 1}/{epochs}: test accuracy "
                  f"{accuracy:.2%} ({time.perf_counter() - started:.0f} s)", file=sys.stderr,
                  flush=True)
    net.eval()
    net.info = {"data": data or train.name.split(":")[0], "key": key, "recipe": recipe,
                "test_accuracy": accuracy, "train": train.name, "test": test.name,
                "n_train": len(train), "n_test": len(test), "classes": train.classes,
                "train_fingerprint": prints[0], "test_fingerprint": prints[1],
                "build_seconds": round(time.perf_counter() - started, 1)}
    return net


def _accuracy(net: Evaluator, data: Dataset) -> float:
    _, probs = net.embed(data.images)
    return (probs.argmax(1).cpu() == data.labels).float().mean().item()


# --------------------------------------------------------------------------- files


def save_evaluator(net: Evaluator, path: str | os.PathLike) -> Path:
    """Write an evaluator as one checksummed safetensors file (weights + JSON description)."""
    meta = {"kind": "gankit-evaluator", "layers": net.layers,
            "image_shape": list(net.image_shape), "num_classes": net.num_classes,
            "info": net.info}
    return checkpoint.save_checkpoint(path, net.state_dict(), meta)


def load_evaluator(path: str | os.PathLike, device: str | torch.device = "cpu") -> Evaluator:
    """Load an evaluator file written by :func:`save_evaluator` (checksums verified)."""
    tensors, meta = checkpoint.load_checkpoint(path, device="cpu")
    if meta.get("kind") != "gankit-evaluator":
        raise CheckpointError(f"{path} is not a gankit evaluator file (it holds "
                              f"{meta.get('kind', 'a training checkpoint')}); build one with "
                              "`gankit evaluator build DATA --out FILE`")
    net = Evaluator(meta["layers"], tuple(meta["image_shape"]), meta["num_classes"],
                    info=meta["info"])
    try:
        net.load_state_dict(tensors)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the weights do not match the layers it describes "
                              f"({str(err).splitlines()[0]})") from None
    net.info.setdefault("file", str(path))
    return net.to(device).eval()


def get_evaluator(data: str, data_dir: str | None = None, image_size: int = 28,
                  device: str | torch.device = "cpu", rebuild: bool = False,
                  progress: bool = True, splits: tuple[Dataset, Dataset] | None = None,
                  recipe: dict = RECIPE) -> Evaluator:
    """The cached evaluator of a data set, trained first if there is none (or ``rebuild``)."""
    train, test = splits or load_splits(data, data_dir, image_size)
    key = evaluator_key(train, test, recipe)
    path = evaluator_cache() / f"{_slug(data)}-{image_size}-{key}.safetensors"
    if path.exists() and not rebuild:
        try:
            return load_evaluator(path, device)
        except CheckpointError as err:
            if progress:
                print(f"rebuilding the evaluator: the cached one is unusable ({err})",
                      file=sys.stderr)
    if progress:
        print(f"building the {data} evaluator on {len(train)} training images (once; cached "
              f"as {path})", file=sys.stderr, flush=True)
    net = build_evaluator(train, test, recipe, str(device), progress, data)
    net.info["file"] = str(path)
    save_evaluator(net, path)
    return net


def describe(net: Evaluator) -> dict:
    """The facts that make a metric reproducible: which evaluator, its accuracy and data."""
    keep = ("data", "key", "test_accuracy", "train", "test", "n_train", "n_test", "file")
    return {k: net.info[k] for k in keep if k in net.info} | {"feature_dim": net.feature_dim}


@dataclass
class RealFeatures:
    """Evaluator outputs on one real split: features, predicted classes and true labels."""

    name: str  # e.g. "fashion-mnist:test"
    features: Tensor  # (N, F) float32
    predicted: Tensor  # (N,) int64
    labels: Tensor | None  # (N,) int64


def real_features(net: Evaluator, data: Dataset, cache: bool = True) -> RealFeatures:
    """The evaluator's features of real images, cached beside the evaluator by content hash."""
    device = net.mean.device
    path = None
    if cache and net.info.get("key"):
        digest = fingerprint(data)[:16]
        path = evaluator_cache() / f"features-{net.info['key']}-{digest}.safetensors"
        if path.exists():
            try:
                tensors, meta = checkpoint.load_checkpoint(path, device=str(device))
                return RealFeatures(meta["name"], tensors["features"], tensors["predicted"],
                                    tensors.get("labels"))
            except CheckpointError:
                pass  # recomputed and rewritten below
    features, probs = net.embed(data.images)
    labels = data.labels.to(device) if data.labels is not None else None
    out = RealFeatures(data.name, features, probs.argmax(1), labels)
    if path is not None:
        tensors = {"features": features, "predicted": out.predicted}
        if labels is not None:
            tensors["labels"] = labels
        checkpoint.save_checkpoint(path, tensors, {"name": data.name})
    return out
