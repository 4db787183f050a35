"""Sweeps on Optuna: exact trial counts with racing workers, run folders, pruned divergence,
killed workers, refused specs and the report (SQLite; PostgreSQL in test_sweep_postgres.py)."""

from __future__ import annotations

import argparse
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import html5lib
import optuna
import pytest
from PIL import Image

from gankit import cli
from gankit.cli import main
from gankit.config import load_toml
from gankit.errors import ConfigError, GankitError
from gankit.runs import load_run, read_metrics
from gankit.tools.sweep import parse_param, sweep, sweep_report

# A small MLP GAN on 2,000 images: a 20-step run with 3 evaluations of 200 samples takes
# about a second. One thread per worker: two workers share two cores.
TINY = [
    "--data",
    "fashion-mnist",
    "--steps",
    "20",
    "--eval-every",
    "10",
    "--eval-samples",
    "200",
    "--batch-size",
    "32",
    "--log-every",
    "5",
    "--set",
    "data_limit=2000",
    "--set",
    "threads=1",
    "--no-progress",
]
TINY_KW = {
    "data": "fashion-mnist",
    "steps": 20,
    "eval_every": 10,
    "eval_samples": 200,
    "batch_size": 32,
    "log_every": 5,
    "sets": ["data_limit=2000", "threads=1"],
}


def spawn_worker(tmp: Path, data_dir: Path, *argv: str) -> subprocess.Popen:
    """`python -m gankit sweep gan-002 …` in ``tmp`` (inherits the test's private cache)."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gankit",
            "sweep",
            "gan-002",
            *TINY,
            "--data-dir",
            str(data_dir),
            *argv,
        ],
        cwd=tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen, seconds: float = 120) -> str:
    out, _ = proc.communicate(timeout=seconds)
    assert proc.returncode == 0, out
    return out


def load(storage: str, name: str):
    return optuna.load_study(study_name=name, storage=storage)


def check_run_folder(trial) -> None:
    """The trial's folder is an ordinary, loadable run of the trial's seed and values whose
    last evaluation is the trial's value."""
    run_dir = Path(trial.user_attrs["run_dir"])
    config = load_toml(run_dir / "config.toml")
    assert config["train"]["seed"] == trial.user_attrs["seed"]
    assert (
        config["model"]["opt_g"]["lr"]
        == config["model"]["opt_d"]["lr"]
        == pytest.approx(trial.params["lr"])
    )
    run = load_run(run_dir)
    assert run.step == trial.user_attrs["steps"] == 20
    evals = [r for r in read_metrics(run_dir) if "eval/fid" in r]
    assert [r["step"] for r in evals] == [0, 10, 20]
    assert trial.value == pytest.approx(evals[-1]["eval/fid"])
    assert trial.user_attrs["metrics"]["fid"] == pytest.approx(trial.value)
    assert {"kid", "precision", "recall", "classes_covered"} <= set(trial.user_attrs["metrics"])
    assert trial.intermediate_values == {
        10: pytest.approx(evals[1]["eval/fid"]),
        20: pytest.approx(evals[2]["eval/fid"]),
    }


