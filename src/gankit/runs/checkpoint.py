"""Safe, atomic, checksummed training checkpoints stored as single `.safetensors` files.

A checkpoint holds every tensor (weights, optimiser state, RNG byte states, fixed noise...) in
the safetensors tensor section and everything else as JSON in the safetensors metadata under
the key ``"gankit"``. Loading never unpickles anything: files are read with safetensors and
``json`` only, so a hostile file can at worst be rejected with a `CheckpointError`.

Metadata keys written by `save_checkpoint`:

* ``format`` / ``format_version``: identify a gankit checkpoint and its layout version.
* ``gankit``: the caller's ``meta`` dict as JSON.
* ``sha256``: SHA-256 over the tensor payload (see `_tensor_digest`).
* ``meta_sha256``: SHA-256 of the ``gankit`` JSON string, so damaged metadata is caught too.
* ``versions``: JSON of the gankit / torch / safetensors / numpy / Python versions (informational).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import random
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from gankit.errors import CheckpointError
from gankit.files import atomic_write, remove_temporaries

FORMAT = "gankit-checkpoint"
FORMAT_VERSION = 1
META_KEY = "gankit"

_STEP_FILE = re.compile(r"^step-(\d+)\.safetensors$")
_TENSOR = "__tensor__"
_TUPLE = "__tuple__"
_DICT = "__dict__"
_MARKERS = frozenset({_TENSOR, _TUPLE, _DICT})
_HEADER_LIMIT = 100 * 1024 * 1024  # safetensors' own cap on the JSON header size


# --------------------------------------------------------------------------- paths


def checkpoint_path(folder: str | os.PathLike, step: int) -> Path:
    """Return ``folder / "step-XXXXXXXX.safetensors"`` for ``step``."""
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"checkpoint step must be a non-negative int, got {step!r}")
    return Path(folder) / f"step-{step:08d}.safetensors"


def list_checkpoints(folder: str | os.PathLike) -> list[Path]:
    """Return the ``step-*.safetensors`` files in ``folder`` sorted by step, oldest first."""
    root = Path(folder)
    if not root.is_dir():
        return []
    found: list[tuple[int, Path]] = []
    for entry in root.iterdir():
        match = _STEP_FILE.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), entry))
    found.sort(key=lambda item: (item[0], item[1].name))
    return [path for _, path in found]


def prune_checkpoints(
    folder: str | os.PathLike, keep_last: int, keep: set[Path] | frozenset[Path] = frozenset()
) -> list[Path]:
    """Delete step files older than the newest ``keep_last`` (never ``keep``); return them."""
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 0:
        raise ValueError(f"keep_last must be a non-negative int, got {keep_last!r}")
    files = list_checkpoints(folder)
    candidates = files[: max(len(files) - keep_last, 0)]
    protected = {Path(p).resolve() for p in keep}
    deleted: list[Path] = []
    for path in candidates:
        if path.resolve() in protected:
            continue
        path.unlink(missing_ok=True)
        deleted.append(path)
    return deleted


# the temporary file safetensors' own save_file made, in checkpoints of earlier versions
_OLD_TEMP_FILE = re.compile(r"^\.tmp\w{6,}$")


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary checkpoint files left by a killed process; call only when no other
    process writes to ``folder``. Returns what was deleted."""
    root = Path(folder)
    if not root.is_dir():
        return []
    old = [p for p in root.iterdir() if _OLD_TEMP_FILE.match(p.name) and p.is_file()]
    for path in old:
        path.unlink(missing_ok=True)
    return remove_temporaries(root) + old


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """Return the newest step checkpoint in ``folder`` that loads and verifies, or None."""
    for path in reversed(list_checkpoints(folder)):
        try:
            load_checkpoint(path, verify=True)
        except CheckpointError as exc:
            warnings.warn(
                f"skipping unusable checkpoint {path}: {exc}", RuntimeWarning, stacklevel=2
            )
            continue
        return path
    return None


