"""The evaluator's files: the build's thread count, one build per cache entry at a time, damaged
and uncacheable files, the evaluator shipped in the package, and atomic reports."""

from __future__ import annotations

import errno
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

import gankit.evaluation.evaluator as ev
import gankit.files
import gankit.runs.checkpoint
from gankit.cli import main
from gankit.data import Dataset
from gankit.errors import CheckpointError, StorageError
from gankit.evaluation import evaluate_images, format_report, rows_to_csv, write_report
from gankit.evaluation.evaluator import (
    build_evaluator,
    cache_entry,
    evaluator_key,
    evaluator_path,
    get_evaluator,
    load_evaluator,
    real_features,
    save_evaluator,
    shipped_evaluator,
)
from gankit.runs.checkpoint import read_meta

HERE = Path(__file__).parent
# a recipe that trains in half a second on the small set below
QUICK = {
    "version": 1,
    "layers": ["conv 8 k5 s2 p2", "relu", "flatten", "fc 16", "relu"],
    "epochs": 2,
    "min_steps": 0,
    "batch_size": 32,
    "max_lr": 3e-3,
    "seed": 0,
    "threads": 1,
}


def small_set() -> tuple[Dataset, Dataset]:
    """300 labelled 28×28 images of 3 classes, each marked by a bright band: (train, test)."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(300) % 3
    images = (torch.rand(300, 1, 28, 28, generator=gen) * 60).to(torch.uint8)
    images[:, :, :, :10] += (labels == 0).view(-1, 1, 1, 1).to(torch.uint8) * 150
    images[:, :, :10, :] += (labels == 1).view(-1, 1, 1, 1).to(torch.uint8) * 150
    classes = ["a", "b", "c"]
    return (
        Dataset(images[:240], labels[:240], "small:train", classes),
        Dataset(images[240:], labels[240:], "small:test", classes),
    )


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A private, empty evaluator cache; no write failure reported yet in this process."""
    monkeypatch.setenv("GANKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ev, "_WARNED", set())
    return ev.evaluator_cache()


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".tmp", ".partial")))


def _assert_same_weights(a, b) -> None:
    assert a.state_dict().keys() == b.state_dict().keys()
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key


# --------------------------------------------------------------------------- thread count


@pytest.mark.slow
def test_build_runs_on_the_recipe_thread_count_whatever_others_set(tmp_path):
    """Weights at 1 and 2 threads differ (the rounding of reductions follows the count), so
    neither the caller's count nor another thread's set_num_threads may reach the build."""
    train, test = small_set()
    torch.set_num_threads(2)
    quiet = build_evaluator(train, test, QUICK, progress=False)
    assert torch.get_num_threads() == 2  # the caller's count, given back

    torch.set_num_threads(1)
    from_one = build_evaluator(train, test, QUICK | {"threads": 2}, progress=False)
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)
    other = build_evaluator(train, test, QUICK | {"threads": 2}, progress=False)
    # the test can fail: a 2-thread build differs from the 1-thread one
    assert not all(torch.equal(v, quiet.state_dict()[k]) for k, v in other.state_dict().items())
    _assert_same_weights(from_one, other)

    # a build in a fresh thread while another thread keeps setting 1 and 2 threads: a fresh
    # thread takes torch's process-wide count, which the other one keeps changing
    stop, calls, built = threading.Event(), [0], {}

    def disturb() -> None:
        while not stop.is_set():
            torch.set_num_threads(1 + calls[0] % 2)
            calls[0] += 1

    def build() -> None:
        torch.set_num_threads(2)
        built["net"] = build_evaluator(train, test, QUICK, progress=False)

    disturber, builder = threading.Thread(target=disturb), threading.Thread(target=build)
    disturber.start()
    builder.start()
    builder.join(60)
    stop.set()
    disturber.join()
    torch.set_num_threads(2)
    assert calls[0] > 100 and "net" in built
    _assert_same_weights(quiet, built["net"])
    # the files hold the same weights and description (their bytes differ only in the order
    # safetensors writes the header's metadata keys)
    a, b = (
        save_evaluator(n, tmp_path / f"{i}.safetensors")
        for i, n in enumerate((quiet, built["net"]))
    )
    assert read_meta(a) == read_meta(b)
    _assert_same_weights(load_evaluator(a), load_evaluator(b))


# --------------------------------------------------------------------------- the build lock

# A second process asking for the same evaluator: prints whether it built and what it loaded.
SECOND = f"""
import json, sys
sys.path.insert(0, {str(HERE)!r})
import gankit.evaluation.evaluator as ev
from test_evaluator_files import QUICK, small_set
built = []
real = ev.build_evaluator
ev.build_evaluator = lambda *a, **k: built.append(1) or real(*a, **k)
net = ev.get_evaluator("small", splits=small_set(), recipe=QUICK, progress=False)
print(json.dumps({{"built": len(built), "file": net.info["file"],
                  "weights": ev.weights_digest(net)}}))
"""


