"""`gankit sample`: every output appears whole under its final name or not at all, even when
the process is killed while writing, and nothing existing is replaced without --overwrite."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gankit.cli import main

N = 20_000  # enough images that writing them takes a while (about a second as .npz)


def run(*argv: object) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """gan-002 (an MLP GAN) trained 20 steps on 256 random images: cheap, and it samples."""
    folder = tmp_path_factory.mktemp("sample")
    rng = np.random.default_rng(0)
    data = folder / "tiny.npz"
    np.savez(data, images=rng.integers(0, 256, (256, 28, 28), dtype=np.uint8))
    out = folder / "run"
    assert (
        run(
            "train",
            "gan-002",
            "--data",
            f"npz:{data}",
            "--steps",
            20,
            "--batch-size",
            32,
            "--checkpoint-every",
            20,
            "--sample-every",
            20,
            "--out",
            out,
            "--no-progress",
        )
        == 0
    )
    return out


def _temporaries(final: Path) -> list[Path]:
    return sorted(final.parent.glob(f".{final.name}.*"))


def _kill_while_writing(run_dir: Path, out: str, final: Path, delay: float) -> bool:
    """Start `gankit sample --n N --out OUT`, wait until it starts writing (a temporary or the
    final name appears), SIGKILL it `delay` seconds later. False if it finished first."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gankit", "sample", str(run_dir), "--n", str(N), "--out", out],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=os.environ.copy(),
    )
    try:
        deadline = time.monotonic() + 120
        while not (final.exists() or _temporaries(final)) and process.poll() is None:
            assert time.monotonic() < deadline, "gankit sample never started writing"
            time.sleep(0.002)
        time.sleep(delay)
        finished = process.poll() is not None
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
    assert finished or process.returncode == -signal.SIGKILL
    return not finished


def _age(paths: list[Path], seconds: float = 120) -> None:
    """Make temporaries look untouched for ``seconds``: `gankit sample` removes only those a
    dead writer left (a live one, writing the same path, keeps touching its own)."""
    then = time.time() - seconds
    for path in paths:
        os.utime(path, (then, then))


def _assert_npz_complete(path: Path) -> None:
    with np.load(path) as f:
        assert f["images"].shape == (N, 28, 28) and f["images"].dtype == np.uint8


def _assert_folder_complete(path: Path) -> None:
    names = sorted(p.name for p in path.iterdir())
    assert names == [f"{i:06d}.png" for i in range(N)]
    with Image.open(path / names[-1]) as image:
        assert image.size == (28, 28)


@pytest.mark.slow
def test_killed_while_writing_an_npz_leaves_nothing_or_a_complete_file(trained, tmp_path):
    final = tmp_path / "s.npz"
    for number, delay in enumerate((0.0, 0.3, 0.8)):
        killed = _kill_while_writing(trained, str(final), final, delay)
        if final.exists():  # nothing under the final name, or all of it
            _assert_npz_complete(final)
            final.unlink()
        elif number == 0:  # killed the moment it began: mid-write, for sure
            assert killed and _temporaries(final), "the kill did not land while writing"
    _age(_temporaries(final))
    assert run("sample", trained, "--n", N, "--out", final) == 0
    _assert_npz_complete(final)
    assert not _temporaries(final)  # the killed runs' temporaries are cleaned up


@pytest.mark.slow
def test_killed_while_writing_a_folder_leaves_nothing_or_a_complete_folder(trained, tmp_path):
    final = tmp_path / "pngs"
    for number, delay in enumerate((0.0, 1.0)):
        killed = _kill_while_writing(trained, f"{final}/", final, delay)
        if final.exists():  # nothing under the final name, or all of it
            _assert_folder_complete(final)
            os.rename(final, tmp_path / f"done-{number}")
        elif number == 0:
            assert killed and _temporaries(final), "the kill did not land while writing"
    _age(_temporaries(final))
    assert run("sample", trained, "--n", N, "--out", f"{final}/") == 0
    _assert_folder_complete(final)
    assert not _temporaries(final)


def _run_without_model(monkeypatch, *argv: object) -> int:
    """`gankit ARGV`, failing the test if it loads the run: refusals must come before."""
    import gankit.runs

    with monkeypatch.context() as patch:
        patch.setattr(
            gankit.runs,
            "load_run",
            lambda *a, **k: pytest.fail("the model was loaded before refusing"),
        )
        return run(*argv)


def _one_line_refusal(capsys, path: Path, option: str = "--out") -> None:
    err = capsys.readouterr().err
    assert err == (
        f"gankit: error: {option} {path} already exists: pass --overwrite to "
        "replace it, or choose another path\n"
    )


