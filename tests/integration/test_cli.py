"""The command line end to end: train → sample → resume → use the run; clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from gankit.cli import main
from gankit.runs import read_metrics


def run(*argv: str) -> int:
    return main([str(a) for a in argv])


def test_train_writes_a_complete_run_folder(trained):
    names = {p.name for p in trained.iterdir()}
    assert {
        "config.toml",
        "metrics.jsonl",
        "real.png",
        "samples",
        "checkpoints",
        "tensorboard",
    } <= names
    assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == [
        "step-00000010.safetensors",
        "step-00000020.safetensors",
    ]
    assert sorted(p.name for p in (trained / "samples").iterdir()) == [
        "step-00000000.png",
        "step-00000010.png",
        "step-00000020.png",
    ]
    assert [r["step"] for r in read_metrics(trained)] == [5, 10, 15, 20]
    assert any(
        p.name.startswith("events.out.tfevents") for p in (trained / "tensorboard").iterdir()
    )
    config = (trained / "config.toml").read_text()
    assert 'preset = "gan-002"' in config and "batch_size = 32" in config


def test_sample_to_npz_folder_and_grid(trained, tmp_path):
    npz = tmp_path / "s.npz"
    assert run("sample", trained, "--n", 50, "--out", npz, "--grid", tmp_path / "g.png") == 0
    with np.load(npz) as f:
        images = f["images"]
        assert images.shape == (50, 28, 28) and images.dtype == np.uint8
        assert "labels" not in f
    assert images.std() > 0
    again = tmp_path / "again.npz"
    run("sample", trained, "--n", 50, "--out", again)
    with np.load(again) as f:
        assert np.array_equal(f["images"], images)  # same seed, same images
    assert run("sample", trained, "--n", 5, "--out", str(tmp_path / "pngs") + "/") == 0
    assert len(list((tmp_path / "pngs").glob("*.png"))) == 5
    with Image.open(tmp_path / "g.png") as grid:
        assert grid.size[0] > 28


def test_resume_continues_the_step_count(trained, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(trained, copy)
    assert run("train", "--resume", copy, "--steps", 30, "--no-progress") == 0
    assert [r["step"] for r in read_metrics(copy)] == [5, 10, 15, 20, 25, 30]
    assert (copy / "checkpoints" / "step-00000030.safetensors").exists()
    assert (copy / "samples" / "step-00000030.png").exists()


def test_interpolate_writes_one_row_per_walk(trained, tmp_path):
    out = tmp_path / "walk.png"
    assert run("interpolate", trained, "--out", out, "--rows", 3, "--steps", 6) == 0
    with Image.open(out) as image:
        width, height = image.size
    assert width > height  # 6 images across, 3 down


def test_conditional_sampling_by_label(tmp_path, data_dir):
    out = tmp_path / "cgan"
    assert (
        run(
            "train",
            "cgan",
            "--data",
            "fashion-mnist",
            "--data-dir",
            data_dir,
            "--steps",
            3,
            "--batch-size",
            16,
            "--out",
            out,
            "--no-progress",
        )
        == 0
    )
    npz = tmp_path / "c.npz"
    assert run("sample", out, "--n", 12, "--label", 7, "--out", npz) == 0
    with np.load(npz) as f:
        assert f["images"].shape == (12, 28, 28)
        assert f["labels"].tolist() == [7] * 12
    assert run("sample", out, "--n", 3, "--label", 10, "--out", npz) == 2


def test_latent_plot_and_vae_manifold(tmp_path, data_dir):
    out = tmp_path / "vae"
    assert (
        run(
            "train",
            "vae",
            "--data",
            "fashion-mnist",
            "--data-dir",
            data_dir,
            "--steps",
            5,
            "--set",
            "latent.dim=2",
            "--out",
            out,
            "--no-progress",
        )
        == 0
    )
    plot = tmp_path / "codes.png"
    assert run("latent", out, "--out", plot, "--n", 500) == 0
    assert plot.exists() and (tmp_path / "codes-manifold.png").exists()


def test_errors_are_one_clear_line(tmp_path, capsys, trained):
    assert run("train", "dcgna", "--steps", 1) == 2
    assert "unknown model or preset 'dcgna'. Did you mean dcgan" in capsys.readouterr().err
    assert run("train", "gan", "--set", "n_critc=2", "--steps", 1) == 2
    assert "did you mean model.n_critic" in capsys.readouterr().err
    assert run("train", "gan", "--steps", 1, "--out", trained) == 2
    assert "already holds a run: pass --overwrite" in capsys.readouterr().err
    assert run("sample", tmp_path, "--out", tmp_path / "x.npz") == 2
    assert "no usable checkpoint" in capsys.readouterr().err
    assert run("train", "--resume", trained, "--lr", "0.1") == 2
    assert "--lr: a resumed run keeps the settings it was started with" in capsys.readouterr().err


def test_dry_run_prints_the_resolved_config(capsys):
    assert run("train", "wgan-gp", "--dry-run", "--lr-d", "3e-4", "--set", "n_critic=3") == 0
    text = capsys.readouterr().out
    assert "n_critic = 3" in text and "lr = 0.0003" in text and "gp_weight = 10.0" in text


@pytest.mark.slow
def test_console_script_runs_as_a_subprocess(tmp_path, data_dir):
    """The installed `gankit` entry point, as a user types it (no terminal: plain lines)."""
    env = os.environ | {"GANKIT_DATA": str(data_dir)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gankit",
            "train",
            "gan-001",
            "--steps",
            "6",
            "--log-every",
            "3",
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "step 6/6" in done.stderr and "\r" not in done.stderr
    assert "done: step 6" in done.stdout
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 6


@pytest.mark.parametrize(
    ("argv", "phrase"),
    [
        (["train", "gan-002", "--steps", "0"], "argument --steps: 0: a run needs at least 1 step"),
        (
            ["train", "gan-002", "--steps", "-5"],
            "argument --steps: -5: a run needs at least 1 step",
        ),
        (["train", "gan-002", "--steps", "1.5"], "'1.5' is not a whole number of steps"),
        (["train", "gan-002", "--epochs", "0"], "argument --epochs: 0: the run length in passes"),
        (["train", "gan-002", "--epochs", "-1"], "argument --epochs: -1: the run length in passes"),
        (["train", "gan-002", "--epochs", "nan"], "argument --epochs: nan: the run length"),
        (["train", "--resume", "RUN", "--steps", "0"], "argument --steps: 0: a run needs at least"),
        (
            [
                "sweep",
                "gan",
                "--param",
                "lr=uniform:1e-4:1e-3",
                "--trials",
                "1",
                "--study",
                "s",
                "--steps",
                "0",
            ],
            "argument --steps: 0: a run needs at least 1 step",
        ),
    ],
)
def test_run_length_below_one_is_refused_while_parsing(argv, phrase, capsys, monkeypatch):
    from gankit import cli

    for name in ("train", "sweep"):  # parsing must refuse: no command may start
        monkeypatch.setitem(cli.COMMANDS, name, lambda args: pytest.fail("the command ran"))
    with pytest.raises(SystemExit) as info:
        run(*argv)
    assert info.value.code == 2
    assert phrase in capsys.readouterr().err


def test_api_refuses_a_run_length_below_one(tmp_path):
    import gankit
    from gankit.errors import ConfigError

    for length, phrase in (
        ({"steps": 0}, "steps=0: a run needs at least 1 step"),
        ({"steps": -3}, "steps=-3: a run needs at least 1 step"),
        ({"epochs": 0}, "epochs=0: the run length in passes over the data"),
    ):
        with pytest.raises(ConfigError, match=phrase):
            gankit.train(
                "gan-002", out=tmp_path / "run", progress=False, max_seconds=1, **length
            )  # max_seconds: a regression fails fast, not in 100 epochs
    assert not (tmp_path / "run").exists()  # refused before the run folder was made


def test_epochs_replace_the_presets_step_count(capsys):
    import gankit

    assert gankit.configure("dcgan").train.steps > 0  # a preset whose length is in steps
    config = gankit.configure("dcgan", epochs=2)
    assert (config.train.steps, config.train.epochs) == (0, 2.0)  # 0: "use epochs", inside
    config = gankit.configure("dcgan", steps=0, epochs=1.5)  # spelt out: still accepted
    assert (config.train.steps, config.train.epochs) == (0, 1.5)
    assert run("train", "dcgan", "--epochs", "2", "--dry-run") == 0
    text = capsys.readouterr().out
    assert "\nsteps = 0\n" in text and "\nepochs = 2.0\n" in text
