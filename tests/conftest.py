"""Shared fixtures. Tests never touch the network or the user's cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from gankit.training import Callback

REPO = Path(__file__).resolve().parents[1]


def _absolute_data_dir() -> Path:
    """$GANKIT_DATA made absolute once, here, and put back in the environment: tests start
    gankit in other working directories (torchrun, sweep workers), where a relative path
    such as the README's ``../shared/data`` would point elsewhere."""
    path = Path(os.environ.get("GANKIT_DATA") or REPO.parent / "shared" / "data").resolve()
    os.environ["GANKIT_DATA"] = str(path)
    return path


DATA_DIR = _absolute_data_dir()


def real_data_dir() -> Path:
    """The real IDX files: $GANKIT_DATA, else ../shared/data beside the repository."""
    path = DATA_DIR
    if not (path / "fashion-mnist" / "train-images-idx3-ubyte.gz").exists():
        pytest.fail(
            f"real test data not found in {path}: set GANKIT_DATA to the folder "
            "holding fashion-mnist/ and mnist/ (CI uses ../shared/data)"
        )
    return path


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path_factory):
    """Offline, with a private cache, a fixed thread count and deterministic torch."""
    monkeypatch.setenv("GANKIT_OFFLINE", "1")
    monkeypatch.setenv("GANKIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return real_data_dir()


@pytest.fixture(scope="session")
def fashion(data_dir):
    """Fashion-MNIST train split, loaded once for the session."""
    from gankit.data import load_dataset

    return load_dataset("fashion-mnist", "train", data_dir)


@pytest.fixture
def tiny_data():
    """256 random labelled 28×28 images: for tests about mechanics, not learning."""
    from gankit.data import Dataset

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (256, 1, 28, 28), generator=gen, dtype=torch.uint8)
    labels = torch.arange(256) % 10
    return Dataset(images, labels, "tiny", [str(i) for i in range(10)])


@pytest.fixture(scope="session")
def evaluation(data_dir, tmp_path_factory):
    """gankit's Fashion-MNIST evaluation on the evaluator shipped in the package (the real
    data's key is the shipped one's: test_evaluator_files asserts it), with the real features
    computed once in the session's private cache."""
    from gankit.evaluation import open_evaluation

    with pytest.MonkeyPatch.context() as mp:  # session fixtures run before the autouse one
        mp.setenv("GANKIT_OFFLINE", "1")
        mp.setenv("GANKIT_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        torch.set_num_threads(2)
        return open_evaluation("fashion-mnist", str(data_dir), progress=False)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, data_dir):
    """gan-002 trained 20 steps on Fashion-MNIST through the CLI: log every 5, grids and
    checkpoints every 10. Tests read it; one that changes a run works on a copy."""
    out = tmp_path_factory.mktemp("cli") / "run"
    argv = ["train", "gan-002", "--data", "fashion-mnist", "--data-dir", data_dir,
            "--steps", 20, "--batch-size", 32, "--log-every", 5, "--sample-every", 10,
            "--checkpoint-every", 10, "--out", out, "--no-progress"]  # fmt: skip
    from gankit.cli import main

    assert main([str(a) for a in argv]) == 0
    return out


# --------------------------------------------------------------------------- report runs
# Short real runs of every kind a report page must show (tests/test_report*.py).


def _train(root: Path, name: str, model: str, fashion, evaluation, callbacks=(), **overrides):
    import gankit
    from gankit.api import launch

    settings = dict(
        batch_size=16, log_every=5, sample_every=10, checkpoint_every=10, eval_samples=200
    )
    config = gankit.configure(model, **(settings | overrides))
    trainer = launch(
        config,
        out=root / name,
        data=fashion.subset(2000),
        callbacks=callbacks,
        progress=False,
        evaluation=evaluation if config.train.eval_every else None,
    )
    return trainer


class Poison(Callback):
    """Fills one weight of ``net`` (a network's name, or "ema") with NaN when the training
    row of step ``at`` is logged, at most ``times`` times: the run diverges there."""

    def __init__(self, at: int, net: str = "discriminator", times: int = 1):
        self.at, self.net, self.left = at, net, times

    def on_row(self, trainer, row):
        if row["step"] == self.at and "loss/D" in row and self.left > 0:
            self.left -= 1
            model = trainer.model
            module = model.ema if self.net == "ema" else model.nets[self.net]
            with torch.no_grad():
                next(module.parameters()).fill_(float("nan"))


