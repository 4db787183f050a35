"""Data-parallel training on ``torch.distributed``: K processes started by ``torchrun``.

One run, K processes, one device each. Every process holds the whole model; each draws its
contiguous share of every global batch (see :class:`gankit.training.Batches`) and of every
noise draw (:class:`Shard`), and DistributedDataParallel averages the gradients of the
networks an update trains. Because every loss is a mean over the batch, or a function of
batch means taken over every process (:meth:`Shard.mean`), K processes on B/K images each
take the step one process takes on B images.

Process 0 owns the run folder: it alone writes checkpoints, grids, logs and metrics, reads a
checkpoint to resume from and sends it to the others, so the other processes need the data
but no shared file system. Control messages (stop flags, RNG states, evaluation results) go
over a gloo group, so that with NCCL they never wait on the GPU.
"""

from __future__ import annotations

import contextlib
import gc
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gankit.errors import ConfigError, GankitError


class ProcessLost(GankitError):
    """Another process of a multi-process run died or stopped answering."""


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank of world processes, local_rank on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        """Whether this process writes the run's files (rank 0)."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


SINGLE = World()
_control: Any = None  # the gloo process group for control messages, once initialised


def environment() -> World:
    """The world ``torchrun`` describes in this process's environment (else one process)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return SINGLE
    try:
        return World(
            int(os.environ["RANK"]),
            size,
            int(os.environ["LOCAL_RANK"]),
            int(os.environ.get("LOCAL_WORLD_SIZE", size)),
        )
    except KeyError as err:
        raise ConfigError(
            f"WORLD_SIZE={size} is set but {err.args[0]} is not: start "
            "multi-process runs with torchrun (see the README, Scale out)"
        ) from None


@dataclass(frozen=True)
class Shard:
    """This process's share of every global batch in a K-process run: rows
    [rank·n, (rank + 1)·n) of each random draw one process would make for all K·n rows, so
    K processes together use exactly the single-process noise."""

    rank: int = 0
    world: int = 1

    def take(self, rows: torch.Tensor) -> torch.Tensor:
        """This process's contiguous 1/K of global ``rows`` (K·n of them)."""
        if self.world == 1:
            return rows
        n = len(rows) // self.world
        return rows[self.rank * n : (self.rank + 1) * n]

    def draw(self, n: int, sample: Callable[[int], torch.Tensor]) -> torch.Tensor:
        """``sample(m)`` draws m rows; returns this process's n of the K·n global ones."""
        return self.take(sample(n * self.world))

    def mean(self, rows: torch.Tensor) -> torch.Tensor:
        """The mean over the global batch of this process's ``rows`` and every other's.

        Its value is the global mean on every process; its gradient flows through this
        process's own mean only. The global mean's gradient is the average of the K local
        means' gradients, which is what DDP's averaging makes of them.
        """
        local = rows.mean(dim=0)
        if self.world == 1:
            return local
        total = local.detach().clone()
        dist.all_reduce(total)  # the sum of the K means (a sum: gloo has no average)
        return local + (total / self.world - local).detach()


def init(timeout_s: float | None = None) -> World:
    """Join the process group ``torchrun`` set up (once per process; a no-op for one process).

    Tensors on CUDA go over NCCL, tensors on the CPU over gloo. ``timeout_s`` bounds how long a
    collective waits for a silent peer (``GANKIT_DIST_TIMEOUT`` seconds, default 1800).
    """
    global _control
    world = environment()
    if not world.parallel or _control is not None:
        return world
    timeout = timedelta(seconds=timeout_s or float(os.environ.get("GANKIT_DIST_TIMEOUT", 1800)))
    cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=timeout)
    # stop flags, RNG states and results travel on the CPU, never waiting on a GPU stream
    _control = dist.new_group(backend="gloo", timeout=timeout) if cuda else dist.group.WORLD
    return world


def device_for(world: World, device: torch.device) -> torch.device:
    """The device of this process: on CUDA, the GPU of its local rank (made current)."""
    if device.type != "cuda" or not world.parallel:
        return device
    if torch.cuda.device_count() <= world.local_rank:
        raise ConfigError(
            f"process {world.rank} is local rank {world.local_rank} but this "
            f"machine has {torch.cuda.device_count()} CUDA device(s): start "
            "at most one process per GPU (torchrun --nproc-per-node)"
        )
    torch.cuda.set_device(world.local_rank)
    return torch.device("cuda", world.local_rank)


def shutdown(together: bool = True) -> None:
    """Leave the process group at the end of a command; ``together`` (after a clean finish)
    waits for the other processes first: gloo torn down while a peer still talks to it can
    abort the process. After an error, leave at once (the others may be anywhere).

    The groups are freed here, not at interpreter exit: the trainer's DDP wrappers sit in
    reference cycles that hold the groups until a garbage collection, and one that first
    runs while Python finalizes lets a gloo thread reach for the GIL then, which ends the
    process with "terminate called without an active exception" after a finished run."""
    global _control
    joined = dist.is_available() and dist.is_initialized()
    if joined:
        if together:
            with contextlib.suppress(RuntimeError):  # a peer already gone: nothing to wait for
                dist.barrier(group=_control)
        dist.destroy_process_group()
    _control = None
    if joined:
        gc.collect()


# --------------------------------------------------------------------------- collectives


def lost_peer(err: BaseException) -> bool:
    """Whether ``err`` is the communication backend failing (a peer died or went silent)."""
    if isinstance(err, dist.DistError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        mark in text
        for mark in (
            "gloo",
            "NCCL",
            "Connection reset",
            "Connection closed",
            "Broken pipe",
            "timed out",
        )
    )


