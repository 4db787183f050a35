"""A strict reader of the IDX format (MNIST's files), plain or gzipped, bounded in memory."""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zlib

import numpy as np

from gankit.errors import DataError

# IDX dtype code -> big-endian numpy dtype as stored in the file.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_MAX_NDIM = 4
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 24  # read 16 MiB at a time, so memory grows only with data that really exists


def _dims_text(dims: tuple[int, ...], dtype: np.dtype) -> str:
    """'60000x28x28 uint8' for a message."""
    return "x".join(str(d) for d in dims) + " " + dtype.newbyteorder("=").name


def _read_up_to(f: io.BufferedIOBase, n: int) -> bytearray:
    """Read at most `n` bytes in chunks (a short result means end of file)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(min(n - len(buf), _CHUNK))
        if not chunk:
            break
        buf += chunk
    return buf


def _read_idx_stream(
    f: io.BufferedIOBase, path: str, raw_size: int | None, max_bytes: int
) -> np.ndarray:
    """Parse header and data from an open (decompressed) stream; `raw_size` is the file size
    when the file is not compressed, else None."""
    head = _read_up_to(f, 4)
    if len(head) < 4:
        raise DataError(f"{path}: truncated: {len(head)} bytes, shorter than the 4-byte IDX magic")
    if head[0] != 0 or head[1] != 0:
        raise DataError(
            f"{path}: not an IDX file (magic bytes 0x{bytes(head).hex()}; "
            "expected 0x0000 + dtype + ndim)"
        )
    code, ndim = head[2], head[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02x} {d.newbyteorder('=').name}" for c, d in _IDX_DTYPES.items())
        raise DataError(f"{path}: unknown IDX dtype code 0x{code:02x} (known: {known})")
    if not 1 <= ndim <= _IDX_MAX_NDIM:
        raise DataError(f"{path}: unsupported IDX ndim {ndim} (expected 1..{_IDX_MAX_NDIM})")
    dim_bytes = _read_up_to(f, 4 * ndim)
    if len(dim_bytes) < 4 * ndim:
        raise DataError(
            f"{path}: truncated header: ndim {ndim} needs {4 * ndim} bytes of dimensions "
            f"but the file holds {len(dim_bytes)}"
        )
    dims = struct.unpack(f">{ndim}I", dim_bytes)
    dtype = _IDX_DTYPES[code]
    nbytes = math.prod(dims) * dtype.itemsize
    what = f"header says {_dims_text(dims, dtype)} = {nbytes} bytes of data"
    if nbytes > max_bytes:
        raise DataError(
            f"{path}: too large: {what}, more than the limit of {max_bytes} bytes "
            "(corrupt header?); refusing to read it"
        )
    if raw_size is not None and raw_size - 4 - 4 * ndim != nbytes:
        held = raw_size - 4 - 4 * ndim
        problem = "truncated" if held < nbytes else "trailing bytes"
        raise DataError(f"{path}: {problem}: {what} but the file holds {held}")
    data = _read_up_to(f, nbytes + 1)  # one byte more than claimed reveals trailing data
    if len(data) < nbytes:
        raise DataError(f"{path}: truncated: {what} but the file holds {len(data)}")
    if len(data) > nbytes:
        raise DataError(f"{path}: trailing bytes: {what} but the file holds more")
    array = np.frombuffer(data, dtype=dtype).reshape(dims)  # writable: backed by a bytearray
    return array if dtype.itemsize == 1 else array.astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike, max_bytes: int = 1 << 31) -> np.ndarray:
    """Read an IDX file (gzip-compressed or raw) strictly; every problem is a DataError."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as raw:
            is_gzip = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if not is_gzip:
                return _read_idx_stream(raw, path, os.fstat(raw.fileno()).st_size, max_bytes)
            with gzip.GzipFile(fileobj=raw, mode="rb") as f:
                return _read_idx_stream(f, path, None, max_bytes)
    except DataError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: corrupt gzip stream: {exc}") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from exc