class _PageAtEachEvaluation(Callback):
    """What report.html says right after each evaluation row (it runs after RefreshReport)."""

    def __init__(self):
        self.pages: dict[int, str] = {}

    def on_row(self, trainer, row):
        if "eval/fid" in row:
            self.pages[row["step"]] = (trainer.run_dir / "report.html").read_text()


@pytest.fixture(scope="session")
def report_runs(tmp_path_factory, fashion, evaluation):
    """Short real runs of every kind a page must show, trained once for the session."""
    from gankit.report import write_run_report
    from gankit.training import TrainingDiverged

    root = tmp_path_factory.mktemp("report-runs")
    runs: dict[str, Path] = {}
    watcher = _PageAtEachEvaluation()
    trainer = _train(
        root, "dcgan", "dcgan", fashion, evaluation, [watcher], steps=30, eval_every=10
    )
    trainer.fit()
    runs["dcgan"], runs["watcher"] = trainer.run_dir, watcher
    runs["cgan"] = _fit(_train(root, "cgan", "cgan", fashion, evaluation, steps=20, eval_every=10))
    runs["ae"] = _fit(_train(root, "ae", "ae", fashion, evaluation, steps=20, sample_every=20))
    runs["stopped"] = _fit(
        _train(root, "stopped", "gan-002", fashion, evaluation, steps=5000, max_seconds=0.05)
    )
    diverging = _train(root, "diverged", "gan-002", fashion, evaluation, [Poison(15)], steps=40)
    with pytest.raises(TrainingDiverged):
        diverging.fit()
    runs["diverged"] = diverging.run_dir
    damaged = root / "damaged"
    shutil.copytree(runs["dcgan"], damaged)
    with open(damaged / "metrics.jsonl", "a") as f:
        f.write('{"step": 31, "loss/D": 0.')  # torn by a kill
    shutil.rmtree(damaged / "samples")
    write_run_report(damaged)
    runs["damaged"] = damaged
    return runs


def _fit(trainer) -> Path:
    trainer.fit()
    return trainer.run_dir


# --------------------------------------------------------------------------- colour data
# Real colour images are not on this machine: Fashion-MNIST garments, each tinted with its
# class's colour on a background of another class-dependent colour, padded to 32×32. The
# labels are known and the colour carries class information, as in a real colour set.

GARMENT_RGB = torch.tensor(
    [[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
     [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]],
    dtype=torch.float32,
)  # fmt: skip
BACKGROUND_RGB = torch.tensor(
    [[20, 20, 60], [60, 20, 20], [20, 60, 20], [50, 50, 50], [10, 40, 70],
     [70, 40, 10], [40, 10, 70], [10, 70, 40], [30, 30, 10], [0, 0, 0]],
    dtype=torch.float32,
)  # fmt: skip


def tint(images: torch.Tensor, labels: torch.Tensor, size: int = 32, seed: int = 0):
    """uint8 (N, 1, 28, 28) garments → uint8 (N, 3, size, size): the garment's intensity
    blends a background colour (by label, shifted) into its class colour, each jittered a
    little per image (seeded), centred on a canvas of ``size`` (>= 28)."""
    gen = torch.Generator().manual_seed(seed)
    n = len(images)
    pad = (size - 28) // 2
    mask = torch.zeros(n, 1, size, size)
    mask[:, :, pad : pad + 28, pad : pad + 28] = images.float() / 255.0
    jitter = 1.0 + 0.15 * (torch.rand(n, 1, generator=gen) - 0.5)  # brightness ± 7.5%
    fg = (GARMENT_RGB[labels] * jitter).clamp(0, 255)[:, :, None, None]  # (N, 3, 1, 1)
    bg = BACKGROUND_RGB[(labels + 3) % 10][:, :, None, None]
    rgb = bg * (1 - mask) + fg * mask
    return rgb.round().clamp(0, 255).to(torch.uint8)


def tinted_dataset(source, n: int, size: int = 32, seed: int = 0, name: str = "tinted"):
    """The first ``n`` items of a Fashion-MNIST Dataset, tinted (see :func:`tint`)."""
    from gankit.data import Dataset

    part = source.subset(n)
    images = tint(part.images, part.labels, size, seed)
    return Dataset(images, part.labels, name, list(source.classes or []) or None)


@pytest.fixture(scope="session")
def tinted(fashion):
    """6,000 tinted Fashion-MNIST training garments, (N, 3, 32, 32) uint8, with labels."""
    return tinted_dataset(fashion, 6000)