# --------------------------------------------------------------------------- save / load


def save_checkpoint(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    """Atomically write ``tensors`` and JSON ``meta`` to one checksummed safetensors file."""
    target = Path(path)
    prepared = _prepare_tensors(tensors)
    if not isinstance(meta, Mapping):
        raise CheckpointError(f"checkpoint meta must be a dict, got {type(meta).__name__}")
    _check_json_keys(meta, "meta")
    try:
        meta_json = json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"cannot save checkpoint {target}: meta is not JSON-serialisable ({exc}); "
            "put tensors in `tensors` (see flatten_state_dict) and keep meta to plain "
            "dicts, lists, str, int, float, bool and None"
        ) from exc
    metadata = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        META_KEY: meta_json,
        "sha256": _tensor_digest(prepared),
        "meta_sha256": hashlib.sha256(meta_json.encode("utf-8")).hexdigest(),
        "versions": json.dumps(_versions()),
    }
    try:
        payload = save(prepared, metadata=metadata)
    except SafetensorError as exc:
        raise CheckpointError(f"could not encode checkpoint {target}: {exc}") from exc
    with atomic_write(target) as handle:  # synced: a checkpoint survives a power cut
        handle.write(payload)  # a failure leaves any previous file at that path intact
    return target


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu", verify: bool = True
) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a checkpoint's tensors (onto ``device``) and meta, verifying its checksums."""
    source = Path(path)
    metadata = _read_metadata(source)
    meta = _decode_meta(source, metadata, verify=verify)
    try:
        tensors = load_file(source, device="cpu")
    except Exception as exc:  # untrusted bytes: any parse failure means an unusable file
        raise _corrupt(source, f"its tensor data cannot be read ({exc})") from exc
    if verify:
        expected = metadata.get("sha256")
        if not isinstance(expected, str):
            raise _corrupt(source, "it has no 'sha256' checksum in its metadata")
        if _tensor_digest(tensors) != expected:
            raise _corrupt(source, "tensor checksum mismatch: the file is corrupt")
    if torch.device(device).type != "cpu":
        tensors = {name: tensor.to(device) for name, tensor in tensors.items()}
    return tensors, meta


def read_meta(path: str | os.PathLike) -> dict:
    """Return a checkpoint's meta dict from its header only, without loading any tensor."""
    source = Path(path)
    return _decode_meta(source, _read_metadata(source), verify=True)


# --------------------------------------------------------------------------- nested state


