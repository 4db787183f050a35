"""Shared fixtures. Tests never touch the network or the user's cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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