def test_second_process_waits_for_the_build_and_loads_its_file(cache):
    train, test = small_set()
    path = evaluator_path("small", evaluator_key(train, test, QUICK))
    with cache_entry(path, "builds the small evaluator") as waited:  # this test builds first
        assert not waited
        leftover = path.with_name(f".{path.name}.0123456789ab.tmp")
        leftover.touch()  # what a killed writer leaves: the next lock holder removes it
        second = subprocess.Popen(
            [sys.executable, "-c", SECOND],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in second.stderr], daemon=True).start()
        first = lines.get(timeout=120)
        assert "waiting: another process builds the small evaluator" in first
        assert f"pid {os.getpid()} on " in first and path.name in first
        net = build_evaluator(train, test, QUICK, progress=False, data="small")
        save_evaluator(net, path)
    out, _ = second.communicate(timeout=120)
    assert second.returncode == 0, out
    assert json.loads(out) == {"built": 0, "file": str(path), "weights": ev.weights_digest(net)}
    assert lines.empty()  # said once
    assert not leftover.exists() and _temporaries(cache) == []


def test_killed_build_leftovers_of_that_entry_are_removed(cache):
    train, test = small_set()
    path = evaluator_path("small", evaluator_key(train, test, QUICK))
    cache.mkdir(parents=True)
    mine = cache / f".{path.name}.0123456789ab.tmp"
    other = cache / ".mnist-28-0123456789abcdef.safetensors.0123456789ab.tmp"
    mine.touch()  # 0 bytes: a build killed before it wrote anything
    other.touch()  # another entry's, perhaps being written right now: left alone
    net = get_evaluator("small", splits=(train, test), recipe=QUICK, progress=False)
    assert net.info["file"] == str(path) and net.info["origin"] == "built here"
    assert _temporaries(cache) == [other.name]


# --------------------------------------------------------------------------- damaged and full


@pytest.mark.parametrize("damage", ["truncated", "flipped byte"])
def test_damaged_cached_evaluator_is_rebuilt_saying_so(cache, capsys, damage):
    splits = small_set()
    first = get_evaluator("small", splits=splits, recipe=QUICK, progress=False)
    path = Path(first.info["file"])
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    else:
        data[-5] ^= 0xFF  # in the last weights
        path.write_bytes(data)
    capsys.readouterr()
    again = get_evaluator("small", splits=splits, recipe=QUICK, progress=False)
    err = capsys.readouterr().err
    reason = {"truncated": "cannot be parsed", "flipped byte": "checksum mismatch"}[damage]
    assert f"the cached evaluator file {path} is damaged (" in err and reason in err
    assert err.rstrip().endswith("rebuilding it") and err.count("\n") == 1
    assert "resume" not in err and "checkpoint in" not in err
    _assert_same_weights(first, again)
    _assert_same_weights(first, load_evaluator(path))  # and the file is whole again


def _full_disk(monkeypatch) -> None:
    """Every file gankit writes through gankit.files fails as on a full disk."""
    real_open = open

    class Full:
        def __init__(self, handle):
            self.handle = handle

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(
        gankit.files, "open", lambda *a, **k: Full(real_open(*a, **k)), raising=False
    )


def _raw_oserror(monkeypatch) -> None:
    """The checkpoint writer fails with a bare OSError (ENOSPC)."""

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gankit.runs.checkpoint, "save_checkpoint", full)


@pytest.mark.parametrize("inject", [_full_disk, _raw_oserror], ids=["StorageError", "OSError"])
def test_full_disk_while_caching_the_evaluator_warns_once_and_goes_on(
    cache, capsys, monkeypatch, inject
):
    inject(monkeypatch)
    train, test = small_set()
    path = evaluator_path("small", evaluator_key(train, test, QUICK))
    nets = [
        get_evaluator("small", splits=(train, test), recipe=QUICK, progress=False) for _ in range(2)
    ]  # not cached, so built twice; warned once
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and err.count("\n") == 1
    assert f"could not write {path}: [Errno 28 ENOSPC]" in err
    assert "Going on with the evaluator in memory" in err
    for net in nets:
        assert net.info["origin"] == "built here" and "file" not in net.info
        assert net.embed(test.images)[1].argmax(1).eq(test.labels).float().mean() > 0.9
    assert not path.exists() and _temporaries(cache) == []


@pytest.mark.parametrize("inject", [_full_disk, _raw_oserror], ids=["StorageError", "OSError"])
def test_full_disk_while_caching_real_features_warns_and_goes_on(
    cache, capsys, monkeypatch, inject
):
    train, test = small_set()
    net = build_evaluator(train, test, QUICK, progress=False)
    inject(monkeypatch)
    got = real_features(net, test)
    err = capsys.readouterr().err
    assert err.count("warning") == 1 and "[Errno 28 ENOSPC]" in err
    assert f"{cache}/features-{ev.weights_digest(net)}-" in err
    torch.testing.assert_close(got.features, net.embed(test.images)[0], rtol=0, atol=0)
    assert not list(cache.glob("features-*")) and _temporaries(cache) == []