def test_an_existing_npz_is_refused_without_overwrite(trained, tmp_path, capsys, monkeypatch):
    path = tmp_path / "s.npz"
    assert run("sample", trained, "--n", 5, "--out", path) == 0
    before = path.read_bytes()
    capsys.readouterr()
    assert _run_without_model(monkeypatch, "sample", trained, "--n", 7, "--out", path) == 2
    _one_line_refusal(capsys, path)
    assert path.read_bytes() == before
    assert run("sample", trained, "--n", 7, "--out", path, "--overwrite") == 0
    with np.load(path) as f:
        assert f["images"].shape == (7, 28, 28)


def test_a_non_empty_folder_is_refused_without_overwrite(trained, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "pngs"
    folder.mkdir()  # an empty folder is fine
    assert run("sample", trained, "--n", 3, "--out", f"{folder}/") == 0
    (folder / "mine.txt").write_text("keep me")
    capsys.readouterr()
    assert _run_without_model(monkeypatch, "sample", trained, "--n", 2, "--out", folder) == 2
    _one_line_refusal(capsys, folder)
    assert sorted(p.name for p in folder.iterdir()) == [
        "000000.png",
        "000001.png",
        "000002.png",
        "mine.txt",
    ]
    assert run("sample", trained, "--n", 2, "--out", f"{folder}/", "--overwrite") == 0
    assert sorted(p.name for p in folder.iterdir()) == ["000000.png", "000001.png"]  # whole
    assert not _temporaries(folder)


def test_temperature_changes_the_samples_and_a_bad_one_is_refused_first(
    trained, tmp_path, capsys, monkeypatch
):
    paths = {t: tmp_path / f"t{t}.npz" for t in ("1", "3")}
    for t, path in paths.items():
        assert run("sample", trained, "--n", 64, "--out", path, "--temperature", t) == 0
    cool, warm = (np.load(p)["images"] for p in paths.values())
    assert not np.array_equal(cool, warm)
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        _run_without_model(monkeypatch, "sample", trained, "--grid", tmp_path / "g.png",
                           "--temperature", 0)  # fmt: skip
    assert refused.value.code == 2
    assert "argument --temperature: 0: expected a number > 0" in capsys.readouterr().err


def test_an_existing_grid_is_refused_without_overwrite(trained, tmp_path, capsys, monkeypatch):
    grid = tmp_path / "g.png"
    assert run("sample", trained, "--n", 4, "--grid", grid) == 0
    with Image.open(grid) as image:
        small = image.size
    capsys.readouterr()
    assert (
        _run_without_model(
            monkeypatch, "sample", trained, "--n", 64, "--out", tmp_path / "new.npz", "--grid", grid
        )
        == 2
    )
    _one_line_refusal(capsys, grid, "--grid")
    assert not (tmp_path / "new.npz").exists()  # nothing written when one output is refused
    assert run("sample", trained, "--n", 64, "--grid", grid, "--overwrite") == 0
    with Image.open(grid) as image:
        assert image.size[0] > small[0]


def test_a_file_where_a_folder_is_asked_for_is_refused(trained, tmp_path, capsys):
    (tmp_path / "taken").write_text("")
    assert run("sample", trained, "--out", f"{tmp_path / 'taken'}/", "--overwrite") == 2
    assert "is a file, not a folder" in capsys.readouterr().err


class _FillingDisk:
    """A file whose disk is full once ``budget`` bytes are written through ``files.open``."""

    def __init__(self, handle, budget: dict):
        self._handle, self._budget = handle, budget

    def write(self, data) -> int:
        self._budget["left"] -= len(data)
        if self._budget["left"] < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._handle.write(data)

    def __getattr__(self, name):
        return getattr(self._handle, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._handle.__exit__(*exc)


@pytest.mark.parametrize("out", ["s.npz", "pngs/"])
def test_a_full_disk_while_exporting_is_one_line_and_leaves_nothing(
    trained, tmp_path, capsys, monkeypatch, out
):
    from gankit import files

    budget = {"left": 100_000}  # the disk fills 100 kB into the export
    monkeypatch.setattr(
        files, "open", lambda *a, **k: _FillingDisk(open(*a, **k), budget), raising=False
    )
    final = tmp_path / out.rstrip("/")
    assert run("sample", trained, "--n", 2000, "--out", f"{tmp_path}/{out}") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[Errno 28 ENOSPC] No space left on device" in err
    assert str(final) in err
    assert not final.exists() and not _temporaries(final)  # nothing that looks finished