def flatten_state_dict(prefix: str, state: Any) -> tuple[dict[str, torch.Tensor], Any]:
    """Split nested ``state`` into tensors keyed ``prefix/...`` and a JSON-able skeleton."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(state, prefix, tensors)
    return tensors, skeleton


def unflatten_state_dict(tensors: Mapping[str, torch.Tensor], skeleton: Any) -> Any:
    """Rebuild the nested state that `flatten_state_dict` split into tensors and skeleton."""
    return _decode(skeleton, tensors)


def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        key = path
        counter = 1
        while key in tensors:
            key = f"{path}~{counter}"
            counter += 1
        tensors[key] = value
        return {_TENSOR: key}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, _join(path, i), tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, _join(path, i), tensors) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        plain = all(isinstance(k, str) for k in value) and not (
            len(value) == 1 and next(iter(value)) in _MARKERS
        )
        if plain:
            return {k: _encode(v, _join(path, k), tensors) for k, v in value.items()}
        return {
            _DICT: [
                [_encode(k, _join(path, f"key{i}"), tensors), _encode(v, _join(path, k), tensors)]
                for i, (k, v) in enumerate(value.items())
            ]
        }
    raise CheckpointError(
        f"cannot checkpoint {path or 'state'!r}: values of type {type(value).__name__} are not "
        "supported; use tensors, dicts, lists, tuples, str, int, float, bool or None"
    )


def _decode(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        marker, payload = next(iter(value.items()))
        if marker == _TENSOR:
            if payload not in tensors:
                raise CheckpointError(
                    f"checkpoint state refers to tensor {payload!r}, which is not in the file; "
                    "the checkpoint is incomplete or corrupt - resume from an earlier one"
                )
            return tensors[payload]
        if marker == _TUPLE:
            return tuple(_decode(v, tensors) for v in payload)
        if marker == _DICT:
            return {_decode(k, tensors): _decode(v, tensors) for k, v in payload}
    return {k: _decode(v, tensors) for k, v in value.items()}


def _join(path: str, part: object) -> str:
    return f"{path}/{part}" if path else str(part)


# --------------------------------------------------------------------------- RNG state


def capture_rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """Capture the Python, NumPy (legacy global), torch CPU and all CUDA RNG states."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    tensors = {"rng/torch": torch.get_rng_state()}
    cuda_keys: list[str] = []
    if torch.cuda.is_available():
        for index, state in enumerate(torch.cuda.get_rng_state_all()):
            key = f"rng/cuda/{index}"
            tensors[key] = state
            cuda_keys.append(key)
    meta = {
        "python": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "bit_generator": str(name),
            "keys": [int(k) for k in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": "rng/torch",
        "cuda": cuda_keys,
    }
    return tensors, meta


def restore_rng_state(tensors: Mapping[str, torch.Tensor], meta: Mapping) -> None:
    """Restore the RNG states captured by `capture_rng_state` (CUDA ones where possible)."""
    try:
        py = meta["python"]
        random.setstate((int(py["version"]), tuple(py["state"]), py["gauss_next"]))
        npy = meta["numpy"]
        np.random.set_state(
            (
                npy["bit_generator"],
                np.asarray(npy["keys"], dtype=np.uint32),
                int(npy["pos"]),
                int(npy["has_gauss"]),
                float(npy["cached_gaussian"]),
            )
        )
        torch.set_rng_state(tensors[meta["torch"]].to("cpu", torch.uint8))
        cuda_states = [tensors[key].to("cpu", torch.uint8) for key in meta["cuda"]]
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"the checkpoint's RNG state is missing or malformed ({exc!r}); it was not written "
            "by capture_rng_state - resume from another checkpoint or start a fresh run"
        ) from exc
    if not cuda_states:
        return
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if available != len(cuda_states):
        warnings.warn(
            f"the checkpoint holds RNG states for {len(cuda_states)} CUDA device(s) but "
            f"{available} are available; restoring the first {min(available, len(cuda_states))}, "
            "so random draws will differ from an uninterrupted run",
            RuntimeWarning,
            stacklevel=2,
        )
    for index, state in enumerate(cuda_states[:available]):
        torch.cuda.set_rng_state(state, device=index)


def generator_state(gen: torch.Generator) -> torch.Tensor:
    """Return a copy of a `torch.Generator`'s state as a uint8 tensor."""
    return gen.get_state().clone()


# --------------------------------------------------------------------------- internals