def test_reports_and_csv_are_written_whole_and_a_full_disk_names_the_file(tmp_path, monkeypatch):
    report, rows = tmp_path / "eval.json", [{"run": "a", "fid": 1.5}, {"run": "b", "fid": 2.0}]
    write_report({"fid": float("inf")}, report)
    rows_to_csv(rows, tmp_path / "table.csv")
    assert json.loads(report.read_text()) == {"fid": "inf"}
    assert (tmp_path / "table.csv").read_text() == "run,fid\na,1.5\nb,2.0\n"

    _full_disk(monkeypatch)
    with pytest.raises(
        StorageError,
        match=rf"could not write {re.escape(str(report))}: "
        r"\[Errno 28 ENOSPC\].*free some disk space",
    ):
        write_report({"fid": 3.0}, report)
    with pytest.raises(StorageError, match=r"table\.csv: \[Errno 28 ENOSPC\]"):
        rows_to_csv(rows[:1], tmp_path / "table.csv")
    assert json.loads(report.read_text()) == {"fid": "inf"}  # the previous files, intact
    assert (tmp_path / "table.csv").read_text() == "run,fid\na,1.5\nb,2.0\n"
    assert _temporaries(tmp_path) == []


def test_cached_features_follow_the_weights_not_only_the_key(cache):
    """Two builds under one key (another machine's rounding, a --rebuild) have other weights:
    each gets its own real features."""
    train, test = small_set()
    net = build_evaluator(train, test, QUICK, progress=False)
    other = build_evaluator(train, test, QUICK, progress=False)
    with torch.no_grad():
        other.head.bias.add_(1.0)
        other.body[0].weight.mul_(1.5)
    assert other.info["key"] == net.info["key"]
    a, b = real_features(net, test), real_features(other, test)
    assert len(list(cache.glob("features-*"))) == 2
    assert not torch.equal(a.features, b.features)
    torch.testing.assert_close(real_features(other, test).features, b.features)


# --------------------------------------------------------------------------- shipped evaluator


def test_session_evaluation_uses_the_shipped_evaluator(evaluation, capsys):
    """The real data and RECIPE give the key of the file in the package, so the tests (and
    every user) measure with the shipped weights."""
    net = evaluation.evaluator
    key = net.info["key"]
    name, sha = ev.SHIPPED[key]
    assert net.info["origin"] == "shipped"
    assert Path(net.info["file"]) == ev.SHIPPED_DIR / name and net.info["sha256"] == sha
    assert name == f"fashion-mnist-28-{key}.safetensors" and net.info["recipe"] == ev.RECIPE
    assert "shipped" in net.name

    report = evaluate_images(evaluation, evaluation.train.images[:200])
    assert report["evaluator"]["origin"] == "shipped" and report["evaluator"]["key"] == key
    assert f"evaluator fashion-mnist {key} (shipped), test accuracy" in format_report(report)
    assert main(["evaluator", "info", net.info["file"]]) == 0
    assert '"origin": "shipped"' in capsys.readouterr().out


def test_shipped_evaluator_with_a_flipped_byte_is_refused(
    evaluation, data_dir, tmp_path, monkeypatch
):
    key = evaluation.evaluator.info["key"]
    name = ev.SHIPPED[key][0]
    good = shipped_evaluator(key, folder=ev.SHIPPED_DIR)
    shutil.copy(ev.SHIPPED_DIR / name, tmp_path / name)
    assert shipped_evaluator(key, folder=tmp_path).info["origin"] == "shipped"
    data = bytearray((tmp_path / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (tmp_path / name).write_bytes(bytes(data))
    with pytest.raises(
        CheckpointError,
        match=rf"shipped evaluator {tmp_path / name} is "
        "damaged.*reinstall gankit",
    ):
        shipped_evaluator(key, folder=tmp_path)
    monkeypatch.setattr(ev, "SHIPPED_DIR", tmp_path)  # what get_evaluator would meet
    with pytest.raises(CheckpointError, match="reinstall gankit"):
        get_evaluator("fashion-mnist", str(data_dir), progress=False)
    (tmp_path / name).unlink()
    with pytest.raises(CheckpointError, match="cannot be read.*reinstall gankit"):
        shipped_evaluator(key, folder=tmp_path)
    assert good.info["origin"] == "shipped"


def test_a_copy_built_here_says_so(evaluation, tmp_path):
    """A file with other bytes than the shipped one (here: the same weights, saved again with
    a changed description) is "built here"."""
    net = evaluation.evaluator
    copy = load_evaluator(net.info["file"])
    copy.info["note"] = "a copy"
    path = save_evaluator(copy, tmp_path / "copy.safetensors")
    loaded = load_evaluator(path)
    assert loaded.info["origin"] == "built here" and loaded.info["file"] == str(path)
    assert "note" in read_meta(path)["info"] and "origin" not in read_meta(path)["info"]
    assert ev.describe(loaded)["origin"] == "built here"
