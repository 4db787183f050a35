"""Tests for gankit.checkpoint: round trips, integrity, safety against pickles, atomicity."""

from __future__ import annotations

import json
import os
import pickle
import random
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file

from gankit import files
from gankit.errors import CheckpointError, GankitError, StorageError
from gankit.runs import checkpoint as ckpt
from gankit.runs.checkpoint import (
    capture_rng_state,
    checkpoint_path,
    flatten_state_dict,
    generator_state,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    prune_checkpoints,
    read_meta,
    restore_rng_state,
    save_checkpoint,
    unflatten_state_dict,
)


def _sample_tensors() -> dict[str, torch.Tensor]:
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return {
        "f32": torch.randn(3, 5),
        "i64": torch.tensor([1, -2, 2**40], dtype=torch.int64),
        "u8": torch.tensor([0, 7, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "bf16": torch.randn(4).to(torch.bfloat16),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 3),
        "slice": base[:, 1::2],  # non-contiguous view
        "base": base,
        "alias": base.view(-1)[:6],  # shares storage with "base"
        "param": torch.nn.Parameter(torch.ones(2, 2)),
    }


def _meta() -> dict:
    return {
        "step": 12,
        "config": {"model": "dcgan", "lr": 2e-4, "betas": [0.5, 0.999], "seed": None},
        "flags": [True, False],
        "inf": float("inf"),
        "text": "ünïcode ✓",
    }


def _assert_same_tensors(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for name, tensor in want.items():
        assert got[name].dtype == tensor.dtype, name
        assert got[name].shape == tensor.shape, name
        assert torch.equal(got[name], tensor.detach()), name


def _data_offset(path: Path) -> int:
    with open(path, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
    return 8 + header_len


def _write_valid(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"w": torch.randn(4, 4), "b": torch.arange(3)}
    meta = {"step": int(path.stem.split("-")[-1]) if "step-" in path.name else 0}
    save_checkpoint(path, tensors, meta)
    return tensors, meta


# --------------------------------------------------------------------------- round trips


def test_round_trip_all_kinds_of_tensors(tmp_path: Path) -> None:
    tensors = _sample_tensors()
    path = save_checkpoint(tmp_path / "c.safetensors", tensors, _meta())
    assert path == tmp_path / "c.safetensors"
    loaded, meta = load_checkpoint(path)
    _assert_same_tensors(loaded, tensors)
    assert meta == _meta()
    assert read_meta(path) == _meta()
    assert loaded["slice"].is_contiguous()


def test_save_leaves_inputs_untouched_and_writes_format_metadata(tmp_path: Path) -> None:
    tensors = _sample_tensors()
    before = {k: v.detach().clone() for k, v in tensors.items()}
    path = save_checkpoint(tmp_path / "sub" / "c.safetensors", tensors, {})
    _assert_same_tensors(tensors, before)
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata()
    assert metadata["format"] == "gankit-checkpoint"
    assert metadata["format_version"] == "1"
    assert len(metadata["sha256"]) == 64
    assert "torch" in metadata["versions"]


def test_tensor_digest_is_order_independent_and_content_sensitive() -> None:
    a = {"x": torch.ones(3), "y": torch.zeros(2, dtype=torch.int64)}
    b = {"y": torch.zeros(2, dtype=torch.int64), "x": torch.ones(3)}
    assert ckpt._tensor_digest(a) == ckpt._tensor_digest(b)
    assert ckpt._tensor_digest(a) != ckpt._tensor_digest({**a, "x": torch.ones(1, 3)})
    assert ckpt._tensor_digest(a) != ckpt._tensor_digest({**a, "x": torch.ones(3).double()})
    assert ckpt._tensor_digest(a) != ckpt._tensor_digest({**a, "x": torch.tensor([1.0, 1, 2])})


def test_bad_meta_and_tensors_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(path, {}, {"obj": object()})
    with pytest.raises(CheckpointError, match="non-str key"):
        save_checkpoint(path, {}, {"state": {0: 1}})
    with pytest.raises(CheckpointError, match="not a torch.Tensor"):
        save_checkpoint(path, {"x": [1, 2]}, {})  # type: ignore[dict-item]
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_flatten_round_trips_awkward_nesting() -> None:
    t = torch.arange(4)
    state = {
        "state": {0: {"step": torch.tensor(3.0), "buf": t}, 7: {}},
        "groups": [{"betas": (0.9, 0.999), "params": [0, 7], "fused": None}],
        "tuple_keys": {(1, "a"): "x", None: 1, 2.5: [True]},
        "marker_like": {"__tensor__": "not a tensor"},
        "nested_tuple": (1, (2, t), []),
        "slash": {"a/b": torch.ones(1), "a": {"b": torch.zeros(1)}},
    }
    tensors, skeleton = flatten_state_dict("opt", state)
    assert all(key.startswith("opt/") for key in tensors)
    # "slash/a/b" is produced twice; the second gets a distinct key instead of overwriting
    assert len(tensors) == 5
    assert {"opt/slash/a/b", "opt/slash/a/b~1"} <= set(tensors)
    restored = unflatten_state_dict(tensors, json.loads(json.dumps(skeleton)))
    assert restored["state"][0]["step"] is tensors["opt/state/0/step"]
    assert torch.equal(restored["state"][0]["buf"], t)
    assert restored["state"][7] == {}
    assert restored["groups"] == state["groups"]
    assert isinstance(restored["groups"][0]["betas"], tuple)
    assert restored["tuple_keys"] == state["tuple_keys"]
    assert restored["marker_like"] == {"__tensor__": "not a tensor"}
    assert restored["nested_tuple"][0] == 1 and restored["nested_tuple"][2] == []
    assert torch.equal(restored["nested_tuple"][1][1], t)
    assert torch.equal(restored["slash"]["a/b"], torch.ones(1))
    assert torch.equal(restored["slash"]["a"]["b"], torch.zeros(1))


def test_flatten_rejects_unsupported_values() -> None:
    with pytest.raises(CheckpointError, match="ndarray"):
        flatten_state_dict("x", {"a": np.zeros(2)})


def test_unflatten_missing_tensor_is_a_checkpoint_error() -> None:
    with pytest.raises(CheckpointError, match="opt/w"):
        unflatten_state_dict({}, {"w": {"__tensor__": "opt/w"}})


def _train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 5, generator=gen)
        y = torch.randn(8, 3, generator=gen)
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()


OPTIMISERS = {
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.5, 0.99)),
    "adam-amsgrad-wd": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=0.1, amsgrad=True),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=1e-2, momentum=0.5, centered=True),
    "sgd-momentum": lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, nesterov=True),
}


