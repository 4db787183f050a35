"""Crash safety of a real training process: SIGKILL at random moments (many of them during a
checkpoint write) never leaves a run that cannot resume; SIGTERM stops with a checkpoint."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gankit.cli import main
from gankit.errors import CheckpointError
from gankit.runs import read_metrics
from gankit.runs.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint

# A small MLP GAN (~2.6 MB checkpoints, a few hundredths of a second per step) with a
# checkpoint every step: a large share of each step is spent writing one.
PRESET = "gan-002"
TINY = [
    "--data",
    "fashion-mnist",
    "--batch-size",
    "32",
    "--log-every",
    "1",
    "--sample-every",
    "1000",
    "--no-progress",
    "--set",
    "data_limit=2000",
]
NEVER_ENDS = "100000"  # --steps of the processes that get killed
STEP_FILE = re.compile(r"step-\d{8}\.safetensors")
KILLS = 8  # each costs a Python + torch start-up (~3 s on two busy cores)


def _spawn(*argv: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "gankit", "train", *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _newest_step(folder: Path) -> int:
    """Step of the newest step file (by name; -1 if none). Races with prune are harmless."""
    files = list_checkpoints(folder)
    return int(files[-1].name[5:13]) if files else -1


def _wait_for_checkpoint_after(proc: subprocess.Popen, folder: Path, step: int) -> None:
    """Wait until ``proc`` wrote a checkpoint newer than ``step``: it is really training."""
    deadline = time.monotonic() + 120
    while _newest_step(folder) <= step:
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"training exited early with {proc.returncode}:\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            proc.communicate()
            pytest.fail(f"no checkpoint after step {step} within 120 s")
        time.sleep(0.005)


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if not STEP_FILE.fullmatch(p.name)]


def _wait_for_new_temp_file(folder: Path, old: set[str], seconds: float) -> None:
    """Poll (briefly sleeping) until a temp file not in ``old`` exists: a write is under way."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if {p.name for p in _temp_files(folder)} - old:
            return
        time.sleep(0.001)


def _check_after_crash(folder: Path) -> Path:
    """Every file a crash left behind loads or is refused cleanly; returns the newest good one."""
    names = {p.name for p in folder.iterdir()}
    listed = list_checkpoints(folder)
    assert {p.name for p in listed} == {n for n in names if STEP_FILE.fullmatch(n)}
    corrupt = []
    for path in listed:
        try:
            _, meta = load_checkpoint(path)
        except CheckpointError as exc:  # anything else is a crash of the loader: fails the test
            corrupt.append(f"{path.name}: {exc}")
            continue
        assert meta["step"] == int(path.name[5:13])
    # A kill cannot tear a renamed file: the write goes to a temp file first.
    assert not corrupt, corrupt
    for temp in _temp_files(folder):  # partial or complete: never a crash of the loader
        try:
            load_checkpoint(temp)
        except CheckpointError:
            pass
    newest = latest_checkpoint(folder)
    assert newest is not None and newest == listed[-1]
    assert STEP_FILE.fullmatch(newest.name)  # no temp file is mistaken for a checkpoint
    return newest


@pytest.mark.slow
def test_sigkill_at_random_moments_always_leaves_a_resumable_run(data_dir, tmp_path, capsys):
    env = os.environ | {"GANKIT_DATA": str(data_dir)}  # + the fixture's OFFLINE and CACHE
    run = tmp_path / "run"
    folder = run / "checkpoints"
    rng = random.Random(20240601)
    done_step = 0
    seen_temp: set[str] = set()
    left_temp = []  # per kill: did it leave a new temp checkpoint file (killed mid-write)?
    for kill in range(KILLS):
        if kill == 0:
            proc = _spawn(
                PRESET,
                *TINY,
                "--steps",
                NEVER_ENDS,
                "--checkpoint-every",
                "1",
                "--out",
                str(run),
                env=env,
            )
        else:  # the resumed process is killed too: crash → resume → crash ...
            proc = _spawn("--resume", str(run), "--steps", NEVER_ENDS, "--no-progress", env=env)
        try:
            _wait_for_checkpoint_after(proc, folder, done_step)
            time.sleep(rng.uniform(0.0, 1.5))  # from just after start-up to dozens of steps in
            if kill % 2:  # every other kill aims at a checkpoint write in progress
                _wait_for_new_temp_file(folder, seen_temp, 2.0)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=60)
        assert proc.returncode == -signal.SIGKILL

        temps = {p.name for p in _temp_files(folder)}
        left_temp.append(bool(temps - seen_temp))
        seen_temp |= temps
        newest = _check_after_crash(folder)
        reached = int(newest.name[5:13])
        assert reached > done_step  # the killed process had trained and checkpointed
        target = reached + 2
        assert main(["train", "--resume", str(run), "--steps", str(target), "--no-progress"]) == 0
        out = capsys.readouterr().out
        assert f"at step {reached} of {target}" in out and f"done: step {target}" in out
        final = folder / f"step-{target:08d}.safetensors"
        assert latest_checkpoint(folder) == final
        assert load_checkpoint(final)[1]["step"] == target
        # Rows logged after the newest checkpoint were dropped and redone: one row per step.
        assert [r["step"] for r in read_metrics(run)] == list(range(1, target + 1))
        done_step = target
    print(f"{sum(left_temp)} of {KILLS} kills left a temp checkpoint file: {left_temp}")
    assert sum(left_temp) >= 1, "no kill landed inside a checkpoint write"


@pytest.mark.slow
def test_sigterm_stops_with_a_checkpoint_and_a_resume_hint(data_dir, tmp_path):
    env = os.environ | {"GANKIT_DATA": str(data_dir)}
    run = tmp_path / "run"
    proc = _spawn(
        PRESET,
        *TINY,
        "--steps",
        NEVER_ENDS,
        "--checkpoint-every",
        "1000",
        "--out",
        str(run),
        env=env,
    )
    deadline = time.monotonic() + 120
    metrics = run / "metrics.jsonl"
    try:  # rows are logged inside the loop, so its signal handlers are installed by then
        while not metrics.exists() or metrics.read_text().count("\n") < 3:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "training did not start within 120 s"
            time.sleep(0.01)
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"resume with: gankit train --resume {run}" in out
    match = re.search(r"stopped at step (\d+); checkpoint (\S+)", out)
    assert match, out
    step = int(match.group(1))
    assert step >= 3
    path = run / "checkpoints" / f"step-{step:08d}.safetensors"
    assert Path(match.group(2)) == path
    assert list_checkpoints(run / "checkpoints") == [path]  # written on the signal, not by cadence
    assert load_checkpoint(path)[1]["step"] == step

    assert main(["train", "--resume", str(run), "--steps", str(step + 3), "--no-progress"]) == 0
    assert load_checkpoint(latest_checkpoint(run / "checkpoints"))[1]["step"] == step + 3
    assert [r["step"] for r in read_metrics(run)] == list(range(1, step + 4))
