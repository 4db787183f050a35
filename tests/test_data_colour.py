"""Tests of colour in gankit.data: folders of colour images, channel conversion, npz layouts,
CIFAR-10's binary distribution (found, read strictly, downloaded from a local HTTP server,
unpacked safely) and data_shape for every source.

The CIFAR-10 batch files here are real-sized: the reader insists on exactly 10,000 records
per file, as the format does, so the tests build six files of 10,000 tinted garments each
(30.7 MB apiece, once per module) rather than teaching the reader a smaller test size.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import tint
from PIL import Image, ImageFile

from gankit.data import (
    cifar,
    class_names,
    data_shape,
    dataset_search_dirs,
    load_dataset,
    named,
    npz,
    read_cifar_batch,
    to_channels,
)
from gankit.errors import DataError

BATCHES = (*cifar.SPLITS["train"], *cifar.SPLITS["test"])
OFFICIAL_META = "\n".join(cifar.CLASSES) + "\n\n"  # the real file ends with blank lines
RECORD = 3073


@pytest.fixture(autouse=True)
def cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private cache per test, offline, no data dir, no mirror, no system copies."""
    for var in ("GANKIT_DATA", "GANKIT_MIRROR", "XDG_CACHE_HOME", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(var, raising=False)
    root = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("GANKIT_CACHE", str(root))
    monkeypatch.setenv("GANKIT_OFFLINE", "1")
    monkeypatch.setitem(named.SYSTEM_DATA_DIRS, "cifar10", (root.parent / "no-system-copy",))
    return root


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GANKIT_OFFLINE")


@pytest.fixture
def serve() -> Iterator:
    """``serve(folder)`` starts an HTTP server on 127.0.0.1: (base url, paths asked, stop)."""
    servers: list[ThreadingHTTPServer] = []

    def stop(server: ThreadingHTTPServer) -> None:
        if server in servers:
            servers.remove(server)
            server.shutdown()
            server.server_close()

    def start(root: Path):
        asked: list[str] = []

        class Handler(SimpleHTTPRequestHandler):
            def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
                asked.append(self.path)  # once per request, whatever its answer

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass  # quiet

        server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/", asked, partial(stop, server)

    yield start
    for server in list(servers):
        stop(server)


def _link(source: Path, target: Path) -> None:
    """``target`` holds ``source``'s bytes (a hard link: no 30 MB copy)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        target.write_bytes(source.read_bytes())


# ----------------------------------------------------------------------------------------------
# CIFAR-10 files in the official binary format
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar_files(tinted, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """root/cifar-10-batches-bin/ as `tar xzf cifar-10-binary.tar.gz` leaves it: six batch
    files of 10,000 records (label byte, R, G and B planes) of tinted garments, the class
    names and a readme; ``images``/``labels``: all 60,000 records in file order."""
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-bin"
    folder.mkdir()
    source = (torch.arange(60_000) * 1919) % 6000  # every batch a different permutation
    images, labels = tinted.images[source], tinted.labels[source]  # (60000, 3, 32, 32)
    for b, fname in enumerate(BATCHES):
        rows = slice(b * 10_000, (b + 1) * 10_000)
        records = np.empty((10_000, RECORD), dtype=np.uint8)
        records[:, 0] = labels[rows].numpy()
        records[:, 1:] = images[rows].reshape(10_000, -1).numpy()  # R plane, G plane, B plane
        (folder / fname).write_bytes(records.tobytes())
    (folder / "batches.meta.txt").write_text(OFFICIAL_META)
    (folder / "readme.html").write_text("<p>not needed</p>")
    return SimpleNamespace(root=root, folder=folder, images=images, labels=labels)


@pytest.fixture(scope="module")
def cifar_archive(cifar_files, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """served/cifar-10-binary.tar.gz holding cifar_files' folder, and its SHA-256."""
    served = tmp_path_factory.mktemp("served")
    path = served / cifar.ARCHIVE
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        for fname in ("batches.meta.txt", *BATCHES, "readme.html"):
            tar.add(cifar_files.folder / fname, f"cifar-10-batches-bin/{fname}")
    return SimpleNamespace(folder=served, path=path, sha256=_sha256(path))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _luma(rgb: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> (N, 1, H, W) by Pillow's own convert("L")."""
    grey = [np.asarray(Image.fromarray(img.permute(1, 2, 0).numpy()).convert("L")) for img in rgb]
    return torch.from_numpy(np.stack(grey))[:, None]


def test_cifar10_from_gankit_data(cifar_files, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GANKIT_DATA", str(cifar_files.root))  # root/cifar-10-batches-bin/
    train = load_dataset("cifar10", "train", image_size=32)
    assert train.images.shape == (50_000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert torch.equal(train.images, cifar_files.images[:50_000])
    assert torch.equal(train.labels, cifar_files.labels[:50_000])
    assert train.classes == list(cifar.CLASSES) == class_names("cifar10")
    assert (train.name, train.source, train.split) == ("cifar10:train", "cifar10", "train")
    test = load_dataset("cifar10", "test", image_size=32)
    assert torch.equal(test.images, cifar_files.images[50_000:]) and len(test) == 10_000
    assert test.labels.dtype == torch.int64
    assert torch.equal(test.labels, cifar_files.labels[50_000:])
    assert load_dataset("cifar10", "test", image_size=16).images.shape == (10_000, 3, 16, 16)
    grey = load_dataset("cifar10", "test", image_size=32, channels=1)
    assert grey.images.shape == (10_000, 1, 32, 32)
    assert torch.equal(grey.images[:50], _luma(cifar_files.images[50_000:50_050]))
    with pytest.raises(DataError, match=r"cifar10 has no split 'valid' \(splits: train, test\)"):
        load_dataset("cifar10", "valid")


def test_cifar10_search_dirs_and_their_order(
    cifar_files, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert dataset_search_dirs("cifar10", tmp_path) == [
        tmp_path / "cifar10",
        tmp_path / "cifar-10-batches-bin",
        tmp_path / "cifar10" / "cifar-10-batches-bin",
        tmp_path,
        cache / "cifar10",
        cache.parent / "no-system-copy",
    ]
    test_batch = cifar_files.folder / "test_batch.bin"
    _link(test_batch, tmp_path / "mine" / "cifar10" / "cifar-10-batches-bin" / "test_batch.bin")
    ds = load_dataset("cifar10", "test", tmp_path / "mine", image_size=32)
    assert torch.equal(ds.images, cifar_files.images[50_000:])
    # the data dir argument wins over $GANKIT_DATA, as for MNIST
    monkeypatch.setenv("GANKIT_DATA", str(tmp_path / "elsewhere"))
    assert len(load_dataset("cifar10", "test", tmp_path / "mine")) == 10_000
    with pytest.raises(DataError, match="could not find test_batch.bin"):
        load_dataset("cifar10", "test")


def test_cifar10_class_names_come_from_batches_meta(cifar_files, tmp_path: Path) -> None:
    _link(cifar_files.folder / "test_batch.bin", tmp_path / "cifar10" / "test_batch.bin")
    assert load_dataset("cifar10", "test", tmp_path).classes == list(cifar.CLASSES)  # no meta
    meta = tmp_path / "cifar10" / "batches.meta.txt"
    meta.write_text("\n".join(f"class {c}" for c in "abcdefghij") + "\n\n")
    assert load_dataset("cifar10", "test", tmp_path).classes[:2] == ["class a", "class b"]
    meta.write_text("plane\ncar\n")
    with pytest.raises(DataError, match=r"batches.meta.txt: expected 10 class names.*found 2"):
        load_dataset("cifar10", "test", tmp_path)


@pytest.mark.parametrize(
    ("damage", "phrase"),
    [
        (
            lambda b: b[:-100],
            "truncated: 30,729,900 bytes (9,999 records of 3,073 bytes, not even a whole "
            "number of records); a CIFAR-10 batch file is exactly 10,000 records",
        ),
        (lambda b: b[:-RECORD], "truncated: 30,726,927 bytes (9,999 records of 3,073 bytes)"),
        (lambda b: b + b[:RECORD], "too long: 30,733,073 bytes (10,001 records"),
        (lambda b: b[:0], "truncated: 0 bytes"),
        (
            lambda b: b[: 17 * RECORD] + bytes([12]) + b[17 * RECORD + 1 :],
            "record 17 (byte 52,241) has label 12, outside 0..9; 1 of the 10,000 records has "
            "a bad label: a corrupt file",
        ),
    ],
    ids=["cut", "record-short", "record-long", "empty", "bad-label"],
)
def test_cifar10_damaged_batch_is_named(cifar_files, tmp_path: Path, damage, phrase) -> None:
    good = (cifar_files.folder / "test_batch.bin").read_bytes()
    path = tmp_path / "cifar10" / "test_batch.bin"
    path.parent.mkdir()
    path.write_bytes(damage(good))
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", "test", tmp_path)
    assert str(info.value).startswith(f"{path}: ")
    assert phrase in str(info.value)
    with pytest.raises(DataError, match="cannot read"):
        read_cifar_batch(tmp_path / "absent.bin")


def test_cifar10_not_found_says_where_it_looked(cifar_files, tmp_path: Path) -> None:
    _link(cifar_files.folder / "data_batch_1.bin", tmp_path / "cifar10" / "data_batch_1.bin")
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", "train", tmp_path)
    message = str(info.value)
    for place in dataset_search_dirs("cifar10", tmp_path):
        assert str(place) in message
    assert "(has data_batch_1.bin but not data_batch_2.bin, data_batch_3.bin" in message
    assert "Download: skipped (GANKIT_OFFLINE is set)" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz" in message
    assert "--data-dir DIR" in message and "GANKIT_DATA=DIR" in message
    with pytest.raises(DataError, match=r"Download: skipped \(download=False\)"):
        load_dataset("cifar10", "test", tmp_path, download=False)


def test_cifar10_archive_in_the_data_dir_is_unpacked_into_the_cache(
    cifar_files, cifar_archive, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = tmp_path / "data" / cifar.ARCHIVE
    _link(cifar_archive.path, mine)
    with pytest.raises(DataError, match=f"{mine}: sha256 {cifar_archive.sha256}, not the offi"):
        load_dataset("cifar10", "test", tmp_path / "data")  # not the official archive
    monkeypatch.setattr(cifar, "ARCHIVE_SHA256", cifar_archive.sha256)
    ds = load_dataset("cifar10", "test", tmp_path / "data", image_size=32)  # offline
    assert torch.equal(ds.images, cifar_files.images[50_000:])
    assert mine.is_file()  # the user's archive stays
    assert sorted(p.name for p in (cache / "cifar10").iterdir()) == sorted(
        [*BATCHES, "batches.meta.txt"]
    )


# ----------------------------------------------------------------------------------------------
# CIFAR-10 downloads from a local server
# ----------------------------------------------------------------------------------------------


@pytest.mark.usefixtures("online")
def test_cifar10_download_unpacks_into_the_cache(
    cifar_files, cifar_archive, tmp_path: Path, cache: Path, serve, monkeypatch
) -> None:
    url, asked, stop = serve(cifar_archive.folder)
    monkeypatch.setenv("GANKIT_MIRROR", url)
    monkeypatch.setattr(cifar, "ARCHIVE_SHA256", cifar_archive.sha256)
    ds = load_dataset("cifar10", "test", tmp_path / "nothing", image_size=32)
    assert torch.equal(ds.images, cifar_files.images[50_000:])
    assert asked == [f"/{cifar.ARCHIVE}"]
    # the seven members, each whole; the archive itself and the readme are not kept
    held = sorted(p.name for p in (cache / "cifar10").iterdir())
    assert held == sorted([*BATCHES, "batches.meta.txt"])
    for fname in BATCHES:
        assert _sha256(cache / "cifar10" / fname) == _sha256(cifar_files.folder / fname)
    stop()
    train = load_dataset("cifar10", "train", tmp_path / "nothing", image_size=32)  # cached
    assert torch.equal(train.labels, cifar_files.labels[:50_000])


@pytest.mark.usefixtures("online")
def test_cifar10_download_of_another_archive_keeps_nothing(
    cifar_archive, tmp_path: Path, cache: Path, serve, monkeypatch
) -> None:
    url, _, _ = serve(cifar_archive.folder)  # our archive, not the official one
    monkeypatch.setenv("GANKIT_MIRROR", url)
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", "test", tmp_path)
    message = str(info.value)
    assert f"{url}{cifar.ARCHIVE}: sha256 mismatch: expected {cifar.ARCHIVE_SHA256}" in message
    assert f"got {cifar_archive.sha256}" in message and "Looked in:" in message
    assert not (cache / "cifar10").exists()
    assert cifar.ARCHIVE_SHA256.startswith("c4a38c50a1bc5f3a")  # the official one, unpatched


@pytest.mark.usefixtures("online")
def test_cifar10_corrupt_archive_keeps_nothing(
    cifar_archive, tmp_path: Path, cache: Path, serve, monkeypatch
) -> None:
    served = tmp_path / "served"
    cut = cifar_archive.path.read_bytes()
    (served / cifar.ARCHIVE).parent.mkdir()
    (served / cifar.ARCHIVE).write_bytes(cut[: len(cut) * 2 // 3])  # some members, then EOF
    url, _, _ = serve(served)
    monkeypatch.setenv("GANKIT_MIRROR", url)
    monkeypatch.setattr(cifar, "ARCHIVE_SHA256", _sha256(served / cifar.ARCHIVE))
    with pytest.raises(DataError, match=f"{cache / 'cifar10' / cifar.ARCHIVE}: cannot unpack"):
        load_dataset("cifar10", "test", tmp_path)
    assert not (cache / "cifar10").exists()


@pytest.mark.usefixtures("online")
def test_cifar10_download_gone(tmp_path: Path, cache: Path, serve, monkeypatch) -> None:
    (tmp_path / "empty").mkdir()
    url, asked, _ = serve(tmp_path / "empty")  # answers 404
    monkeypatch.setenv("GANKIT_MIRROR", url)
    with pytest.raises(DataError) as info:
        load_dataset("cifar10", "train", tmp_path)
    message = str(info.value)
    assert f"Download failed:\n  {url}{cifar.ARCHIVE}: download failed: HTTP Error 404" in message
    assert "Looked in:" in message and str(cache / "cifar10") in message
    assert asked == [f"/{cifar.ARCHIVE}"]
    assert not (cache / "cifar10").exists()


def _tar_gz(path: Path, members: list[tarfile.TarInfo]) -> Path:
    """A .tar.gz of `members`; a regular file's content is `size` bytes of 1s."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(b"\x01" * member.size) if member.isreg() else None)
    return path


def _member(name: str, size: int = 4, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.type = size, kind
    if kind == tarfile.SYMTYPE:
        info.size, info.linkname = 0, "/etc/passwd"
    return info


@pytest.mark.usefixtures("online")
def test_cifar10_archive_with_a_parent_path_member_is_refused(
    tmp_path: Path, cache: Path, serve, monkeypatch
) -> None:
    archive = _tar_gz(
        tmp_path / "served" / cifar.ARCHIVE,
        [_member("cifar-10-batches-bin/batches.meta.txt"), _member("../evil.bin")],
    )
    url, _, _ = serve(archive.parent)
    monkeypatch.setenv("GANKIT_MIRROR", url)
    monkeypatch.setattr(cifar, "ARCHIVE_SHA256", _sha256(archive))
    with pytest.raises(DataError, match=r"unsafe member name '\.\./evil\.bin'; archive refused"):
        load_dataset("cifar10", "test", tmp_path / "nothing")
    assert not (cache / "cifar10").exists()  # the meta written first is gone again
    assert list(tmp_path.rglob("evil.bin")) == [] and list(cache.parent.rglob("evil.bin")) == []


@pytest.mark.parametrize(
    ("member", "phrase"),
    [
        (_member("cifar-10-batches-bin/../../evil.bin"), "unsafe member name"),
        (_member("/tmp/evil.bin"), "unsafe member name"),
        (_member("cifar-10-batches-bin/test_batch.bin", 0, tarfile.SYMTYPE), "not a regular"),
        (_member("cifar-10-batches-bin/test_batch.bin", 10), "holds 10 bytes; expected 30,730,000"),
        (_member("cifar-10-batches-bin/readme.html"), "no data_batch_1.bin, data_batch_2.bin"),
    ],
    ids=["dotdot", "absolute", "symlink", "short-member", "no-batches"],
)
def test_cifar10_unpack_refuses(tmp_path: Path, member: tarfile.TarInfo, phrase: str) -> None:
    archive = _tar_gz(tmp_path / "in" / cifar.ARCHIVE, [member])
    with pytest.raises(DataError, match=phrase):
        cifar._unpack(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    assert list(tmp_path.rglob("evil.bin")) == []


def test_cifar10_names() -> None:
    assert data_shape("cifar10") == (3, 32) and data_shape("CIFAR10 ") == (3, 32)
    assert class_names("cifar10")[0] == "airplane" and class_names("cifar10")[9] == "truck"
    with pytest.raises(DataError, match=r"mnist-5k, cifar10, folder:PATH.*'cifar10'\?"):
        load_dataset("cifar-10")
    with pytest.raises(DataError, match=r"Did you mean 'cifar10'\?"):
        data_shape("cifar")


# ----------------------------------------------------------------------------------------------
# folder:PATH in colour
# ----------------------------------------------------------------------------------------------


def _hwc(chw: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(chw.permute(1, 2, 0).numpy())


def _centre_resized(pixels: np.ndarray, size: int) -> np.ndarray:
    """What a folder should give for decoded pixels (H, W[, 3]): the centre square, Lanczos
    resized, as (C, size, size)."""
    h, w = pixels.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    im = Image.fromarray(pixels).crop((left, top, left + side, top + side))
    if side != size:
        im = im.resize((size, size), Image.Resampling.LANCZOS)
    out = np.asarray(im)
    return out[None] if out.ndim == 2 else out.transpose(2, 0, 1)


def _save(pixels: np.ndarray | Image.Image, path: Path, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)
    im.save(path, **options)
    return path


def _mode(path: Path) -> str:
    with Image.open(path) as im:
        return im.mode


def test_folder_of_colour_images_keeps_colour(tinted, fashion, tmp_path: Path) -> None:
    big = tint(fashion.images[:8], fashion.labels[:8], size=48, seed=1)  # (8, 3, 48, 48)
    # the tinted garment (28x28 at 2..30) with the garment itself as alpha, clear around it
    rgba = np.dstack([_hwc(tinted.images[2])[2:30, 2:30], fashion.images[2, 0].numpy()])
    rgba = np.pad(rgba, ((2, 2), (2, 2), (0, 0)))  # (32, 32, 4)
    grey_rgb = np.repeat(fashion.images[5, 0, :, :26, None].numpy(), 3, axis=2)  # 28 x 26
    files = {
        "a/0.png": _hwc(tinted.images[0]),  # RGB, already 32x32
        "a/1.png": _hwc(big[1])[4:44],  # RGB, 48 wide x 40 high
        "a/2.png": rgba,  # RGBA
        "b/3.png": Image.fromarray(_hwc(tinted.images[3])).quantize(32),  # P, a colour palette
        "b/4.png": fashion.images[4, 0].numpy(),  # L, 28x28
        "b/5.png": grey_rgb,  # RGB of grey pixels
        "b/6.jpg": _hwc(big[6])[:, 3:],  # JPEG, 45 wide x 48 high
    }
    for name, pixels in files.items():
        _save(pixels, tmp_path / name, **({"quality": 90} if name.endswith("jpg") else {}))
    ds = load_dataset(f"folder:{tmp_path}", image_size=32)
    assert ds.images.shape == (7, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.classes == ["a", "b"] and ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    got = ds.images.numpy()
    np.testing.assert_array_equal(got[0], tinted.images[0].numpy())  # exactly the pixels
    np.testing.assert_array_equal(got[1], _centre_resized(files["a/1.png"], 32))
    alpha = rgba[..., 3:].astype(np.uint16)
    onto_black = ((rgba[..., :3] * alpha + 127) // 255).astype(np.uint8)
    np.testing.assert_array_equal(got[2], onto_black.transpose(2, 0, 1))
    palette_rgb = np.asarray(files["b/3.png"].convert("RGB"))  # (32, 32, 3)
    np.testing.assert_array_equal(got[3], palette_rgb.transpose(2, 0, 1))
    resized_l = _centre_resized(files["b/4.png"], 32)  # (1, 32, 32), repeated in each channel
    np.testing.assert_array_equal(got[4], np.repeat(resized_l, 3, axis=0))
    np.testing.assert_array_equal(got[5], np.repeat(_centre_resized(grey_rgb[..., 0], 32), 3, 0))
    with Image.open(tmp_path / "b/6.jpg") as jpeg:
        decoded = np.asarray(jpeg.convert("RGB"))
    np.testing.assert_array_equal(got[6], _centre_resized(decoded, 32))
    # Forced to grey: Pillow's luma of the colour images; forced to RGB: the same as stored.
    grey = load_dataset(f"folder:{tmp_path}", image_size=32, channels=1)
    assert grey.images.shape == (7, 1, 32, 32)
    assert torch.equal(grey.images, _luma(ds.images))
    assert torch.equal(load_dataset(f"folder:{tmp_path}", image_size=32, channels=3).images,
                       ds.images)  # fmt: skip
    assert data_shape(f"folder:{tmp_path}") == (3, 26)  # the 28x26 image's shortest side


def test_folder_centre_crop_of_non_square_images(tinted, fashion, tmp_path: Path) -> None:
    big = _hwc(tint(fashion.images[:1], fashion.labels[:1], size=48, seed=2)[0])  # 48x48x3
    _save(big[4:44], tmp_path / "wide.png")  # 40 high, 48 wide: columns 4..43 are kept
    _save(big[:40, :41], tmp_path / "odd.png")  # 41 wide: the extra last column goes
    _save(big[:45, :40], tmp_path / "tall.png")  # 45 high: rows 2..41 are kept
    ds = load_dataset(f"folder:{tmp_path}", image_size=40)  # the crops need no resizing
    odd, tall, wide = ds.images.numpy()  # files by name
    np.testing.assert_array_equal(wide, big[4:44, 4:44].transpose(2, 0, 1))
    np.testing.assert_array_equal(odd, big[:40, :40].transpose(2, 0, 1))
    np.testing.assert_array_equal(tall, big[2:42, :40].transpose(2, 0, 1))
    assert data_shape(f"folder:{tmp_path}") == (3, 40)


def test_folder_of_grey_files_in_any_mode_is_grey(fashion, tmp_path: Path) -> None:
    garment = fashion.images[0, 0].numpy()  # (28, 28)
    _save(garment, tmp_path / "0-L.png")
    _save(np.repeat(garment[..., None], 3, axis=2), tmp_path / "1-grey-rgb.png")
    _save(Image.fromarray(garment).convert("P"), tmp_path / "2-grey-palette.png")
    la = np.dstack([garment, np.full_like(garment, 255)])
    la[0, 0, 1] = 0  # one transparent pixel: black
    _save(la, tmp_path / "3-LA.png")  # (H, W, 2): mode LA
    _save(Image.fromarray(garment > 127), tmp_path / "4-1bit.png")  # mode 1
    _save(garment.astype(np.uint16) * 257, tmp_path / "5-16bit.png")  # I;16, 0..65535
    _save(np.repeat(garment[..., None], 3, axis=2), tmp_path / "6-grey.jpg", quality=95)
    assert (_mode(tmp_path / "5-16bit.png"), _mode(tmp_path / "4-1bit.png")) == ("I;16", "1")
    ds = load_dataset(f"folder:{tmp_path}", image_size=28)
    assert ds.images.shape == (7, 1, 28, 28) and ds.labels is None
    for index in (0, 1, 2, 5):  # lossless: exactly the garment (16-bit scaled back to 8)
        np.testing.assert_array_equal(ds.images[index, 0].numpy(), garment)
    expected_la = garment.copy()
    expected_la[0, 0] = 0
    np.testing.assert_array_equal(ds.images[3, 0].numpy(), expected_la)
    assert set(ds.images[4].unique().tolist()) == {0, 255}
    np.testing.assert_array_equal(ds.images[4, 0].numpy() == 255, garment > 127)
    assert data_shape(f"folder:{tmp_path}") == (1, 28)
    coloured = load_dataset(f"folder:{tmp_path}", image_size=28, channels=3).images
    assert coloured.shape == (7, 3, 28, 28) and torch.equal(coloured, ds.images.repeat(1, 3, 1, 1))


def test_folder_splits_share_their_channels(tinted, fashion, tmp_path: Path) -> None:
    _save(fashion.images[0, 0].numpy(), tmp_path / "train" / "a" / "grey.png")  # L, 28x28
    _save(_hwc(tinted.images[1]), tmp_path / "test" / "a" / "colour.png")  # RGB, 32x32
    train = load_dataset(f"folder:{tmp_path}", "train", image_size=28)
    assert train.images.shape == (1, 3, 28, 28)  # colour, because test/ is
    assert torch.equal(train.images, fashion.images[:1].repeat(1, 3, 1, 1))
    test = load_dataset(f"folder:{tmp_path}", "test", image_size=32)
    assert torch.equal(test.images, tinted.images[1:2])
    assert data_shape(f"folder:{tmp_path}") == (3, 28)
    (tmp_path / "test" / "a" / "colour.png").unlink()
    _save(fashion.images[1, 0].numpy()[:20], tmp_path / "test" / "a" / "grey.png")
    assert load_dataset(f"folder:{tmp_path}", "train").images.shape == (1, 1, 28, 28)
    assert data_shape(f"folder:{tmp_path}") == (1, 20)


def test_folder_transparency_is_composited_onto_black(tmp_path: Path) -> None:
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[..., 3] = [[255, 128], [0, 1]]
    _save(rgba, tmp_path / "a-rgba.png")
    palette = Image.fromarray(np.array([[0, 1], [1, 1]], np.uint8), "P")
    palette.putpalette([250, 10, 10, 10, 250, 10])
    _save(palette, tmp_path / "b-p-transparent.png", transparency=0)  # index 0: transparent
    grey = np.array([[32, 64], [96, 32]], np.uint8)
    _save(grey, tmp_path / "c-l-transparent.png", transparency=32)  # grey 32: transparent
    ds = load_dataset(f"folder:{tmp_path}", image_size=2)
    assert ds.images.shape == (3, 3, 2, 2)
    rgb = ds.images.permute(0, 2, 3, 1).tolist()  # (N, H, W, 3)
    # c' = round(c * alpha / 255): 200*128/255 = 100.4, 100*128/255 = 50.2, 50*128/255 = 25.1
    assert rgb[0] == [[[200, 100, 50], [100, 50, 25]], [[0, 0, 0], [1, 0, 0]]]
    assert rgb[1] == [[[0, 0, 0], [10, 250, 10]], [[10, 250, 10], [10, 250, 10]]]
    assert rgb[2] == [[[0, 0, 0], [64, 64, 64]], [[96, 96, 96], [0, 0, 0]]]


def test_folder_cmyk_and_float_modes(tmp_path: Path) -> None:
    _save(Image.new("CMYK", (3, 3), (255, 0, 0, 0)), tmp_path / "cyan.tif")
    ds = load_dataset(f"folder:{tmp_path}", image_size=3)
    assert ds.images.shape == (1, 3, 3, 3)
    assert ds.images[0, :, 1, 1].tolist() == [0, 255, 255]
    assert data_shape(f"folder:{tmp_path}") == (3, 3)
    _save(Image.fromarray(np.zeros((3, 3), np.float32)), tmp_path / "float.tif")
    with pytest.raises(DataError, match=r"float.tif: 32-bit float pixels \(mode F\)"):
        load_dataset(f"folder:{tmp_path}", image_size=3)


def test_folder_shape_reads_headers_and_decodes_as_few_as_needed(
    tinted, fashion, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grey = fashion.images[0, 0].numpy()
    _save(grey, tmp_path / "0-L-28.png")
    _save(np.repeat(grey[..., None], 3, axis=2)[:, :27], tmp_path / "1-grey-rgb.png")
    _save(_hwc(tinted.images[0]), tmp_path / "2-colour.png")
    _save(_hwc(tinted.images[1])[:30], tmp_path / "3-colour-30.png")
    _save(grey[:25], tmp_path / "4-L-25.png")
    decoded: list[str] = []  # files whose pixels were decoded, in order
    opened: list[ImageFile.ImageFile] = []
    real_load = ImageFile.ImageFile.load

    def counting_load(self):
        if not any(self is other for other in opened):  # the first load of this file
            opened.append(self)
            decoded.append(Path(self.filename).name)
        return real_load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    assert data_shape(f"folder:{tmp_path}") == (3, 25)
    # L files: the header says enough; the grey RGB file must be looked at, and the first
    # colour one settles it: the second colour file is never decoded.
    assert decoded == ["1-grey-rgb.png", "2-colour.png"]
    decoded.clear()
    (tmp_path / "2-colour.png").unlink()
    (tmp_path / "3-colour-30.png").unlink()
    assert data_shape(f"folder:{tmp_path}") == (1, 25)
    assert decoded == ["1-grey-rgb.png"]


def test_folder_errors_name_the_file(tmp_path: Path) -> None:
    _save(np.zeros((8, 8, 3), np.uint8), tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"not an image at all")
    for call in (lambda: load_dataset(f"folder:{tmp_path}", image_size=8),
                 lambda: data_shape(f"folder:{tmp_path}")):  # fmt: skip
        with pytest.raises(DataError, match=f"{tmp_path / 'b.png'}: cannot read the image"):
            call()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no images"):
        data_shape(f"folder:{tmp_path / 'empty'}")
    with pytest.raises(DataError, match="is not a folder"):
        data_shape(f"folder:{tmp_path / 'absent'}")


@pytest.mark.parametrize("channels", [2, 4, -1, True, 3.0, "3"])
def test_channels_must_be_0_1_or_3(channels) -> None:
    with pytest.raises(DataError, match=r"channels must be 0 \(as stored\), 1 \(grey\) or 3"):
        load_dataset("mnist", channels=channels)


def test_to_channels_matches_pillow_and_repeats_grey(data_dir: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (4100, 3, 2, 3), generator=gen, dtype=torch.uint8)  # > 1 chunk
    assert torch.equal(to_channels(rgb, 1), _luma(rgb))
    assert to_channels(rgb, 3) is rgb and to_channels(rgb, 0) is rgb
    grey = to_channels(rgb, 1)
    assert torch.equal(to_channels(grey, 3), grey.expand(-1, 3, -1, -1))
    fashion = load_dataset("fashion-mnist", "test", data_dir, channels=3)
    assert fashion.images.shape == (10_000, 3, 28, 28)
    assert torch.equal(fashion.images[:, 0], fashion.images[:, 2])
    assert int(fashion.images.max()) == 255


# ----------------------------------------------------------------------------------------------
# npz:PATH in colour
# ----------------------------------------------------------------------------------------------


def _npz(path: Path, **arrays: np.ndarray) -> str:
    np.savez(path, **arrays)
    return f"npz:{path}"


def _never_read(self, key):  # stands in for NpzFile.__getitem__
    raise AssertionError(f"{key!r} was decompressed; the header should have been enough")


def test_npz_layouts_give_identical_tensors(tinted, tmp_path: Path) -> None:
    rgb = tinted.images[:6].numpy()  # (6, 3, 32, 32)
    labels = tinted.labels[:6].numpy()
    layouts = {
        "nchw": rgb,
        "nhwc": rgb.transpose(0, 2, 3, 1),
        "float-nhwc": rgb.transpose(0, 2, 3, 1) / 255.0,
        "float32-nchw": (rgb / 255.0).astype(np.float32),
    }
    for name, images in layouts.items():
        ds = load_dataset(
            _npz(tmp_path / f"{name}.npz", images=images, labels=labels), image_size=32
        )
        assert ds.images.shape == (6, 3, 32, 32) and ds.images.is_contiguous(), name
        assert torch.equal(ds.images, tinted.images[:6]), name
        assert ds.labels.tolist() == labels.tolist()
        assert data_shape(f"npz:{tmp_path / f'{name}.npz'}") == (3, 32)
    grey = rgb[:, 0]  # (6, 32, 32)
    for name, images in {"nhw": grey, "n1hw": grey[:, None], "nhw1": grey[..., None]}.items():
        ds = load_dataset(_npz(tmp_path / f"{name}.npz", images=images), image_size=32)
        assert ds.images.shape == (6, 1, 32, 32) and torch.equal(
            ds.images[:, 0], torch.from_numpy(grey)
        )
        assert data_shape(f"npz:{tmp_path / f'{name}.npz'}") == (1, 32)
    forced = load_dataset(f"npz:{tmp_path / 'nhwc.npz'}", image_size=32, channels=1)
    assert torch.equal(forced.images, _luma(tinted.images[:6]))


def test_npz_ambiguous_shapes(tmp_path: Path) -> None:
    cube = np.arange(2 * 27, dtype=np.uint8).reshape(2, 3, 3, 3)
    ds = load_dataset(_npz(tmp_path / "cube.npz", images=cube), image_size=3)
    assert torch.equal(ds.images, torch.from_numpy(cube))  # both square: channels first
    last = cube[..., :1]  # (2, 3, 3, 1): only channels last gives square images
    ds = load_dataset(_npz(tmp_path / "last.npz", images=last), image_size=3)
    assert ds.images.shape == (2, 1, 3, 3)
    assert torch.equal(ds.images, torch.from_numpy(last.transpose(0, 3, 1, 2)))
    first = cube[:, :1]  # (2, 1, 3, 3): channels first
    assert torch.equal(load_dataset(_npz(tmp_path / "f.npz", images=first), image_size=3).images,
                       torch.from_numpy(first))  # fmt: skip
    assert data_shape(f"npz:{tmp_path / 'last.npz'}") == (1, 3)
    assert data_shape(f"npz:{tmp_path / 'cube.npz'}") == (3, 3)
    odd = _npz(tmp_path / "odd.npz", images=np.zeros((2, 3, 32, 3), np.uint8))
    with pytest.raises(
        DataError,
        match=r"shape \(2, 3, 32, 3\) but images of 32x32 are expected \(image_size=32\); npz "
        r"arrays are not resized \(read as \(N, C, H, W\), it holds 32x3 images with 3 ch",
    ):
        load_dataset(odd, image_size=32)
    with pytest.raises(DataError, match=r"read as \(N, C, H, W\): 32x3 images, which are not sq"):
        data_shape(odd)


@pytest.mark.parametrize(
    ("shape", "phrase"),
    [
        ((5, 3, 32, 32), r"shape \(5, 3, 32, 32\) but images of 28x28 are expected"),
        ((5, 32, 32, 3), r"shape \(5, 32, 32, 3\) but images of 28x28 are expected"),
        ((5, 2, 28, 28), r"\(5, 2, 28, 28\); expected \(N, H, W\), \(N, C, H, W\) or \(N, H, W, C"),
        ((5, 28, 28, 4), r"\(5, 28, 28, 4\); expected .* with C = 1 or 3"),
        ((0, 3, 28, 28), "N >= 1"),
    ],
)
def test_npz_colour_shapes_refused_from_the_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, shape, phrase
) -> None:
    path = tmp_path / "bad.npz"
    np.savez_compressed(path, images=np.zeros(shape, np.uint8))
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", _never_read)
    with pytest.raises(DataError, match=phrase):
        load_dataset(f"npz:{path}")


def test_npz_data_shape_reads_only_the_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "a.npz"
    np.savez_compressed(path, images=np.zeros((2000, 24, 24, 3), np.uint8))
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", _never_read)
    assert data_shape(f"npz:{path}") == (3, 24)
    monkeypatch.setattr(npz, "NPZ_MAX_IMAGES", 1000)  # the header checks of loading apply
    with pytest.raises(DataError, match="claims 2,000 images .* more than the limit of 1,000"):
        data_shape(f"npz:{path}")
    np.savez(path, pixels=np.zeros((2, 4, 4)))
    with pytest.raises(DataError, match=r"no 'images' array \(keys: pixels\)"):
        data_shape(f"npz:{path}")
    np.savez(path, images=np.zeros((2, 4, 4), np.int32))
    with pytest.raises(DataError, match="dtype int32; expected uint8"):
        data_shape(f"npz:{path}")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(DataError, match="text.npz: not an .npz archive"):
        data_shape(f"npz:{tmp_path / 'text.npz'}")


def test_data_shape_of_named_sets_needs_no_files(tmp_path: Path) -> None:
    for name in ("mnist", "fashion-mnist", "mnist-5k"):
        assert data_shape(name, tmp_path / "nothing") == (1, 28)
    assert data_shape("cifar10", tmp_path / "nothing") == (3, 32)
    with pytest.raises(DataError, match=r"unknown data set 'fashon'.*Did you mean 'fashion-mnist'"):
        data_shape("fashon")