@pytest.mark.parametrize("name", sorted(OPTIMISERS))
def test_optimizer_round_trip_continues_bit_identically(tmp_path: Path, name: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)
    opt = OPTIMISERS[name](model.parameters())
    _train(model, opt, steps=3, seed=1)

    model_t, model_s = flatten_state_dict("model", model.state_dict())
    opt_t, opt_s = flatten_state_dict("opt", opt.state_dict())
    path = save_checkpoint(
        tmp_path / "c.safetensors", {**model_t, **opt_t}, {"m": model_s, "o": opt_s}
    )

    tensors, meta = load_checkpoint(path)
    torch.manual_seed(123)  # a different init, so loading must really overwrite it
    fresh = torch.nn.Linear(5, 3)
    fresh_opt = OPTIMISERS[name](fresh.parameters())
    fresh.load_state_dict(unflatten_state_dict(tensors, meta["m"]))
    fresh_opt.load_state_dict(unflatten_state_dict(tensors, meta["o"]))

    _train(model, opt, steps=3, seed=2)
    _train(fresh, fresh_opt, steps=3, seed=2)
    for original, restored in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(original, restored)
    assert str(opt.state_dict()) == str(fresh_opt.state_dict())


def test_lr_scheduler_state_round_trips(tmp_path: Path) -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=1.0)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    for _ in range(3):
        opt.step()
        sched.step()
    tensors, skeleton = flatten_state_dict("sched", sched.state_dict())
    path = save_checkpoint(tmp_path / "s.safetensors", tensors, {"sched": skeleton})
    loaded, meta = load_checkpoint(path)
    assert unflatten_state_dict(loaded, meta["sched"]) == sched.state_dict()


