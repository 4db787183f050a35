"""Writing files so that no reader and no crash ever sees half of one, and locks on folders.

Every file gankit writes goes through :func:`atomic_write` (a temporary file beside the
target, flushed, synced and renamed over it) or :func:`atomic_folder` (a temporary folder
renamed into place when complete). A failed write — a full disk, a read-only mount, a
permission — leaves the previous file intact and no temporary behind, and is raised as one
:class:`StorageError` that names the file and the errno.

:class:`FolderLock` is an advisory lock on a folder, held through an open file: the
operating system drops it when the holder dies, so even a SIGKILL leaves no stale lock.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import re
import secrets
import shutil
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from gankit.errors import GankitError, StorageError

PathLike = str | os.PathLike

# names of the temporaries below: ".NAME.<12 hex>.tmp" files, ".NAME.<12 hex>.partial" folders
_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{12}\.(tmp|partial)$")


def storage_error(path: PathLike, err: OSError, what: str = "write") -> StorageError:
    """A StorageError for an OSError met while writing ``path``: the file, the errno, a fix."""
    code = errno.errorcode.get(err.errno or 0, "")
    reason = (
        f"[Errno {err.errno}{' ' + code if code else ''}] {err.strerror or err}"
        if err.errno is not None
        else str(err)
    )
    hint = {
        errno.ENOSPC: "free some disk space",
        errno.EDQUOT: "free some of your disk quota",
        errno.EROFS: "the file system is read-only: choose another folder",
        errno.EACCES: "check the folder's permissions",
        errno.EPERM: "check the folder's permissions",
    }.get(err.errno or 0, "check the disk")
    error = StorageError(f"could not {what} {path}: {reason}; {hint}")
    error.path, error.errno = Path(path), err.errno
    return error


def fsync_folder(folder: PathLike) -> None:
    """Flush a folder's entries so that a finished rename survives a power cut (POSIX)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_name(target: Path, kind: str = "tmp") -> Path:
    """A fresh hidden name beside ``target`` for a temporary file (``tmp``) or folder."""
    return target.with_name(f".{target.name}.{secrets.token_hex(6)}.{kind}")


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb", sync: bool = True) -> Iterator[IO]:
    """``with atomic_write(path) as f: f.write(...)`` writes ``path`` whole or not at all.

    The data goes to a temporary file beside ``path`` that replaces it on success; an error
    (or a kill) leaves the old file as it was. OSError becomes StorageError naming ``path``.
    ``sync``: fsync the file and its folder (a checkpoint must survive a power cut; a log
    grid need not pay for it).
    """
    target = Path(path)
    tmp = temp_name(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # "x": a new file with the umask's mode (mkstemp's 0600 would leak into the result)
        with open(tmp, mode.replace("w", "x")) as handle:
            yield handle
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        os.replace(tmp, target)
        if sync:
            fsync_folder(target.parent)
    except OSError as err:
        _remove(tmp)
        raise storage_error(target, err) from err
    except BaseException:
        _remove(tmp)
        raise


def write_text(path: PathLike, text: str, sync: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_write(path, "w", sync=sync) as f:
        f.write(text)
    return Path(path)


def write_bytes(path: PathLike, data: bytes, sync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_write(path, "wb", sync=sync) as f:
        f.write(data)
    return Path(path)


@contextlib.contextmanager
def atomic_folder(path: PathLike, overwrite: bool = False) -> Iterator[Path]:
    """``with atomic_folder(DIR) as tmp:`` fill ``tmp``; it becomes ``DIR`` when complete.

    Until then ``DIR`` does not exist (or keeps its old contents), so a folder under the final
    name is always a finished one. An existing non-empty ``DIR`` is refused unless
    ``overwrite`` (then it is replaced whole, after the new one is complete).
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise GankitError(f"{target} is a file, not a folder: choose another path")
    if _non_empty(target) and not overwrite:
        raise GankitError(
            f"{target} already exists and is not empty: pass --overwrite to "
            "replace it, or choose another folder"
        )
    tmp = temp_name(target, "partial")
    try:
        tmp.mkdir(parents=True)
        yield tmp
        old = None
        if target.exists():
            old = temp_name(target, "partial")
            os.replace(target, old)  # moved aside, removed once the new one is in place
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        fsync_folder(target.parent)
    except StorageError as err:  # a file inside: named as it would have been in the folder
        shutil.rmtree(tmp, ignore_errors=True)
        if err.path is None or err.errno is None:
            raise
        inner = OSError(err.errno, os.strerror(err.errno))
        raise storage_error(target / Path(err.path).name, inner) from err
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise storage_error(target, err) from err
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_temporaries(folder: PathLike, of: str | None = None, idle: float = 0.0) -> list[Path]:
    """Delete the temporary files and folders a killed writer left in ``folder`` (only those
    for the file named ``of``, if given). Call while no other process writes there, or pass
    ``idle``: only temporaries untouched for that many seconds go (a live writer touches its
    temporary as it writes)."""
    root = Path(folder)
    if not root.is_dir():
        return []
    now = time.time()
    stale = [
        p
        for p in root.iterdir()
        if (m := _TEMP_NAME.match(p.name))
        and (of is None or m["name"] == of)
        and (not idle or now - _mtime(p) > idle)
    ]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else _remove(path)
    return stale


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _non_empty(folder: Path) -> bool:
    return folder.is_dir() and any(folder.iterdir())


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


# --------------------------------------------------------------------------- folder locks


class FolderBusy(GankitError):
    """Another process holds the lock of a folder; ``holder`` says which (pid, host, …)."""

    def __init__(self, message: str, holder: dict):
        super().__init__(message)
        self.holder = holder


class FolderLock:
    """An exclusive advisory lock on ``folder``, held through ``folder/NAME`` (flock).

    The lock file holds JSON naming the holder (pid, host, start time, command) for the
    message another process gets. It stays in the folder when released (deleting it would
    let two processes lock two different files of the same name).
    """

    def __init__(self, folder: PathLike, name: str = ".lock", purpose: str = "this folder"):
        self.folder, self.path, self.purpose = Path(folder), Path(folder) / name, purpose
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait: float = 0.0) -> FolderLock:
        """Take the lock, waiting up to ``wait`` seconds; FolderBusy if another holds it."""
        if self._fd is not None:
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise storage_error(self.path, err, "create the lock file") from err
        deadline = time.monotonic() + wait
        while not _try_lock(fd):
            if time.monotonic() >= deadline:
                holder = _read_holder(fd)
                os.close(fd)
                raise FolderBusy(
                    f"{self.folder} is in use by another process "
                    f"({describe_holder(holder)}), which holds {self.purpose}: "
                    "wait for it to finish or stop it, or choose another folder",
                    holder,
                )
            time.sleep(0.05)
        self._fd = fd
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "command": _command(),
        }
        with contextlib.suppress(OSError):  # who holds it is a courtesy; the lock is the flock
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(holder).encode())
        return self

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            _unlock(self._fd)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:  # a lock object dropped without release: free the descriptor
        self.release()


def _command() -> str:
    """This process's command line, short: ``gankit train dcgan …`` also for ``python -m``."""
    program = Path(sys.argv[0])
    name = program.parent.name if program.name == "__main__.py" else program.name
    return " ".join([name, *sys.argv[1:]])[:300]


def describe_holder(holder: dict) -> str:
    """``pid 123 on host, since 2026-11-30T10:00:00+00:00: gankit train dcgan``."""
    if not holder:
        return "holder unknown"
    text = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
    if holder.get("started"):
        text += f", since {holder['started']}"
    return text + (f": {holder['command']}" if holder.get("command") else "")


def _read_holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096) or b"{}")
    except (OSError, ValueError):
        return {}


if os.name == "posix":
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

else:  # Windows: a byte range far past the holder's JSON, so that it stays readable
    import msvcrt

    _REGION = 1 << 30

    def _try_lock(fd: int) -> bool:
        os.lseek(fd, _REGION, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True

    def _unlock(fd: int) -> None:
        os.lseek(fd, _REGION, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
