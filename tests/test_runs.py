"""Run folders belong to one process, and a file that cannot be written never costs a run.

The lock tests start real `gankit train` processes; the full-disk tests inject ENOSPC at each
place a training run writes (grids, metrics rows, TensorBoard, checkpoints) and, where this
machine lets a test mount one, fill a small tmpfs under a live run.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import gankit
from gankit import cli, files, runs
from gankit.api import launch
from gankit.errors import CheckpointError, StorageError
from gankit.files import FolderBusy, FolderLock
from gankit.runs import checkpoint, read_metrics
from gankit.training import Trainer
from gankit.training.distributed import ProcessLost, World
from gankit.training.guards import StopRule

GANKIT = [sys.executable, "-m", "gankit"]


@pytest.fixture
def npz_data(tmp_path) -> str:
    """256 random labelled 28×28 images as an npz: fast to load in a subprocess."""
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    np.savez(
        path, images=rng.integers(0, 256, (256, 28, 28), dtype=np.uint8), labels=np.arange(256) % 10
    )
    return f"npz:{path}"


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    """A `gankit` process (runs pass `--set threads=1`: no load warning on a busy machine)."""
    return subprocess.Popen(
        [*GANKIT, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _gankit(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*GANKIT, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for the run: {proc.communicate()}")
        time.sleep(0.1)


# --------------------------------------------------------------------------- one process


@pytest.mark.slow
def test_a_second_process_is_refused_on_a_live_run_folder_and_the_lock_dies_with_the_holder(
    tmp_path, npz_data
):
    run = tmp_path / "race"
    first = _start(
        [
            "train",
            "gan-002",
            "--data",
            npz_data,
            "--steps",
            "1000000",
            "--out",
            str(run),
            "--checkpoint-every",
            "20",
            "--log-every",
            "10",
            "--sample-every",
            "100000",
            "--set",
            "threads=1",
            "--no-progress",
        ],
        tmp_path,
    )
    try:
        _wait_for(lambda: checkpoint.list_checkpoints(run / "checkpoints"), first)
        config_before = (run / "config.toml").read_text()
        attempts = {
            "new run, same --out": ["train", "dcgan", "--data", npz_data, "--out", str(run)],
            "with --overwrite": [
                "train",
                "dcgan",
                "--data",
                npz_data,
                "--out",
                str(run),
                "--overwrite",
            ],
            "a second resume": ["train", "--resume", str(run)],
        }
        for what, args in attempts.items():
            second = _gankit(args, tmp_path)
            assert second.returncode == 2, (what, second.stderr)
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1, (what, second.stderr)  # one line, no traceback
            assert f"{run} is in use by another process (pid {first.pid} on " in lines[0], what
            assert "gankit train gan-002" in lines[0], what  # the holder's command
        # the live run's folder is untouched and it is still training
        assert first.poll() is None
        assert (run / "config.toml").read_text() == config_before
        steps = [row["step"] for row in read_metrics(run) if "loss/D" in row]
        assert steps == sorted(set(steps)), "two processes logged into one metrics file"
    finally:
        first.kill()  # SIGKILL: no handler runs, the OS alone releases the lock
        first.communicate()
    resumed = _gankit(["train", "--resume", str(run), "--steps", "0"], tmp_path)
    assert resumed.returncode == 2 and "--steps" in resumed.stderr  # a length of 0 is refused
    newest = checkpoint.read_meta(checkpoint.latest_checkpoint(run / "checkpoints"))["step"]
    resumed = _gankit(
        ["train", "--resume", str(run), "--steps", str(newest + 10), "--no-progress"], tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr
    assert (
        checkpoint.read_meta(checkpoint.latest_checkpoint(run / "checkpoints"))["step"]
        == newest + 10
    )


def test_folder_lock_names_its_holder_and_frees_on_release(tmp_path):
    lock = FolderLock(tmp_path, purpose="a test's lock").acquire()
    with pytest.raises(FolderBusy, match=f"pid {os.getpid()} on ") as busy:
        FolderLock(tmp_path).acquire(wait=0.2)
    assert busy.value.holder["pid"] == os.getpid()
    lock.release()
    with FolderLock(tmp_path):  # free again
        pass


def test_trainer_holds_the_run_folder_while_it_trains(tiny_data, tmp_path):
    config = gankit.configure("gan-002", steps=4, batch_size=32, log_every=2)
    seen = []

    def try_second(row):
        with pytest.raises(FolderBusy):
            runs.lock_run(tmp_path)
        seen.append(row["step"])

    trainer = Trainer(
        config, tmp_path, data=tiny_data, callbacks=[try_second], progress=False, tensorboard=False
    )
    trainer.fit()
    assert seen == [2, 4]
    runs.lock_run(tmp_path).release()  # released when the run ended


def test_a_refused_run_leaves_no_folder_behind(tmp_path, capsys):
    out = tmp_path / "refused"
    code = cli.main(
        [
            "train",
            "gan-002",
            "--data",
            f"npz:{tmp_path / 'missing.npz'}",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 2 and "missing.npz" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(CheckpointError, match="is not a run folder"):
        launch(tmp_path / "never-made")
    assert not (tmp_path / "never-made").exists()


def test_numbered_run_folders_are_never_shared(tmp_path):
    first = runs.new_run_dir(None, "gan-x", root=tmp_path)
    second = runs.new_run_dir(None, "gan-x", root=tmp_path)  # the first is still claimed
    assert (first.name, second.name) == ("gan-x-0001", "gan-x-0002")
    for path in (first, second):
        runs.discard_claim(path)
    assert not first.exists() and not second.exists()  # made, never written: removed


# --------------------------------------------------------------------------- a full disk


def _enospc(path) -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


class Faults:
    """Raise ENOSPC from one write site once training has passed ``after`` steps."""

    def __init__(self, monkeypatch, site: str, after: int):
        self.site, self.after, self.hits = site, after, 0
        self.trainer: Trainer | None = None
        if site == "checkpoint":
            real = files.atomic_write

            def atomic_write(path, *args, **kwargs):
                if "checkpoints" in str(path) and self.armed():
                    raise files.storage_error(path, _enospc(path))
                return real(path, *args, **kwargs)

            monkeypatch.setattr(checkpoint, "atomic_write", atomic_write)
        elif site == "grid":
            from PIL import Image

            real_save = Image.Image.save

            def save(image, fp, *args, **kwargs):
                if "/samples/" in str(fp) and self.armed():
                    raise _enospc(fp)
                return real_save(image, fp, *args, **kwargs)

            monkeypatch.setattr(Image.Image, "save", save)
        elif site == "metrics":
            import builtins

            real_open = builtins.open

            def open_(file, mode="r", *args, **kwargs):
                if str(file).endswith("metrics.jsonl") and "a" in mode and self.armed():
                    raise _enospc(file)
                return real_open(file, mode, *args, **kwargs)

            monkeypatch.setattr(builtins, "open", open_)
        elif site == "tensorboard":
            from tensorboard.summary.writer.record_writer import RecordWriter

            real_write = RecordWriter.write

            def write(writer, data):  # runs in TensorBoard's writer thread
                if self.armed():
                    raise _enospc("events file")
                return real_write(writer, data)

            monkeypatch.setattr(RecordWriter, "write", write)

    def armed(self) -> bool:
        if self.trainer is not None and self.trainer.step >= self.after:
            self.hits += 1
            return True
        return False


@pytest.mark.parametrize("site", ["grid", "metrics", "tensorboard", "checkpoint"])
def test_a_full_disk_at_any_write_stops_the_run_cleanly_and_resume_continues(
    site, tiny_data, tmp_path, monkeypatch
):
    config = gankit.configure(
        "gan-002", steps=60, batch_size=32, log_every=5, checkpoint_every=10, sample_every=10
    )
    faults = Faults(monkeypatch, site, after=20)
    trainer = faults.trainer = Trainer(
        config, tmp_path, data=tiny_data, progress=False, tensorboard=site == "tensorboard"
    )
    with pytest.raises(StorageError) as stop:
        trainer.fit()
    message = str(stop.value)
    assert faults.hits >= 1
    assert "[Errno 28 ENOSPC] No space left on device" in message
    assert "\n" not in message and f"gankit train --resume {tmp_path}" in message
    newest = checkpoint.latest_checkpoint(tmp_path / "checkpoints")
    assert f"the last good checkpoint is {newest}" in message
    step = checkpoint.read_meta(newest)["step"]
    if site == "checkpoint":  # the step-20 write failed: step 10 stays the last good one
        assert step == 10 and "saved checkpoint" not in message
    else:  # anything else: the step reached is saved before stopping, nothing is lost
        assert step >= 20 and f"saved checkpoint {newest} first" in message
    assert not [p for p in tmp_path.rglob(".*.tmp")], "a temporary file was left behind"
    monkeypatch.undo()  # space is free again

    resumed = launch(tmp_path, data=tiny_data, progress=False, tensorboard=site == "tensorboard")
    assert resumed.step == step
    assert resumed.fit().step == 60
    steps = [row["step"] for row in read_metrics(tmp_path) if "loss/D" in row]
    assert steps == sorted(set(steps)) and steps[-1] == 60


def test_a_full_disk_is_one_line_from_the_command_line(tmp_path, npz_data, monkeypatch, capsys):
    from PIL import Image

    def full(*args, **kwargs):
        raise _enospc("grid")

    monkeypatch.setattr(Image.Image, "save", full)
    out = tmp_path / "run"
    code = cli.main(
        [
            "train",
            "gan-002",
            "--data",
            npz_data,
            "--steps",
            "20",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("gankit: error: could not write ")
    assert "No space left on device" in err and f"--resume {out}" in err


def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    if sys.platform != "linux" or os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip(
            "mounting a small tmpfs needs Linux and root; the injected-ENOSPC tests "
            "cover the same write sites"
        )
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        pytest.skip(
            f"this machine refuses to mount a tmpfs ({done.stderr.strip()}); the "
            "injected-ENOSPC tests cover the same write sites"
        )


@pytest.mark.slow
def test_a_really_full_file_system_under_a_live_run(tmp_path, npz_data):
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "40m")
    try:
        run = disk / "run"
        proc = _start(
            [
                "train",
                "gan-002",
                "--data",
                npz_data,
                "--steps",
                "1000000",
                "--out",
                str(run),
                "--checkpoint-every",
                "50",
                "--sample-every",
                "25",
                "--log-every",
                "5",
                "--set",
                "threads=1",
                "--no-progress",
            ],
            tmp_path,
        )
        _wait_for(lambda: checkpoint.list_checkpoints(run / "checkpoints"), proc)
        filler = disk / "filler"
        with open(filler, "wb") as f:  # take every byte left
            try:
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            except OSError as err:
                assert err.errno == errno.ENOSPC
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 2, err
        assert err.count("\n") == 1 and "No space left on device" in err, err
        assert f"gankit train --resume {run}" in err
        newest = checkpoint.latest_checkpoint(run / "checkpoints")  # verifies its checksums
        assert newest is not None and str(newest) in err
        filler.unlink()  # space again
        step = checkpoint.read_meta(newest)["step"]
        done = _gankit(
            ["train", "--resume", str(run), "--steps", str(step + 30), "--no-progress"], tmp_path
        )
        assert done.returncode == 0, done.stderr
        steps = [row["step"] for row in read_metrics(run) if "loss/D" in row]
        assert steps == sorted(set(steps)) and steps[-1] == step + 30
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_a_second_ctrl_c_names_the_last_checkpoint_and_the_resume_command(tiny_data, tmp_path):
    config = gankit.configure("gan-002", steps=50, batch_size=32, log_every=5, checkpoint_every=10)

    def interrupt(row):
        if row["step"] == 15:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal
    try:
        trainer = Trainer(
            config,
            tmp_path,
            data=tiny_data,
            callbacks=[interrupt],
            progress=False,
            tensorboard=False,
        )
        with pytest.raises(KeyboardInterrupt) as stop:
            trainer.fit()
    finally:
        signal.signal(signal.SIGINT, previous)
    newest = tmp_path / "checkpoints" / "step-00000010.safetensors"
    assert str(stop.value) == (
        f"stopped at once at step 15; the last good checkpoint is "
        f"{newest}; resume with: gankit train --resume {tmp_path}"
    )


def test_a_signal_ignored_before_the_run_stays_ignored(tiny_data, tmp_path):
    config = gankit.configure("gan-002", steps=4, batch_size=32, log_every=2)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as under nohup or `&`
    try:
        trainer = Trainer(
            config,
            tmp_path,
            data=tiny_data,
            progress=False,
            tensorboard=False,
            callbacks=[lambda row: os.kill(os.getpid(), signal.SIGINT)],
        )
        assert not trainer.fit().interrupted
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("size", [1, 2])
def test_a_run_ending_on_an_error_under_torchrun_outlives_the_agents_sigterm(size):
    """torchrun's agent sends SIGTERM to the survivors as soon as one process dies: a process
    of a parallel run that is ending on an error ignores it, so that it can still print what
    stopped it and where its last checkpoint is; a single process gets its handler back."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        rule = StopRule(SimpleNamespace(world=World(rank=0, size=size)))
        with pytest.raises(ProcessLost), rule:
            assert signal.getsignal(signal.SIGTERM) == rule._on_signal
            raise ProcessLost("process 0 lost the other processes of this run")
        assert signal.getsignal(signal.SIGTERM) == (signal.SIG_IGN if size > 1 else previous)
        signal.signal(signal.SIGTERM, previous)
        with rule:  # a clean end gives the handler back in any world
            assert signal.getsignal(signal.SIGTERM) == rule._on_signal
        assert signal.getsignal(signal.SIGTERM) == previous
    finally:
        signal.signal(signal.SIGTERM, previous)