# --------------------------------------------------------------------------- RNG


def test_rng_capture_and_restore_in_process() -> None:
    random.gauss(0, 1)  # leave a cached gaussian in both generators' state
    np.random.standard_normal()
    tensors, meta = capture_rng_state()
    first = (random.random(), random.gauss(0, 1), np.random.rand(3), torch.rand(3))
    restore_rng_state(tensors, meta)
    second = (random.random(), random.gauss(0, 1), np.random.rand(3), torch.rand(3))
    assert first[:2] == second[:2]
    assert np.array_equal(first[2], second[2])
    assert torch.equal(first[3], second[3])


def test_rng_state_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    random.gauss(0, 1)
    np.random.standard_normal()
    rng_t, rng_meta = capture_rng_state()
    path = save_checkpoint(tmp_path / "r.safetensors", rng_t, {"rng": rng_meta})
    first = (random.random(), random.gauss(0, 1), np.random.randn(5), torch.randn(5))
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    tensors, meta = load_checkpoint(path)
    restore_rng_state(tensors, meta["rng"])
    second = (random.random(), random.gauss(0, 1), np.random.randn(5), torch.randn(5))
    assert first[:2] == second[:2]
    assert np.array_equal(first[2], second[2])
    assert torch.equal(first[3], second[3])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rng_round_trip() -> None:
    tensors, meta = capture_rng_state()
    assert len(meta["cuda"]) == torch.cuda.device_count()
    first = torch.rand(4, device="cuda")
    restore_rng_state(tensors, meta)
    assert torch.equal(first, torch.rand(4, device="cuda"))


def test_restore_rejects_malformed_rng_meta() -> None:
    with pytest.raises(CheckpointError, match="RNG state"):
        restore_rng_state({}, {"python": {}})


def test_generator_state_is_a_restorable_copy() -> None:
    gen = torch.Generator().manual_seed(5)
    state = generator_state(gen)
    first = torch.rand(4, generator=gen)
    assert not torch.equal(state, gen.get_state())  # a copy, not a live view
    gen.set_state(state)
    assert torch.equal(first, torch.rand(4, generator=gen))


# --------------------------------------------------------------------------- corruption


def test_flipped_tensor_byte_is_a_checksum_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.randn(16), "b": torch.zeros(4)}, {"step": 1})
    data = bytearray(path.read_bytes())
    position = _data_offset(path) + 5
    data[position] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert "earlier checkpoint" in str(info.value)
    tensors, _ = load_checkpoint(path, verify=False)  # explicitly unverified load still works
    assert set(tensors) == {"w", "b"}


def test_edited_meta_is_a_checksum_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.ones(2)}, {"step": 1})
    data = path.read_bytes()
    assert data.count(b'\\"step\\": 1') == 1
    path.write_bytes(data.replace(b'\\"step\\": 1', b'\\"step\\": 7'))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_checkpoint(path)


@pytest.mark.parametrize("keep", [0, 4, 8, 9, 40, -1])
def test_truncated_file_is_rejected(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.randn(64)}, {"step": 1})
    data = path.read_bytes()
    path.write_bytes(data[:keep])
    with pytest.raises(CheckpointError, match=str(path).replace("\\", "\\\\")):
        load_checkpoint(path)