def _prepare_tensors(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detach, move to CPU, make contiguous, and un-alias tensors so safetensors accepts them."""
    if not isinstance(tensors, Mapping):
        raise CheckpointError(f"checkpoint tensors must be a dict, got {type(tensors).__name__}")
    prepared: dict[str, torch.Tensor] = {}
    seen_storage: set[int] = set()
    for name, tensor in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise CheckpointError(f"invalid checkpoint tensor name {name!r}: use a str key")
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(
                f"checkpoint entry {name!r} is a {type(tensor).__name__}, not a torch.Tensor; "
                "put non-tensor values in meta"
            )
        if tensor.layout != torch.strided:
            raise CheckpointError(
                f"checkpoint tensor {name!r} has layout {tensor.layout}; convert it to a dense "
                "tensor (e.g. .to_dense()) before saving"
            )
        t = tensor.detach().to("cpu").contiguous()
        pointer = t.untyped_storage().data_ptr()
        if pointer and pointer in seen_storage:
            t = t.clone()
            pointer = t.untyped_storage().data_ptr()
        if pointer:
            seen_storage.add(pointer)
        prepared[name] = t
    return prepared


def _tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over (name, dtype, shape, raw bytes) of every tensor in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        raw = tensor.reshape(-1).view(torch.uint8).numpy()
        header = json.dumps([name, str(tensor.dtype), list(tensor.shape), int(raw.nbytes)])
        digest.update(len(header).to_bytes(8, "little"))
        digest.update(header.encode("utf-8"))
        digest.update(raw.data)
    return digest.hexdigest()


def _corrupt(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is not a usable gankit checkpoint: {reason}. The file is corrupt or was not "
        f"written by gankit; delete it and resume from an earlier checkpoint in {path.parent}"
    )


def _check_header(path: Path) -> None:
    """Cheap structural check of the safetensors framing before handing the file to safetensors."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            prefix = handle.read(9)
    except FileNotFoundError as exc:
        raise CheckpointError(
            f"no checkpoint at {path}; check the path or pick one from list_checkpoints()"
        ) from exc
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if len(prefix) < 9:
        raise _corrupt(path, f"it is only {size} bytes long (truncated or not safetensors)")
    header_len = int.from_bytes(prefix[:8], "little")
    if header_len > _HEADER_LIMIT or 8 + header_len > size or prefix[8:9] != b"{":
        raise _corrupt(
            path,
            "it does not start with a safetensors header (truncated, or not "
            "a safetensors file at all, e.g. a pickle or torch.save archive)",
        )


def _read_metadata(path: Path) -> dict[str, str]:
    _check_header(path)
    try:
        with safe_open(path, framework="pt", device="cpu") as handle:
            metadata = handle.metadata()
    except Exception as exc:  # untrusted bytes: any parse failure means an unusable file
        raise _corrupt(path, f"its safetensors header cannot be parsed ({exc})") from exc
    if not metadata or metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a safetensors file but not a gankit checkpoint (no "
            f"'format: {FORMAT}' metadata); this file was not written by gankit's "
            "save_checkpoint - point at a step-XXXXXXXX.safetensors file from a gankit run"
        )
    return metadata


def _decode_meta(path: Path, metadata: Mapping[str, str], verify: bool) -> dict:
    version = metadata.get("format_version", "")
    if not version.isdigit():
        raise _corrupt(path, f"its format_version {version!r} is not a number")
    if int(version) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} uses checkpoint format version {version}, but this gankit reads up to "
            f"version {FORMAT_VERSION}; upgrade gankit to load it"
        )
    meta_json = metadata.get(META_KEY)
    if meta_json is None:
        raise _corrupt(path, f"its '{META_KEY}' metadata entry is missing")
    if verify:
        expected = metadata.get("meta_sha256")
        actual = hashlib.sha256(meta_json.encode("utf-8")).hexdigest()
        if expected != actual:
            raise _corrupt(path, "metadata checksum mismatch: the file is corrupt")
    try:
        meta = json.loads(meta_json)
    except ValueError as exc:
        raise _corrupt(path, f"its '{META_KEY}' metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise _corrupt(path, f"its '{META_KEY}' metadata is not a JSON object")
    return meta


def _check_json_keys(value: Any, where: str) -> None:
    """Reject dicts with non-str keys, which JSON would silently turn into strings."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CheckpointError(
                    f"cannot save checkpoint: {where} has a non-str key {key!r}, which JSON "
                    "cannot round-trip; encode it with flatten_state_dict first"
                )
            _check_json_keys(item, f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_json_keys(item, f"{where}[{index}]")


def _versions() -> dict[str, str]:
    from gankit.version import __version__

    return {
        "gankit": __version__,
        "torch": torch.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }
