"""Data-parallel training: real ``torchrun`` launches of two gloo processes on this CPU.

Two processes on half batches must take the step one process takes on the whole batch; only
process 0 may write the run folder; a killed two-process run resumes exactly; a process that
dies ends the run with a message instead of a hang.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest
import torch
from conftest import real_data_dir

from gankit.cli import main
from gankit.errors import ConfigError
from gankit.runs import read_metrics
from gankit.runs.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from gankit.training import distributed
from gankit.training.distributed import Shard, World

TORCHRUN = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc-per-node",
    "2",
    "-m",
    "gankit",
    "train",
]
COMMON = [
    "--data",
    "fashion-mnist",
    "--data-dir",
    str(real_data_dir()),
    "--no-progress",
    "--sample-every",
    "1000",
    "--set",
    "data_limit=2000",
    "--set",
    "threads=1",
]
# wgan-gp's networks with batch norm taken out of G: batch norm over half a batch is another
# computation, so only models without it can match one process exactly
WGAN_GP_NO_BN = (
    'model.generator.layers=["fc 6272", "relu", "reshape 128 7 7", '
    '"convT 64 k4 s2 p1", "relu", "convT 32 k4 s2 p1", "relu", "conv 1 k3 p1", '
    '"tanh"]'
)
GAN_002_DROPOUT = (
    'model.discriminator.layers=["flatten", "fc 128", "lrelu 0.01", "dropout 0.3", "fc 1"]'
)

# Records, per process, every file the process writes, renames, creates or removes under
# GANKIT_AUDIT_ROOT (Python's audit hooks see every open() and os call that writes).
AUDIT = """
import os, sys
_root = os.environ["GANKIT_AUDIT_ROOT"]
_log = os.path.join(os.environ["GANKIT_AUDIT_LOG"], "rank-" + os.environ.get("RANK", "none"))
_busy = [False]
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

def _writes(event, args):
    if event == "open":
        path, mode, flags = args
        if mode is not None:
            return path, isinstance(mode, str) and any(c in mode for c in "wax+")
        return path, bool(flags & _WRITE_FLAGS)
    if event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "os.truncate"):
        return args[0], True
    return None, False

def _hook(event, args):
    if _busy[0]:
        return
    path, writes = _writes(event, args)
    if not writes or not isinstance(path, (str, os.PathLike)):
        return
    path = os.path.abspath(os.fspath(path))
    if path.startswith(_root):
        _busy[0] = True
        try:
            with open(_log, "a") as f:
                f.write(event + " " + path + "\\n")
        finally:
            _busy[0] = False

sys.addaudithook(_hook)
"""


def _env(tmp_path: Path, audit_root: Path | None = None) -> dict:
    env = dict(os.environ, GANKIT_DATA=str(real_data_dir()), OMP_NUM_THREADS="1")
    if audit_root is not None:
        hook_dir = tmp_path / "audit-hook"
        hook_dir.mkdir(exist_ok=True)
        (hook_dir / "sitecustomize.py").write_text(AUDIT)
        (tmp_path / "audit").mkdir(exist_ok=True)
        env |= {
            "PYTHONPATH": os.pathsep.join([str(hook_dir), env.get("PYTHONPATH", "")]),
            "GANKIT_AUDIT_ROOT": str(audit_root.resolve()),
            "GANKIT_AUDIT_LOG": str(tmp_path / "audit"),
        }
    return env


def _torchrun(*argv: str, env: dict, timeout: float = 240) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [*TORCHRUN, *argv], env=env, capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        pytest.fail(f"torchrun exited with {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_checkpoint(path)[0].items() if k.startswith("net/")}


def _rows_by_step(run: Path) -> dict[int, dict]:
    """A run's logged values per step (a log row and an evaluation row may share a step)."""
    rows: dict[int, dict] = {}
    for row in read_metrics(run):
        rows.setdefault(row["step"], {}).update(row)
    return rows


def _assert_same_weights(one: dict, two: dict, rel: float = 1e-3) -> None:
    """Equal up to float rounding: each tensor's largest difference is under ``rel`` of its
    largest entry (a wrong noise or batch share moves weights by their own size)."""
    assert one.keys() == two.keys()
    for key in one:
        scale = one[key].abs().max().item()
        diff = (one[key] - two[key]).abs().max().item()
        assert diff <= rel * scale, f"{key}: differs by {diff:.3g} (scale {scale:.3g})"


# --------------------------------------------------------------------------- equivalence


@pytest.mark.slow
@pytest.mark.parametrize(
    ("preset", "steps", "batch", "sets"),
    [
        ("gan-002", 8, 64, []),  # G(z) kept from D's update (reuse_noise)
        # feature matching: G's loss compares means over the global batch, not each share's
        pytest.param("gan-002", 8, 64, ["--set", "feature_matching=1"], id="feature-matching"),
        # gradient penalty (double backward). Adam's first updates are about lr·sign(g): where a
        # gradient is near zero, rounding flips its sign and moves a weight by a whole lr, so the
        # bound holds only at a small lr (reuse_noise is covered by gan-002 above)
        ("wgan-gp", 4, 32, ["--set", WGAN_GP_NO_BN, "--lr", "1e-4", "--set", "reuse_noise=false"]),
    ],
)
@pytest.mark.slow
def test_two_processes_take_the_one_process_step(
    tmp_path, evaluation, capsys, preset, steps, batch, sets
):
    one, two = tmp_path / "one", tmp_path / "two"
    args = [
        preset,
        *COMMON,
        "--batch-size",
        str(batch),
        "--log-every",
        "2",
        "--eval-every",
        str(steps),
        "--eval-samples",
        "200",
        *sets,
    ]
    assert (
        main(
            [
                "train",
                *args,
                "--steps",
                str(steps + 4),
                "--checkpoint-every",
                str(steps),
                "--out",
                str(one),
            ]
        )
        == 0
    )
    done = _torchrun(
        *args, "--steps", str(steps), "--out", str(two), env=_env(tmp_path, audit_root=two)
    )
    assert f"on 2 processes (cpu, {batch // 2} images each)" in done.stdout

    step = f"step-{steps:08d}.safetensors"
    _assert_same_weights(_weights(one / "checkpoints" / step), _weights(two / "checkpoints" / step))
    # logged losses are the global batch's: the mean over both processes' shares
    rows_one = {s: r for s, r in _rows_by_step(one).items() if s <= steps}
    rows_two = _rows_by_step(two)
    assert sorted(rows_two) == sorted(rows_one) == [0, 2, 4, 6, 8][: steps // 2 + 1]
    for s, row in rows_two.items():
        losses = [k for k in row if k.startswith(("loss/", "eval/fid"))]
        assert losses, row
        for k in losses:
            assert row[k] == pytest.approx(rows_one[s][k], rel=2e-3, abs=1e-4), (s, k)
    # the evaluation samples were spread over both processes and gathered: same FID at step 0
    assert rows_two[0]["eval/fid"] == pytest.approx(rows_one[0]["eval/fid"], rel=1e-6)

    # process 0 alone wrote the run folder (and it did write it)
    audit = tmp_path / "audit"
    written = (audit / "rank-0").read_text()
    assert "metrics.jsonl" in written and step in written and "config.toml" in written
    assert not (audit / "rank-1").exists(), (audit / "rank-1").read_text()

    # the two-process checkpoint goes on in one process: same run, with a clear note
    capsys.readouterr()
    assert main(["train", "--resume", str(two), "--steps", str(steps + 4), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "written by 2 process(es) and training goes on with 1" in err
    assert "continue exactly" in err
    last = f"step-{steps + 4:08d}.safetensors"
    _assert_same_weights(_weights(one / "checkpoints" / last), _weights(two / "checkpoints" / last))


# --------------------------------------------------------------------------- crash & resume


def _wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run exited before {what} ({proc.returncode}):\n{out}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} within {timeout} s")
        time.sleep(0.01)


def _newest_step(folder: Path) -> int:
    files = list_checkpoints(folder)
    return int(files[-1].name[5:13]) if files else -1


@pytest.mark.slow
def test_killed_two_process_run_resumes_exactly(tmp_path):
    """SIGKILL of the whole job (a machine going down) between checkpoints; the resumed job
    redoes the lost steps and ends with the uninterrupted job's weights, bit for bit (dropout
    draws included: each process's RNG state is in the checkpoint)."""
    env = _env(tmp_path)
    args = [
        "gan-002",
        *COMMON,
        "--batch-size",
        "32",
        "--set",
        GAN_002_DROPOUT,
        "--steps",
        "400",
        "--checkpoint-every",
        "50",
        "--log-every",
        "50",
    ]
    _torchrun(*args, "--out", str(tmp_path / "whole"), env=env)

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [*TORCHRUN, *args, "--out", str(run)],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    _wait_for(lambda: _newest_step(run / "checkpoints") >= 100, proc, "a checkpoint at step 100")
    for pid in [proc.pid, *_processes_of(run)]:  # torchrun starts workers in their own session
        os.kill(pid, signal.SIGKILL)
    proc.communicate()
    killed_at = _newest_step(run / "checkpoints")
    assert 100 <= killed_at < 400, "the job ended before it was killed: nothing to test"

    done = _torchrun("--resume", str(run), "--no-progress", env=env)
    assert f"resuming {run} at step {latest_step(done.stdout)}" in done.stdout
    assert latest_step(done.stdout) >= killed_at - 50
    whole = _weights(tmp_path / "whole" / "checkpoints" / "step-00000400.safetensors")
    resumed = _weights(run / "checkpoints" / "step-00000400.safetensors")
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key
    steps = [r["step"] for r in read_metrics(run) if "loss/D" in r]
    assert steps == list(range(50, 401, 50))  # the step count went on, no row twice


def latest_step(stdout: str) -> int:
    """The step a resumed run says it starts from."""
    line = next(line for line in stdout.splitlines() if line.startswith("resuming"))
    return int(line.split(" at step ")[1].split()[0])


@pytest.mark.slow
def test_a_dead_process_ends_the_run_with_a_message(tmp_path):
    env = _env(tmp_path)
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [
            *TORCHRUN,
            "gan-002",
            *COMMON,
            "--steps",
            "1000000",
            "--checkpoint-every",
            "20",
            "--out",
            str(run),
        ],
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    _wait_for(lambda: _newest_step(run / "checkpoints") >= 20, proc, "a checkpoint")
    rank1 = [pid for pid in _processes_of(run) if _environ(pid).get("RANK") == "1"]
    assert len(rank1) == 1, rank1
    os.kill(rank1[0], signal.SIGKILL)
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the job hung after one of its processes died")
    assert proc.returncode != 0
    assert (
        "gankit: error (process 0 of 2): process 0 lost the other processes of this run" in err
    ), err
    assert "The last good checkpoint is" in err and "--resume" in err
    assert latest_checkpoint(run / "checkpoints") is not None


def _processes_of(run: Path) -> list[int]:
    """The worker processes training ``run`` (by their command line)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if proc.name.isdigit() and b"gankit" in cmdline and str(run).encode() in cmdline:
            pids.append(int(proc.name))
    return pids


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


# --------------------------------------------------------------------------- units


def test_shards_of_a_draw_make_the_one_process_draw():
    def draw(m: int) -> torch.Tensor:
        return torch.randn(m, 5, generator=torch.Generator().manual_seed(7))

    whole = Shard().draw(12, draw)
    parts = [Shard(rank, 3).draw(4, draw) for rank in range(3)]
    assert torch.equal(torch.cat(parts), whole)


def test_model_noise_is_sharded_like_the_batch():
    import gankit

    model = gankit.build("cgan")
    ctx = model.context(torch.zeros(8, 1, 28, 28), None, torch.Generator().manual_seed(1))
    halves = []
    for rank in range(2):
        halves.append(
            model.context(
                torch.zeros(4, 1, 28, 28),
                None,
                torch.Generator().manual_seed(1),
                draw=Shard(rank, 2).draw,
            )
        )
    assert torch.equal(torch.cat([h.z for h in halves]), ctx.z)
    assert torch.equal(torch.cat([h.y_fake for h in halves]), ctx.y_fake)


def test_sync_bn_on_cpu_is_refused_with_the_reason():
    with pytest.raises(ConfigError, match="sync_bn = true needs CUDA"):
        distributed.wrap(
            World(0, 2, 0, 2), {"g": torch.nn.Linear(2, 2)}, torch.device("cpu"), sync_bn=True
        )


def test_half_a_torchrun_environment_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(ConfigError, match="RANK is not.*torchrun"):
        distributed.environment()


def test_one_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    world = distributed.init()
    assert world == World() and world.main and not world.parallel
    assert not torch.distributed.is_initialized()


def test_shutdown_frees_the_groups_while_python_is_alive():
    """A DDP wrapper left in a reference cycle (as a trainer leaves it) holds its process
    group; shutdown must free it, or the first collection happens as Python finalizes and a
    gloo thread aborts the process after a finished run."""
    torch.distributed.init_process_group(
        "gloo", store=torch.distributed.HashStore(), rank=0, world_size=1
    )
    gc.disable()  # only shutdown may collect the cycle
    try:
        wrapped = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2))
        wrapped.loop = [wrapped]
        alive = weakref.ref(wrapped)
        del wrapped
        assert alive() is not None  # the cycle keeps it
        distributed.shutdown()
        assert alive() is None
        assert not torch.distributed.is_initialized()
    finally:
        gc.enable()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_sigterm_stops_every_process_after_the_same_step(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [
            *TORCHRUN,
            "gan-002",
            *COMMON,
            "--steps",
            "1000000",
            "--checkpoint-every",
            "50",
            "--log-every",
            "10",
            "--out",
            str(run),
        ],
        env=_env(tmp_path),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _wait_for(lambda: _newest_step(run / "checkpoints") >= 50, proc, "a checkpoint")
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both processes
    out, err = proc.communicate(timeout=90)
    stopped = int(out.split("stopped at step ")[1].split(";")[0])
    assert stopped > 50 and _newest_step(run / "checkpoints") == stopped, out + err
    assert "resume with: torchrun --standalone --nproc-per-node 2 -m gankit train --resume" in out
    assert "lost the other processes" not in err  # an agreed stop, not a broken one
    tensors, meta = load_checkpoint(latest_checkpoint(run / "checkpoints"))
    assert meta["step"] == stopped and meta["processes"] == 2
    assert "rank1/rng/rng/torch" in tensors


@pytest.mark.slow
def test_two_machines_need_no_shared_folder(tmp_path):
    """The README's multi-machine command, with two 'machines' on this one: each starts in
    its own working directory; only machine 0's gets the run folder, and a resume reads the
    checkpoint there and sends it to the other."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    machines = [tmp_path / "machine-0", tmp_path / "machine-1"]
    for folder in machines:
        folder.mkdir()

    def launch(node: int, *argv: str) -> subprocess.Popen:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes",
                "2",
                "--node-rank",
                str(node),
                "--nproc-per-node",
                "1",
                "--master-addr",
                "127.0.0.1",
                "--master-port",
                str(port),
                "-m",
                "gankit",
                "train",
                *argv,
            ],
            cwd=machines[node],
            env=_env(tmp_path),
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    for argv in (
        ["gan-002", *COMMON, "--steps", "20", "--out", "runs/two"],
        ["--resume", "runs/two", "--steps", "30", "--no-progress"],
    ):
        procs = [launch(node, *argv) for node in (0, 1)]
        outputs = [p.communicate(timeout=180) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], outputs
    assert not (machines[1] / "runs").exists()
    assert "resuming runs/two at step 20 of 30" in outputs[0][0]
    assert load_checkpoint(latest_checkpoint(machines[0] / "runs/two/checkpoints"))[1]["step"] == 30


def _count_reductions(rank: int, port: int, preset: str, steps: int, out: str) -> None:
    """One of two processes: train ``steps`` steps, counting DDP's bucket all-reduces per
    network, and write the counts to ``out``-RANK.json."""
    import json

    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    import gankit
    from gankit.data import Dataset
    from gankit.training import Trainer

    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_WORLD_SIZE="2",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    images = torch.randint(
        0, 256, (256, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    config = gankit.configure(preset, batch_size=32, steps=steps, threads=1)
    trainer = Trainer(
        config,
        Path(out).parent / "run",
        data=Dataset(images, None, "tiny"),
        progress=False,
        tensorboard=False,
    )
    counts = dict.fromkeys(trainer.wrappers, 0)
    for name, wrapper in trainer.wrappers.items():

        def hook(group, bucket, name=name):
            counts[name] += bucket.index() == 0  # one pass per update, however many buckets
            return allreduce_hook(group, bucket)

        wrapper.register_comm_hook(None, hook)
    for _ in range(steps):
        trainer.train_step()
    Path(f"{out}-{rank}.json").write_text(json.dumps(counts))
    distributed.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        # n_critic D updates then one G update per step; D frozen (not reduced) in G's update,
        # G's kept forward from D's update reduced once, in G's
        ("gan-002", {"discriminator": 1, "generator": 1}),
        ("wgan-gp", {"discriminator": 2, "generator": 1}),  # the default's n_critic is 2
        ("bigan-004", {"discriminator": 1, "encoder": 1, "generator": 1}),
    ],
)
@pytest.mark.slow
def test_each_update_reduces_only_the_networks_it_trains(tmp_path, preset, expected):
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    steps = 3
    mp.spawn(_count_reductions, args=(port, preset, steps, str(tmp_path / "counts")), nprocs=2)
    for rank in range(2):
        counts = json.loads((tmp_path / f"counts-{rank}.json").read_text())
        # one all-reduce pass (from bucket 0 on) per update it trains
        assert counts == {name: n * steps for name, n in expected.items()}, counts


@pytest.mark.slow
def test_divergence_rolls_back_on_every_process_together(tmp_path):
    run = tmp_path / "run"
    done = subprocess.run(
        [
            *TORCHRUN,
            "gan-002",
            *COMMON,
            "--lr",
            "1e30",
            "--steps",
            "100",
            "--log-every",
            "10",
            "--on-divergence",
            "rollback",
            "--out",
            str(run),
        ],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode != 0
    # the logged means are the same on both processes, so both roll back at the same steps
    # (process 0 warns) and both give up after the third
    for n in (1, 2, 3):
        assert done.stderr.count(f"(rollback {n} of 3)") == 1, done.stderr
    for rank in (0, 1):
        assert f"gankit: error (process {rank} of 2): training diverged at step 10" in done.stderr
    rollbacks = [r for r in read_metrics(run) if "rollback" in r]
    assert [r["rollback"] for r in rollbacks] == [1, 2, 3]
    assert [r["lr_scale"] for r in rollbacks] == [0.5, 0.25, 0.125]