def test_random_bytes_torch_save_and_foreign_safetensors_are_rejected(tmp_path: Path) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="not a usable gankit checkpoint"):
        load_checkpoint(junk)

    torch_file = tmp_path / "torch.safetensors"
    torch.save({"w": torch.randn(3)}, torch_file)
    with pytest.raises(CheckpointError, match="not a usable gankit checkpoint"):
        load_checkpoint(torch_file)
    with pytest.raises(CheckpointError):
        read_meta(torch_file)

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.randn(3)}, foreign)
    with pytest.raises(CheckpointError, match="not written by gankit"):
        load_checkpoint(foreign)

    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_newer_format_version_asks_for_an_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "future.safetensors"
    save_file(
        {"w": torch.zeros(1)},
        path,
        metadata={"format": "gankit-checkpoint", "format_version": "2", "gankit": "{}"},
    )
    with pytest.raises(CheckpointError, match="upgrade gankit"):
        load_checkpoint(path)


class _Evil:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_never_executed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"model": _Evil(marker)})
    # sanity: the payload really is armed
    pickle.loads(payload).get("model").close()
    assert marker.exists()
    marker.unlink()

    path = checkpoint_path(tmp_path, 5)
    path.write_bytes(payload)
    with pytest.raises(CheckpointError, match="not a usable gankit checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError):
        read_meta(path)
    with pytest.warns(RuntimeWarning, match="step-00000005"):
        assert latest_checkpoint(tmp_path) is None
    assert not marker.exists()

    # the same payload inside a torch.save archive is rejected just as well
    torch.save({"model": _Evil(marker)}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()


_VALID_BYTES: dict[str, bytes] = {}


def _valid_checkpoint_bytes(folder: Path) -> bytes:
    if "data" not in _VALID_BYTES:
        path = save_checkpoint(
            folder / "valid.safetensors",
            {"w": torch.arange(6, dtype=torch.float32), "n": torch.tensor(3)},
            {"step": 4, "name": "x"},
        )
        _VALID_BYTES["data"] = path.read_bytes()
    return _VALID_BYTES["data"]


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.binary(max_size=512))
def test_arbitrary_bytes_load_or_raise_checkpoint_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(data)
    try:
        load_checkpoint(path)
    except CheckpointError:
        pass


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(position=st.integers(min_value=0), xor=st.integers(min_value=1, max_value=255))
def test_any_single_byte_flip_is_caught_or_harmless(
    tmp_path: Path, position: int, xor: int
) -> None:
    original = _valid_checkpoint_bytes(tmp_path)
    data = bytearray(original)
    data[position % len(data)] ^= xor
    path = tmp_path / "flip.safetensors"
    path.write_bytes(bytes(data))
    try:
        tensors, meta = load_checkpoint(path)
    except CheckpointError:
        return
    # an undetected flip may only touch bytes that carry no data (padding, version info)
    assert meta == {"step": 4, "name": "x"}
    assert torch.equal(tensors["w"], torch.arange(6, dtype=torch.float32))
    assert torch.equal(tensors["n"], torch.tensor(3))


# --------------------------------------------------------------------------- atomicity


def test_failed_replace_keeps_previous_checkpoint_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.safetensors"
    old_tensors = {"w": torch.ones(3)}
    save_checkpoint(path, old_tensors, {"step": 1})

    def boom(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(ckpt.os, "replace", boom)
    with pytest.raises(StorageError, match=f"could not write {path}: disk on fire"):
        save_checkpoint(path, {"w": torch.zeros(3)}, {"step": 2})
    monkeypatch.undo()

    tensors, meta = load_checkpoint(path)
    assert meta == {"step": 1}
    _assert_same_tensors(tensors, old_tensors)
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


@pytest.mark.parametrize("exc", [OSError("no space left"), KeyboardInterrupt()])
def test_failure_mid_write_keeps_previous_checkpoint_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: BaseException
) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.ones(3)}, {"step": 1})

    def partial_then_fail(fd):  # the temporary file holds the data, not yet synced
        os.ftruncate(fd, 20)
        raise exc

    monkeypatch.setattr(files.os, "fsync", partial_then_fail)
    with pytest.raises((StorageError, KeyboardInterrupt)):
        save_checkpoint(path, {"w": torch.zeros(3)}, {"step": 2})
    monkeypatch.undo()

    assert read_meta(path) == {"step": 1}
    assert load_checkpoint(path)[1] == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