@pytest.mark.slow
def test_two_workers_run_each_configuration_and_seed_exactly_once(
    evaluation, data_dir, tmp_path, capsys, monkeypatch
):
    argv = [
        "--param",
        "lr=loguniform:1e-4:1e-3",
        "--trials",
        "3",
        "--seeds",
        "2",
        "--study",
        "two",
        "--pruner",
        "none",
        "--heartbeat",
        "5",
    ]  # default storage
    workers = [spawn_worker(tmp_path, data_dir, *argv) for _ in range(2)]
    logs = [finish(w) for w in workers]

    study = load(f"sqlite:///{tmp_path}/sweep.db", "two")
    trials = study.get_trials()
    assert len(trials) == 6, logs
    assert all(t.state.name == "COMPLETE" for t in trials), logs
    runs = {(t.user_attrs["config"], t.user_attrs["seed"]) for t in trials}
    configs = {t.user_attrs["config"] for t in trials}
    assert len(configs) == 3 and runs == {(c, s) for c in configs for s in (0, 1)}
    for config in configs:  # both seeds of a configuration share its values
        assert len({t.params["lr"] for t in trials if t.user_attrs["config"] == config}) == 1
    folders = {t.user_attrs["run_dir"] for t in trials}
    assert folders == {str(tmp_path / f"sweeps/two/trial-{n:04d}") for n in range(6)}
    for trial in trials:
        check_run_folder(trial)

    monkeypatch.chdir(tmp_path)
    assert main(["sweep", "report", "--study", "two"]) == 0  # sqlite:///sweep.db here
    out = capsys.readouterr().out
    table = out.split("trials:\n")[1].split("\n\n")[0].splitlines()
    assert len(table) == 2 + 6 and all("COMPLETE" in row for row in table[2:])
    means = out.split("FID by configuration")[1].split("\n\n")[0].splitlines()[3:]
    assert len(means) == 3
    expected = sorted(
        (statistics.fmean(f), statistics.stdev(f))
        for f in ([t.value for t in trials if t.user_attrs["config"] == c] for c in configs)
    )
    for row, (mean, std) in zip(means, expected, strict=True):
        assert f"{mean:.4g} ± {std:.3g}" in row and row.endswith("| 2/2 |")
    assert "best configuration: " in out and f"FID {expected[0][0]:.4g} ±" in out
    plot = tmp_path / "sweeps/two/sensitivity.png"
    assert "sensitivity plot: sweeps/two/sensitivity.png" in out
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size[0] > 200

    # the same report as one page: each trial links to its own run's page
    assert main(["sweep", "report", "--study", "two", "--html", "pages/sweep.html"]) == 0
    page = (tmp_path / "pages/sweep.html").read_text()
    html5lib.HTMLParser(strict=True).parse(page)
    links = re.findall(r'<a href="([^"]+)"><code>sweeps/two/trial-\d{4}</code></a>', page)
    assert sorted(links) == [f"../sweeps/two/trial-{n:04d}/report.html" for n in range(6)]
    assert all((tmp_path / "pages" / link).is_file() for link in links)
    assert "data:image/png;base64," in page and str(tmp_path) not in page
    assert f"{expected[0][0]:.4g} ± {expected[0][1]:.3g}" in page


class Alternating(optuna.samplers.RandomSampler):
    """Draws each choice in turn: trial 0 the first value, trial 1 the second, …"""

    def sample_independent(self, study, trial, name, distribution):
        return distribution.choices[trial.number % len(distribution.choices)]


def test_a_diverging_trial_is_pruned_with_its_reason_and_the_worker_goes_on(
    evaluation, data_dir, tmp_path
):
    storage = f"sqlite:///{tmp_path}/sweep.db"
    outcomes = sweep(
        "gan-002",
        storage=storage,
        study="div",
        params=["lr=choice:1e30,2e-4"],
        trials=2,
        sampler=Alternating(),
        pruner="none",
        out=tmp_path / "runs",
        data_dir=str(data_dir),
        log=lambda text: None,
        **TINY_KW,
    )
    assert [(o.number, o.state) for o in outcomes] == [(0, "PRUNED"), (1, "COMPLETE")]
    diverged, fine = load(storage, "div").get_trials()
    assert diverged.params == {"lr": 1e30} and fine.params == {"lr": 2e-4}
    assert diverged.state.name == "PRUNED"
    assert diverged.user_attrs["note"].startswith("diverged: training diverged at step 5")
    assert "non-finite" in diverged.user_attrs["note"]
    assert fine.state.name == "COMPLETE" and fine.value > 0
    check_run_folder(fine)


def test_a_pruned_trial_keeps_a_resumable_checkpoint_at_its_step(evaluation, data_dir, tmp_path):
    storage = f"sqlite:///{tmp_path}/sweep.db"
    outcomes = sweep(
        "gan-002",
        storage=storage,
        study="prune",
        params=["lr=choice:2e-4"],
        trials=1,
        pruner=optuna.pruners.ThresholdPruner(upper=0.0),
        out=tmp_path / "runs",
        data_dir=str(data_dir),
        log=lambda text: None,
        **TINY_KW,
    )
    assert [(o.number, o.state) for o in outcomes] == [(0, "PRUNED")]
    (trial,) = load(storage, "prune").get_trials()
    assert trial.state.name == "PRUNED" and trial.user_attrs["steps"] == 10
    assert trial.user_attrs["note"].startswith("pruned at step 10: FID ")
    assert list(trial.intermediate_values) == [10]
    assert load_run(trial.user_attrs["run_dir"]).step == 10  # resumable where it stopped
    assert (
        main(["train", "--resume", trial.user_attrs["run_dir"], "--steps", "12", "--no-progress"])
        == 0
    )
    assert load_run(trial.user_attrs["run_dir"]).step == 12


