"""`gankit train --resume RUN` with options: each one a user may change takes effect (seen in
the run folder), every other one is refused by name before anything is loaded."""

from __future__ import annotations

import shutil

import pytest

import gankit
from gankit.cli import main
from gankit.config import RESUMABLE, TrainConfig, load_toml
from gankit.errors import ConfigError
from gankit.runs import read_metrics


def run(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture
def copy(trained, tmp_path):
    folder = tmp_path / "run"
    shutil.copytree(trained, folder)
    return folder


def saved(folder) -> dict:
    return load_toml(folder / "config.toml")["train"]


def names(folder, sub: str) -> list[str]:
    return sorted(p.name for p in (folder / sub).iterdir())


def test_every_resumable_option_is_a_train_setting():
    fields = set(TrainConfig.__dataclass_fields__)
    assert set(RESUMABLE) <= fields
    assert {"batch_size", "seed", "data", "epochs", "eval_samples", "evaluator"} & set(
        RESUMABLE
    ) == set()


def test_new_cadences_take_effect(copy):
    assert (
        run(
            "train",
            "--resume",
            copy,
            "--steps",
            30,
            "--log-every",
            2,
            "--sample-every",
            4,
            "--checkpoint-every",
            4,
            "--no-progress",
        )
        == 0
    )
    assert [r["step"] for r in read_metrics(copy)] == [5, 10, 15, 20, 22, 24, 26, 28, 30]
    assert names(copy, "samples")[-4:] == [
        "step-00000020.png",
        "step-00000024.png",
        "step-00000028.png",
        "step-00000030.png",
    ]
    assert names(copy, "checkpoints") == [
        "step-00000024.safetensors",
        "step-00000028.safetensors",
        "step-00000030.safetensors",
    ]
    train = saved(copy)
    assert (train["log_every"], train["sample_every"], train["checkpoint_every"]) == (2, 4, 4)


def test_evaluation_can_start_on_resume(copy):
    assert (
        run(
            "train",
            "--resume",
            copy,
            "--steps",
            24,
            "--eval-every",
            2,
            "--no-progress",
            "--set",
            "eval_samples=200",
        )
        == 2
    )  # eval_samples is not for a resumed run
    assert run("train", "--resume", copy, "--steps", 24, "--eval-every", 2, "--no-progress") == 0
    evals = [r["step"] for r in read_metrics(copy) if "eval/fid" in r]
    assert evals == [22, 24] and (copy / "checkpoints" / "best.safetensors").is_file()


def test_moved_data_is_looked_for_where_data_dir_says(copy, tmp_path, data_dir, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run("train", "--resume", copy, "--steps", 22, "--data-dir", empty, "--no-progress") == 2
    assert str(empty / "fashion-mnist") in capsys.readouterr().err
    moved = tmp_path / "moved"
    shutil.copytree(data_dir / "fashion-mnist", moved / "fashion-mnist")
    assert run("train", "--resume", copy, "--steps", 22, "--data-dir", moved, "--no-progress") == 0
    assert saved(copy)["data_dir"] == str(moved)


def test_device_time_budget_and_divergence_policy_take_effect(copy, capsys):
    assert (
        run(
            "train",
            "--resume",
            copy,
            "--steps",
            10_000,
            "--max-seconds",
            0.5,
            "--device",
            "cpu",
            "--on-divergence",
            "rollback",
            "--no-progress",
        )
        == 0
    )
    assert "time budget of 0.5 s used" in capsys.readouterr().out
    train = saved(copy)
    assert (train["device"], train["max_seconds"], train["on_divergence"]) == (
        "cpu",
        0.5,
        "rollback",
    )
    assert train["steps"] == 10_000


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--batch-size", 8], "--batch-size"),
        (["--lr", 0.1], "--lr"),
        (["--lr-d", 0.1], "--lr-d"),
        (["--seed", 3], "--seed"),
        (["--data", "mnist"], "--data"),
        (["--epochs", 2], "--epochs"),
        (["--eval-samples", 100], "--eval-samples"),
        (["--evaluator", "x.safetensors"], "--evaluator"),
        (["--set", "n_critic=3"], "--set n_critic=3"),
        (["--set", "model.latent.dim=8"], "--set model.latent.dim=8"),
        (["--config", "x.toml"], "--config"),
        (["--out", "elsewhere"], "--out"),
        (["gan"], "the model 'gan'"),
    ],
)
def test_what_would_change_the_run_is_refused_by_name(trained, argv, named, capsys):
    before = sorted(p.name for p in trained.rglob("*"))
    assert run("train", "--resume", trained, *argv, "--no-progress") == 2
    error = capsys.readouterr().err
    assert error.startswith(f"gankit: error: {named}: ") or f"error: {named}:" in error, error
    assert sorted(p.name for p in trained.rglob("*")) == before  # nothing written


def test_set_takes_a_resumable_key(copy):
    assert (
        run("train", "--resume", copy, "--steps", 24, "--set", "log_every=1", "--no-progress") == 0
    )
    assert [r["step"] for r in read_metrics(copy)][-4:] == [21, 22, 23, 24]


def test_dry_run_shows_the_config_a_resume_would_use(trained, capsys):
    assert run("train", "--resume", trained, "--log-every", 7, "--dry-run") == 0
    assert "log_every = 7" in capsys.readouterr().out
    assert saved(trained)["log_every"] == 5  # the run itself is untouched


def test_the_api_resumes_with_the_same_rules(copy):
    with pytest.raises(ConfigError, match="batch_size: a resumed run keeps"):
        gankit.resume(copy, batch_size=8, progress=False)
    run_ = gankit.resume(copy, steps=24, log_every=4, progress=False)
    assert run_.step == 24 and [r["step"] for r in read_metrics(copy)][-1] == 24
    assert saved(copy)["log_every"] == 4