@contextlib.contextmanager
def guarded(what: str):
    """Turn a backend error raised in the block into :class:`ProcessLost` saying what the
    process was doing; other errors pass through."""
    try:
        yield
    except RuntimeError as err:
        if not (dist.is_initialized() and lost_peer(err)):
            raise
        raise ProcessLost(
            f"process {dist.get_rank()} lost the other processes of this run while {what} "
            f"({type(err).__name__}: {str(err).splitlines()[0][:160]}). Another process died "
            "or stopped answering: its own output says why."
        ) from err


def on_main(world: World, work: Callable[[], Any], what: str) -> Any:
    """``work()`` done by process 0 alone, its result (or its error) on every process."""
    if not world.parallel:
        return work()
    result: Any = None
    if world.main:
        try:
            result = work()
        except GankitError as err:
            result = err
    result = broadcast_object(world, result, what)
    if isinstance(result, GankitError):
        raise result
    return result


def broadcast_object(world: World, obj: Any = None, what: str = "receiving from process 0") -> Any:
    """Process 0's ``obj``, on every process."""
    if not world.parallel:
        return obj
    box = [obj]
    with guarded(what):
        dist.broadcast_object_list(box, src=0, group=_control)
    return box[0]


def gather_objects(world: World, obj: Any, what: str = "gathering states") -> list[Any]:
    """Every process's ``obj`` in rank order (on every process)."""
    if not world.parallel:
        return [obj]
    out: list[Any] = [None] * world.size
    with guarded(what):
        dist.all_gather_object(out, obj, group=_control)
    return out


class Agreement:
    """Flags OR-ed over processes without waiting on them: each :meth:`vote` posts this
    step's flags and returns the result of the previous vote, which has travelled meanwhile.
    Every process acts on the same step, one step after any of them raised a flag."""

    def __init__(self, world: World, n: int):
        self.world, self.n = world, n
        self._values: torch.Tensor | None = None
        self._pending: Any = None

    def vote(self, flags: list[bool]) -> list[bool]:
        if not self.world.parallel:
            return flags
        agreed = self.settle()
        self._values = torch.tensor(flags, dtype=torch.int32)
        with guarded("agreeing to go on"):
            self._pending = dist.all_reduce(
                self._values, op=dist.ReduceOp.MAX, group=_control, async_op=True
            )
        return agreed

    def settle(self) -> list[bool]:
        """Wait for the last vote; its result (all False when there was none)."""
        if self._pending is None:
            return [False] * self.n
        with guarded("agreeing to go on"):
            self._pending.wait()
        self._pending = None
        return [bool(v) for v in self._values.tolist()]


def mean(world: World, tensor: torch.Tensor, what: str = "averaging statistics") -> torch.Tensor:
    """The element-wise mean of ``tensor`` over processes."""
    if not world.parallel:
        return tensor
    tensor = tensor.clone()
    with guarded(what):
        dist.all_reduce(tensor)
    return tensor.div_(world.size)


def gather_rows(
    world: World, tensor: torch.Tensor, what: str = "gathering samples"
) -> torch.Tensor:
    """Every process's rows (same shape on each) concatenated in rank order."""
    if not world.parallel:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world.size)]
    with guarded(what):
        dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def broadcast_state(
    world: World,
    modules: list[nn.Module],
    buffers_only: bool = False,
    what: str = "sharing weights",
) -> None:
    """Give every process process 0's parameters (unless ``buffers_only``) and buffers."""
    if not world.parallel:
        return
    with guarded(what), torch.no_grad():
        for module in modules:
            params = [] if buffers_only else list(module.parameters())
            for tensor in [*params, *module.buffers()]:
                dist.broadcast(tensor.data, src=0)


# --------------------------------------------------------------------------- networks


def wrap(
    world: World, nets: dict[str, nn.Module], device: torch.device, sync_bn: bool = False
) -> dict[str, nn.Module]:
    """A DistributedDataParallel wrapper for each network (none for one process).

    Buffers are not re-broadcast at every forward (``forward_sync_buffers=False``): batch-norm
    running statistics stay per process while training and are made process 0's before any
    evaluation or checkpoint (:func:`broadcast_state`).
    """
    if not world.parallel:
        return {}
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn and device.type != "cuda":
        raise ConfigError(
            "train.sync_bn = true needs CUDA: PyTorch's SyncBatchNorm runs on "
            "GPUs only. On CPU each process normalises over its share of the "
            "batch; leave sync_bn off, or train on GPUs"
        )
    import inspect

    ids = [device.index] if device.type == "cuda" else None
    # the option's name since torch 2.13; earlier versions call it broadcast_buffers
    no_sync = (
        "forward_sync_buffers"
        if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
        else "broadcast_buffers"
    )
    # A weight with a size-1 dimension (a first convolution over one channel) has two valid
    # stride patterns; DDP warns that its gradient's differs from its bucket's and copies.
    warnings.filterwarnings("ignore", "Grad strides do not match bucket view strides")
    with guarded("wrapping the networks"):
        return {
            name: DistributedDataParallel(net, device_ids=ids, **{no_sync: False})
            for name, net in nets.items()
        }


def convert_sync_bn(nets: nn.ModuleDict) -> None:
    """Replace each network's batch-norm layers by synchronised ones, in place."""
    for name in list(nets):
        nets[name] = nn.SyncBatchNorm.convert_sync_batchnorm(nets[name])


def say(world: World, *args, **kwargs) -> None:
    """``print`` on process 0 only."""
    if world.main:
        print(*args, **kwargs)