def test_successful_save_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, {"w": torch.ones(3)}, {"step": 1})
    save_checkpoint(path, {"w": torch.zeros(3)}, {"step": 2})
    tensors, meta = load_checkpoint(path)
    assert meta == {"step": 2} and torch.equal(tensors["w"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


# --------------------------------------------------------------------------- folders


def test_checkpoint_path_and_listing(tmp_path: Path) -> None:
    assert checkpoint_path(tmp_path, 42) == tmp_path / "step-00000042.safetensors"
    with pytest.raises(ValueError):
        checkpoint_path(tmp_path, -1)
    for step in (300, 5, 123456789, 40):
        _write_valid(checkpoint_path(tmp_path, step))
    (tmp_path / ".step-00000999.safetensors.abc123.tmp").write_bytes(b"partial")
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "step-00000007.safetensors.bak").write_bytes(b"")
    steps = [int(p.stem.split("-")[1]) for p in list_checkpoints(tmp_path)]
    assert steps == [5, 40, 300, 123456789]
    assert list_checkpoints(tmp_path / "nope") == []


def test_latest_checkpoint_skips_corrupt_newest_with_warning(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None
    for step in (10, 20, 30):
        _write_valid(checkpoint_path(tmp_path, step))
    assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 30)

    newest = checkpoint_path(tmp_path, 30)
    data = bytearray(newest.read_bytes())
    data[-1] ^= 0xFF
    newest.write_bytes(bytes(data))
    (tmp_path / ".step-00000040.safetensors.dead.tmp").write_bytes(b"crash leftovers")
    with pytest.warns(RuntimeWarning, match="step-00000030") as record:
        assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 20)
    assert len(record) == 1
    assert "checksum mismatch" in str(record[0].message)


def test_latest_checkpoint_without_corruption_does_not_warn(tmp_path: Path) -> None:
    _write_valid(checkpoint_path(tmp_path, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert latest_checkpoint(tmp_path) == checkpoint_path(tmp_path, 1)


def test_prune_keeps_newest_and_protected(tmp_path: Path) -> None:
    paths = [checkpoint_path(tmp_path, step) for step in (1, 2, 3, 4, 5, 6)]
    for path in paths:
        _write_valid(path)
    deleted = prune_checkpoints(tmp_path, keep_last=2, keep={paths[1]})
    assert deleted == [paths[0], paths[2], paths[3]]
    assert list_checkpoints(tmp_path) == [paths[1], paths[4], paths[5]]
    assert prune_checkpoints(tmp_path, keep_last=2, keep={paths[1]}) == []
    assert prune_checkpoints(tmp_path, keep_last=5) == []
    assert prune_checkpoints(tmp_path, keep_last=3) == []
    assert prune_checkpoints(tmp_path, keep_last=1) == [paths[1], paths[4]]
    assert list_checkpoints(tmp_path) == [paths[5]]
    with pytest.raises(ValueError):
        prune_checkpoints(tmp_path, keep_last=-1)


def test_checkpoint_error_is_a_gankit_error() -> None:
    assert issubclass(CheckpointError, GankitError)


def test_stale_temporary_files_of_a_killed_write_are_removed(tmp_path: Path) -> None:
    from gankit.runs.checkpoint import remove_stale_temp_files

    good = save_checkpoint(tmp_path / "step-00000001.safetensors", {"w": torch.ones(2)}, {})
    stale = [tmp_path / ".step-00000002.safetensors.0123456789ab.tmp", tmp_path / ".tmpAbC123"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    keep = [tmp_path / "notes.tmp", tmp_path / ".hidden"]
    for path in keep:
        path.write_text("the user's")
    assert sorted(remove_stale_temp_files(tmp_path)) == sorted(stale)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [good.name] + [p.name for p in keep]
    )