@pytest.mark.slow
def test_a_killed_worker_leaves_a_failed_trial_and_the_study_goes_on(
    evaluation, data_dir, tmp_path
):
    storage = f"sqlite:///{tmp_path}/sweep.db"
    spec = {"params": ["label_smoothing=uniform:0:0.2"], "trials": 2, "heartbeat": 1}
    long = ["--steps", "400", "--eval-every", "200"]  # seconds: time to kill it mid-run
    victim = spawn_worker(
        tmp_path,
        data_dir,
        "--param",
        spec["params"][0],
        "--trials",
        "2",
        "--storage",
        storage,
        "--study",
        "kill",
        "--heartbeat",
        "1",
        "--pruner",
        "none",
        *long,
    )
    metrics = tmp_path / "sweeps/kill/trial-0000/metrics.jsonl"
    deadline = time.monotonic() + 60
    while not metrics.exists():  # the first run is training (its step-0 evaluation is done)
        assert victim.poll() is None and time.monotonic() < deadline, victim.stdout.read()
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert [t.state.name for t in load(storage, "kill").get_trials()] == ["RUNNING", "WAITING"]

    time.sleep(3.5)  # beyond the grace period of 2 heartbeats (SQLite keeps whole seconds)
    outcomes = sweep(
        "gan-002",
        storage=storage,
        study="kill",
        **spec,
        sampler="tpe",
        pruner="none",
        out=tmp_path / "sweeps/kill",
        data_dir=str(data_dir),
        log=lambda text: None,
        **TINY_KW | {"steps": 400, "eval_every": 200},
    )
    assert [(o.number, o.state) for o in outcomes] == [(1, "COMPLETE")]
    killed, done = load(storage, "kill").get_trials()
    assert killed.state.name == "FAIL" and done.state.name == "COMPLETE"
    assert (Path(killed.user_attrs["run_dir"]) / "config.toml").exists()

    report = sweep_report(storage, "kill", tmp_path / "plot.png")
    assert [(r["trial"], r["state"]) for r in report.trials] == [(0, "FAIL"), (1, "COMPLETE")]
    assert "no heartbeat" in report.trials[0]["note"]
    assert report.configs[0]["fid"] == pytest.approx(done.value)
    assert report.importances == {} and "at least 3 configurations" in report.importance_note
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("lr", "expected NAME=SPEC"),
        ("lr=loguniform:1e-3", "expected loguniform:LO:HI"),
        ("lr=loguniform:0:1e-3", "a log scale needs LO > 0"),
        ("lr=uniform:1e-3:1e-5", "LO < HI"),
        ("lr=gaussian:0:1", "unknown distribution 'gaussian'"),
        ("n_critic=int:1:x", "LO and HI must be integers"),
        ("batch_size=choice:", "choice needs values"),
        ("n_critc=int:1:5", "unknown config key 'n_critc'; did you mean model.n_critic"),
        ("n_critic=uniform:1:5", "model.n_critic = 1.0 has the wrong type: expected an integer"),
        ("label_smoothing=uniform:0:1.5", "at 1.5, loss.label_smoothing = 1.5 is out of range"),
        ("loss.gan=choice:hinge,wgan", "at 'wgan', model.loss.gan = 'wgan' is not allowed"),
    ],
)
def test_bad_param_specs_are_refused_before_anything_runs(param, message, tmp_path, capsys):
    db = tmp_path / "sweep.db"
    code = main(
        [
            "sweep",
            "gan-002",
            "--steps",
            "20",
            "--param",
            param,
            "--trials",
            "2",
            "--storage",
            f"sqlite:///{db}",
            "--study",
            "bad",
            "--out",
            str(tmp_path / "runs"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert err.startswith("gankit: error: --param") and err.count("\n") == 1
    assert not db.exists() and not (tmp_path / "runs").exists()


def test_a_run_measured_in_epochs_needs_an_evaluation_cadence(tmp_path, capsys):
    db = tmp_path / "sweep.db"
    code = main(
        [
            "sweep",
            "gan-002",
            "--param",
            "lr=uniform:1e-4:2e-4",
            "--trials",
            "2",
            "--storage",
            f"sqlite:///{db}",
            "--study",
            "bad",
        ]
    )
    assert code == 2 and "gan-002 runs for 100 epochs" in capsys.readouterr().err
    assert not db.exists()


def test_a_new_study_refuses_a_folder_of_another_sweeps_trials(tmp_path):
    (tmp_path / "runs" / "trial-0000").mkdir(parents=True)
    with pytest.raises(ConfigError, match="holds the trial folders of another sweep"):
        sweep(
            "gan",
            storage=f"sqlite:///{tmp_path}/sweep.db",
            study="new",
            trials=1,
            params=["lr=uniform:1e-4:2e-4"],
            out=tmp_path / "runs",
            steps=20,
        )
    assert optuna.get_all_study_summaries(f"sqlite:///{tmp_path}/sweep.db") == []


def test_param_specs_parse_to_optuna_ranges():
    lr = parse_param("lr=loguniform:1e-5:1e-3")
    assert (lr.keys, lr.low, lr.high, lr.log) == (
        ("model.opt_g.lr", "model.opt_d.lr"),
        1e-5,
        1e-3,
        True,
    )
    assert parse_param("n_critic=int:1:5:log").log and parse_param("n_critic=int:1:5").keys == (
        "model.n_critic",
    )
    assert parse_param("batch_size=choice:32,64").choices == (32, 64)
    assert parse_param('loss.gan=choice:hinge,"minimax"').choices == ("hinge", "minimax")
    assert parse_param("lr_d=uniform:0.1:0.2").keys == ("model.opt_d.lr",)
    assert parse_param(lr.text) == lr


def test_a_worker_with_other_options_cannot_join_the_study(evaluation, data_dir, tmp_path):
    storage = f"sqlite:///{tmp_path}/sweep.db"
    common = {
        "study": "s",
        "trials": 1,
        "pruner": "none",
        "out": tmp_path / "runs",
        "data_dir": str(data_dir),
        "log": lambda text: None,
    }
    sweep("gan-002", storage=storage, params=["lr=loguniform:1e-4:1e-3"], **common, **TINY_KW)
    with pytest.raises(
        ConfigError,
        match=r"params: \['lr=loguniform:0.0001:0.01'\] here, "
        r"\['lr=loguniform:0.0001:0.001'\] in the study.*train.steps: 30 here, "
        r"20 in the study",
    ):
        sweep(
            "gan-002",
            storage=storage,
            params=["lr=loguniform:1e-4:1e-2"],
            **common,
            **TINY_KW | {"steps": 30},
        )
    # another machine's device, data folder and threads are no difference; nothing is left
    assert (
        sweep(
            "gan-002",
            storage=storage,
            params=["lr=loguniform:1e-4:1e-3"],
            **common,
            **TINY_KW | {"sets": ["data_limit=2000", "threads=2"], "device": "cpu"},
        )
        == []
    )
    assert len(load(storage, "s").get_trials()) == 1


def test_sweep_takes_every_train_option():
    sub = argparse.ArgumentParser().add_subparsers()
    cli._add_train(sub)
    cli._add_sweep(sub)
    options = {a.dest for a in sub.choices["train"]._actions}
    train_only = {"help", "model", "resume", "out", "overwrite", "dry_run"}
    assert options - train_only <= {a.dest for a in sub.choices["sweep"]._actions}
    args = cli.build_parser().parse_args(
        [
            "sweep",
            "dcgan",
            "--param",
            "lr=uniform:1e-4:2e-4",
            "--trials",
            "2",
            "--storage",
            "sqlite:///x.db",
            "--study",
            "x",
            "--lr-d",
            "1e-4",
            "--set",
            "n_critic=2",
            "--epochs",
            "1.5",
        ]
    )
    assert (args.lr_d, args.set, args.epochs) == (1e-4, ["n_critic=2"], 1.5)


def test_without_optuna_the_error_says_how_to_install_it(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "optuna", None)
    code = main(["sweep", "report", "--storage", f"sqlite:///{tmp_path}/x.db", "--study", "x"])
    assert code == 2
    assert 'pip install "gankit[sweep]"' in capsys.readouterr().err
    with pytest.raises(GankitError, match=r'pip install "gankit\[sweep\]"'):
        sweep("gan", storage="sqlite:///x.db", study="x", params=["lr=uniform:0.1:0.2"], trials=1)
