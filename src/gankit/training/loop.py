"""The training loop: run a model's phases over in-memory batches; every other job of a run
(logging, grids, checkpoints, evaluation, CPU threads) is a callback.

Everything that shapes the future of a run is a function of the seed and counters kept in
the checkpoint (batch order, noise, RNG states), so an interrupted run resumes where it was.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from gankit import runs
from gankit.config import RunConfig, save_toml, to_dict
from gankit.data import Dataset, load_dataset
from gankit.errors import ConfigError, StorageError
from gankit.models import Context, GenerativeModel, Phase, Reconstructing, build_model
from gankit.notices import warn
from gankit.runs import checkpoint
from gankit.runs.metrics_log import MetricsLog
from gankit.training import distributed
from gankit.training.batches import Batches
from gankit.training.callbacks import (
    Callback,
    Checkpoints,
    Evaluating,
    FollowLoad,
    LogRows,
    RunStatus,
    SampleGrids,
    as_callbacks,
)
from gankit.training.diagnostics import Alarms
from gankit.training.distributed import Shard
from gankit.training.environment import (
    configure_threads,
    derive_seed,
    resolve_device,
    seed_everything,
)
from gankit.training.guards import (
    Clock,
    Rollback,
    StopRule,
    TrainingDiverged,
    diverged,
    last_checkpoint_text,
    weight_norms,
)
from gankit.training.optim import build_optimizers, match_memory_format
from gankit.version import __version__
from gankit.viz import grid_array, pair_grid, save_grid, save_png

C = TypeVar("C", bound=Callback)


def uses_convolutions(model: nn.Module) -> bool:
    """Whether any network holds a 4-D (convolution) weight."""
    return any(p.dim() == 4 for p in model.parameters())


@dataclass
class FitResult:
    """How a call to :meth:`Trainer.fit` ended."""

    step: int
    interrupted: bool  # stopped by SIGINT/SIGTERM (a time budget running out is not)
    last_row: dict
    checkpoint: Path | None


def prior_images(images: torch.Tensor, seed: int) -> torch.Tensor:
    """The fixed images (10,000 at most: seconds to fit) whose codes a run of ``seed``
    fits its prior to."""
    pick = torch.Generator().manual_seed(derive_seed(seed, 7))
    return images[torch.randperm(len(images), generator=pick)[:10_000]]


def fit_prior(model: GenerativeModel, images: torch.Tensor, seed: int) -> None:
    """Fit ``model``'s prior to the codes of ``images`` as a run of ``seed`` does."""
    model.fit_prior(images, seed=derive_seed(seed, 8))


class Trainer:
    """Trains one model in one run folder; :func:`gankit.api.launch` builds one for a new
    run or a resumed one, with the evaluation callback when the config asks for it.

    ``callbacks``: :class:`~gankit.training.callbacks.Callback` objects or plain functions of
    each logged row, called after the built-in ones. Started by ``torchrun`` with K
    processes, it trains the same run data-parallel (see :mod:`gankit.training.distributed`);
    process 0 alone writes the run folder and receives the rows.
    """

    def __init__(
        self,
        config: RunConfig,
        run_dir: str | Path,
        model: GenerativeModel | None = None,
        data: Dataset | None = None,
        callbacks: Iterable[Callback | Callable[[dict], None]] = (),
        progress: bool = True,
        tensorboard: bool = True,
    ):
        self.config, self.run_dir = config, Path(run_dir)
        self.world = world = distributed.init()
        # process 0 holds the run folder's lock while it trains there: a second process
        # (a new run with the same --out, a second resume) is refused before it writes
        self._lock, created = runs.take_claim(self.run_dir) if world.main else (None, False)
        try:
            self._set_up(model, data, callbacks, progress, tensorboard)
        except BaseException:
            if self._lock is not None:  # refused: leave no empty folder behind
                runs.discard_empty_run(self._lock) if created else self._lock.release()
            raise

    def _set_up(self, model, data, callbacks, progress, tensorboard) -> None:
        config, world = self.config, self.world
        tc, mc = config.train, config.model
        self.device = distributed.device_for(world, resolve_device(tc.device))
        threads = configure_threads(tc.threads, world.local_size)
        seed_everything(tc.seed)  # the same on every process: the same networks
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # pick the fastest kernels for these shapes
        if tc.precision == "bf16" and self.device.type == "cpu":
            self.notice(
                "train.precision = 'bf16' on a CPU: most CPUs have no bf16 arithmetic "
                "and run it many times slower than fp32"
            )
        self.data = data = check_data(
            data
            or load_dataset(
                tc.data, "train", tc.data_dir or None, mc.image_size, channels=mc.channels
            ),
            config,
        )

        self.model = model or build_model(mc)
        if tc.sync_bn and world.parallel and self.device.type == "cuda":
            distributed.convert_sync_bn(self.model.nets)
        self.model.to(self.device)
        self.memory_format = (
            torch.channels_last
            if tc.fast and uses_convolutions(self.model)
            else torch.contiguous_format
        )
        self.model.to(memory_format=self.memory_format)  # oneDNN's fast convolution layout
        self.model.train()
        self.shard = Shard(world.rank, world.size)  # this process's share of every draw
        self.phases = self.model.phases(reuse=tc.fast)
        # with one phase every network trains; with several, update() switches between them
        self._trainable = self.phases[0] if len(self.phases) == 1 else None
        self.optimizers = build_optimizers(self.model, self.phases, tc.fast)
        distributed.broadcast_state(world, [self.model])  # process 0's (e.g. custom) networks
        trained = {n for p in self.phases for n in p.nets}
        # one DistributedDataParallel wrapper per trained network (none for one process)
        self.wrappers = wrappers = distributed.wrap(
            world, {n: self.model.nets[n] for n in sorted(trained)}, self.device, tc.sync_bn
        )
        # each update calls the wrappers of the networks it trains (and of those whose graph
        # it keeps for the next update): DDP all-reduces their gradients and no others
        self._routes = {
            p.name: dict(self.model.nets.items())
            | {n: wrappers[n] for n in (*p.nets, *p.keeps) if n in wrappers}
            for p in self.phases
        }
        if world.rank:  # each process its own stream for dropout and the like
            seed_everything(derive_seed(tc.seed, 6, world.rank))
        self.rng = torch.Generator(self.device).manual_seed(derive_seed(tc.seed, 2))
        labels = data.labels.to(self.device) if data.labels is not None else None
        self.batches = Batches(
            data.images.to(self.device),
            labels,
            tc.batch_size,
            tc.seed,
            tc.sampler,
            world.rank,
            world.size,
        )
        self.batches_per_step = sum(p.repeat for p in self.phases if p.draw == "batch")
        self.total_steps = run_length(config, len(data), self.batches_per_step)
        self.step = 0
        self.clock = Clock()  # training seconds over every session of this run
        self.log = MetricsLog(self.run_dir, tensorboard, active=world.main)
        self.alarms = Alarms(
            mc.num_classes if mc.conditional else data.num_classes,
            adversarial=mc.family in ("gan", "bigan"),
        )
        self.rollback = Rollback(self)
        self.stop = StopRule(self)
        self._make_fixed_inputs()
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        # the built-in jobs, in the order they run after a step, then the user's
        self.logger = LogRows(progress)
        self.checkpoints = Checkpoints()
        # threads = 0: follow the load of other programs; a fixed count keeps float rounding
        # identical run to run
        follow = (
            tc.threads == 0 and threads > 1 and self.device.type == "cpu" and not world.parallel
        )
        self.callbacks: list[Callback] = [
            self.logger,
            SampleGrids(),
            self.checkpoints,
            RunStatus(),
            *([FollowLoad(threads)] if follow else []),
            *as_callbacks(callbacks),
        ]
        if tc.eval_every and not any(isinstance(c, Evaluating) for c in self.callbacks):
            raise ConfigError(
                f"train.eval_every = {tc.eval_every} needs an evaluation: start "
                "the run with gankit.api.launch (or gankit.train), or pass "
                "callbacks=[PeriodicEvaluation(evaluation, config)]"
            )

    # -- the loop -------------------------------------------------------------------------
    def fit(self) -> FitResult:
        """Train up to ``total_steps``; returns early (with a checkpoint) at a signal or when
        the time budget is spent. A divergence rolls back if so configured, else stops the
        run; a file that cannot be written (a full disk) stops it with a StorageError naming
        the file and the last good checkpoint; a second signal stops at once."""
        with self._session():
            distributed.on_main(self.world, self._prepare_folder, "preparing the run folder")
            self._each("on_fit_start")
            self.clock.restart(self.step)
            while self.step < self.total_steps and not self.stop.requested():
                try:
                    self.train_step()
                    self._each("on_step_end")
                except TrainingDiverged as err:
                    self.rollback.recover(err)  # or raises it again: the run stops
            self.stop.settle()
            self.clock.stop()
            self._each("on_fit_end")
        return FitResult(
            self.step, self.stop.interrupted, self.logger.last_row, self.checkpoints.last
        )

    def train_step(self) -> None:
        """One step: every phase's updates in order (e.g. n_critic D updates, then G)."""
        ctx: Context | None = None
        for phase in self.phases:
            for i in range(phase.repeat):
                ctx = self.update(phase, ctx, self.step * phase.repeat + i)
        self.step += 1

    def update(self, phase: Phase, ctx: Context | None, index: int = 0) -> Context:
        """Update number ``index`` of ``phase`` (one optimiser step); returns the context it
        used (for the next one)."""
        if phase is not self._trainable:  # gradients only for what it trains (or keeps)
            for name, net in self.model.nets.items():
                net.requires_grad_(name in phase.nets or name in phase.keeps)
            self._trainable = phase
        if ctx is None or phase.draw == "batch":
            images, labels = self.batches.next()
            x = self.model.prepare(images).contiguous(memory_format=self.memory_format)
            ctx = self.model.context(
                x, labels, self.rng, draw=self.shard.draw, mean=self.shard.mean
            )
        elif phase.draw == "noise":
            self.model.refresh_noise(ctx)
        ctx.nets = self._routes[phase.name]  # this update's networks (DDP: its wrappers)
        ctx.index = index
        optimizer = self.optimizers[phase.optimizer]
        # spectral norm: one power iteration per update
        with parametrize.cached(), self._autocast():
            loss, stats = phase.loss(ctx)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if phase.after_step is not None:
            phase.after_step()
        for key, value in stats.items():  # summed on the device: no sync per step
            self._sums[key] = self._sums[key] + value if key in self._sums else value
            self._counts[key] = self._counts.get(key, 0) + 1
        return ctx

    def callback(self, kind: type[C]) -> C | None:
        """This run's first callback of type ``kind`` (e.g. its evaluation), or None."""
        return next((c for c in self.callbacks if isinstance(c, kind)), None)

    def _each(self, hook: str) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self)

    @contextlib.contextmanager
    def _session(self) -> Iterator[None]:
        """The folder's lock and the signal handlers held while training; the errors that
        end a run, each naming the last good checkpoint and how to continue."""
        if self.world.main and not self._lock.held:  # a second fit() of this trainer
            self._lock = runs.lock_run(self.run_dir)
        try:
            # a lost peer: no hang; the callbacks hear of any error that ends the run
            with self.stop, distributed.guarded("training"), self._telling_callbacks():
                yield
        except distributed.ProcessLost as err:
            raise distributed.ProcessLost(
                f"{err} The last good checkpoint is {last_checkpoint_text(self.run_dir)}; "
                "continue with the same torchrun command and `gankit train --resume "
                "RUN_DIR`."
            ) from err
        except StorageError as err:
            raise self._storage_stop(err) from err
        except KeyboardInterrupt:
            raise KeyboardInterrupt(
                f"stopped at once at step {self.step}; the last good checkpoint is "
                f"{last_checkpoint_text(self.run_dir)}; resume with: gankit train --resume "
                f"{self.run_dir}"
            ) from None
        finally:
            self.logger.close()
            self.log.close()
            if self._lock is not None:
                self._lock.release()

    @contextlib.contextmanager
    def _telling_callbacks(self) -> Iterator[None]:
        try:
            yield
        except BaseException as err:
            for callback in self.callbacks:
                with contextlib.suppress(Exception):
                    callback.on_exception(self, err)
            raise

    # -- what callbacks use -----------------------------------------------------------------
    def has_stats(self) -> bool:
        """Whether statistics were gathered since the last logged row."""
        return bool(self._sums)

    def flush_stats(self) -> dict[str, float]:
        """The mean statistics since the last row, over every process; stops a run whose
        losses or weights are no longer finite (one host sync for both)."""
        if not self._sums:
            return {}
        keys, nets = list(self._sums), self._nets_to_check()
        values = torch.stack([self._sums[k] / self._counts[k] for k in keys] + weight_norms(nets))
        values = distributed.mean(self.world, values).tolist()  # the global batch's means
        self._sums, self._counts = {}, {}
        out = dict(zip(keys, values[: len(keys)], strict=True))
        bad = [k for k, v in out.items() if not math.isfinite(v)]
        bad_nets = [
            n for n, v in zip(nets, values[len(keys) :], strict=True) if not math.isfinite(v)
        ]
        if bad or bad_nets:
            raise diverged(
                self,
                " and ".join(
                    ([f"{', '.join(bad)} became non-finite"] if bad else [])
                    + (
                        [f"the weights of {', '.join(bad_nets)} hold NaN or inf"]
                        if bad_nets
                        else []
                    )
                ),
            )
        return out

    def check_weights(self) -> None:
        """Stop before a checkpoint or an evaluation if any weight is NaN or infinite."""
        nets = self._nets_to_check()
        finite = torch.isfinite(torch.stack(weight_norms(nets))).tolist()
        bad = [name for name, ok in zip(nets, finite, strict=True) if not ok]
        if bad:
            raise diverged(self, f"the weights of {', '.join(bad)} hold NaN or inf")

    def _nets_to_check(self) -> dict[str, nn.Module]:
        ema = {"ema": self.model.ema} if self.model.ema is not None else {}
        return dict(self.model.nets.items()) | ema

    def emit(self, row: dict) -> dict:
        """Log a row (with the warnings it raises as text) and hand it to the callbacks on
        process 0; show the warnings."""
        warnings = self.alarms.on_eval(row) if "eval/fid" in row else self.alarms.on_log(row)
        if warnings:
            row["warning"] = " ".join(warnings)
        self.log.write(row)
        if self.world.main:
            for callback in self.callbacks:
                callback.on_row(self, row)
        for text in warnings:
            self.notice(text)
        return row

    def notice(self, text: str) -> None:
        """A warning for the user, said once by process 0 (above the progress bar)."""
        if self.world.main:
            warn(text)

    def rewound(self) -> None:
        """The run went back to an earlier step (a rollback): restart the windows."""
        self._sums, self._counts = {}, {}
        self.logger.rewind(self)
        self.clock.restart(self.step)

    def save_grids(self) -> None:
        """Sample grid from the fixed noise (and reconstructions of fixed real images), each
        a PNG and the same pixels in TensorBoard's Images tab ("samples", "reconstructions")."""
        if not self.world.main:
            return
        self.fit_prior()
        name = f"step-{self.step:08d}.png"
        images = self.model.generate(self._grid_latent(), self.fixed_y)
        nrow = 10 if self.config.model.conditional else None
        grid = grid_array(images.cpu(), nrow=nrow, scale=2)
        save_png(grid, self.run_dir / "samples" / name)
        self.log.add_image("samples", grid, self.step)
        if isinstance(self.model, Reconstructing):
            recon = self.model.reconstruct(self.fixed_real)
            pairs = pair_grid(self.fixed_real.cpu(), recon.cpu(), nrow=8)
            grid = grid_array(pairs, nrow=8, scale=2)
            save_png(grid, self.run_dir / "reconstructions" / name)
            self.log.add_image("reconstructions", grid, self.step)

    def fit_prior(self) -> None:
        """Refit the model's prior to the current codes, once per step it is needed at."""
        if self.prior_images is not None and self._prior_step != self.step:
            fit_prior(self.model, self.prior_images, self.config.train.seed)
            self._prior_step = self.step

    def sync_buffers(self) -> None:
        """Process 0's batch-norm statistics (and other buffers) on every process: what a
        checkpoint keeps and what every process samples with."""
        distributed.broadcast_state(self.world, [self.model], buffers_only=True)

    # -- set-up -----------------------------------------------------------------------------
    def _make_fixed_inputs(self) -> None:
        """One noise batch for every sample grid and a few real images for reconstructions."""
        tc, mc = self.config.train, self.config.model
        gen = torch.Generator(self.device).manual_seed(derive_seed(tc.seed, 3))
        self.fixed_z = self.model.sample_latent(tc.grid_size, gen)
        self.fixed_y = (
            torch.arange(tc.grid_size, device=self.device) % mc.num_classes
            if mc.conditional
            else None
        )
        order = torch.randperm(
            len(self.data), generator=torch.Generator().manual_seed(derive_seed(tc.seed, 4))
        )[: min(32, len(self.data))]
        self.fixed_real = self.data.images[order].to(self.device)
        # the images whose codes a fitted prior models (a fixed 10,000 at most: seconds)
        self.prior_images, self._prior_step = None, None
        if mc.latent.prior == "fitted":
            self.prior_images = prior_images(self.data.images, tc.seed)

    def _grid_latent(self) -> torch.Tensor:
        """The grids' fixed noise; from a fitted prior, the same seeded draws of it each time."""
        if not self.model.fitted_prior:
            return self.fixed_z
        gen = torch.Generator(self.device).manual_seed(derive_seed(self.config.train.seed, 3))
        return self.model.sample_latent(len(self.fixed_z), gen)

    def _autocast(self):
        """bf16 autocast when ``train.precision`` asks for it, else nothing."""
        if self.config.train.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _prepare_folder(self) -> None:
        """Process 0: the run folder, writable, with the config, cleared of a killed run's
        temporary files and of log rows past the step this run restarts from."""
        runs.prepare_run_dir(self.run_dir, self._space_needed())
        save_toml(self.config, self.run_dir / "config.toml")
        self.log.truncate_after(self.step)
        if self.step == 0:
            save_grid(self.fixed_real.cpu(), self.run_dir / "real.png", scale=2)

    def _space_needed(self) -> int:
        """Bytes a run may hold at once: the kept checkpoints, one being written and the best
        (each ≈ weights + optimiser moments + EMA), plus 16 MiB for grids and logs."""
        weights = sum(t.numel() * t.element_size() for t in self.model.weights().values())
        moments = (
            sum(
                t.numel() * t.element_size()
                for opt in self.optimizers.values()
                for group in opt.param_groups
                for t in group["params"]
            )
            * 2
        )
        per_checkpoint = weights + moments
        return per_checkpoint * (self.config.train.keep_checkpoints + 2) + 16 * 2**20

    def _storage_stop(self, err: StorageError) -> StorageError:
        """The error that ends a run whose file ``err.path`` could not be written: it names
        the newest checkpoint, written now if that still works and none holds this step."""
        saved = ""
        newest = checkpoint.list_checkpoints(self.run_dir / "checkpoints")
        folder = (self.run_dir / "checkpoints").resolve()
        if (
            self.world.main
            and not self.world.parallel
            and err.path is not None
            and Path(err.path).resolve().parent != folder
            and (not newest or int(newest[-1].stem.removeprefix("step-")) < self.step)
        ):
            try:
                saved = f"; saved checkpoint {self.save_checkpoint()} first"
            except (StorageError, TrainingDiverged):
                pass  # the disk is full for checkpoints too: the last one stays the last good
        return StorageError(
            f"{err}. Training stopped at step {self.step}{saved}; the last good checkpoint is "
            f"{last_checkpoint_text(self.run_dir)}. Once the file can be written, continue "
            f"with: gankit train --resume {self.run_dir}"
        )

    # -- state and checkpoints ----------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything needed to continue this run exactly: tensors and JSON metadata."""
        tensors = self.model.weights()
        meta: dict = {"optimizers": {}}
        for key, opt in self.optimizers.items():
            opt_tensors, skeleton = checkpoint.flatten_state_dict(f"optim/{key}", opt.state_dict())
            tensors |= opt_tensors
            meta["optimizers"][key] = skeleton
        # each process's global RNGs: rank 0's as in a one-process run, rank r's under rank{r}/
        for rank, (rng_tensors, rng_meta) in enumerate(
            distributed.gather_objects(
                self.world, checkpoint.capture_rng_state(), "gathering RNG states"
            )
        ):
            prefix = f"rank{rank}/" if rank else ""
            tensors |= {f"{prefix}rng/{k}": v for k, v in rng_tensors.items()}
            meta[f"{prefix}rng"] = rng_meta
        tensors["rng/trainer"] = checkpoint.generator_state(self.rng)
        tensors["fixed/z"] = self.fixed_z
        tensors["fixed/real"] = self.fixed_real
        if self.fixed_y is not None:
            tensors["fixed/y"] = self.fixed_y
        meta |= {
            "step": self.step,
            "total_steps": self.total_steps,
            "elapsed": self.clock.elapsed,
            "batches": self.batches.state(),
            "config": to_dict(self.config),
            "versions": {"gankit": __version__, "torch": torch.__version__},
            "device": str(self.device),
            "processes": self.world.size,
        }
        for part in (self.rollback, *self.callbacks):
            meta |= part.state()
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Restore a state written by :meth:`state` (the inverse, on this trainer's device)."""
        self.model.load_weights(tensors)
        for key, opt in self.optimizers.items():
            opt.load_state_dict(checkpoint.unflatten_state_dict(tensors, meta["optimizers"][key]))
            match_memory_format(opt)
        self._restore_rng(tensors, meta)
        self.rng.set_state(tensors["rng/trainer"].cpu())
        self.fixed_z = tensors["fixed/z"].to(self.device)
        self.fixed_real = tensors["fixed/real"].to(self.device)
        if "fixed/y" in tensors:
            self.fixed_y = tensors["fixed/y"].to(self.device)
        self.step, self.clock.elapsed = meta["step"], meta["elapsed"]
        self.batches.load_state(meta["batches"])
        for part in (self.rollback, *self.callbacks):
            part.load_state(meta)

    def _restore_rng(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """This process's global RNG states from a checkpoint of as many processes; from
        one of another count, process 0 takes rank 0's and the others start fresh streams."""
        world, saved = self.world, meta.get("processes", 1)
        prefix = f"rank{world.rank}/" if world.rank else ""
        if saved == world.size or not world.rank:
            checkpoint.restore_rng_state(
                {
                    k[len(prefix) + 4 :]: v
                    for k, v in tensors.items()
                    if k.startswith(f"{prefix}rng/")
                },
                meta[f"{prefix}rng"],
            )
        else:
            seed_everything(derive_seed(self.config.train.seed, 6, world.rank, meta["step"]))
        if saved != world.size:
            self.notice(
                f"this checkpoint was written by {saved} process(es) and training goes on with "
                f"{world.size}: the weights, optimiser states, batch order and noise continue "
                f"exactly (batch_size {self.config.train.batch_size} stays the global batch), "
                "but each process's own random stream (dropout) starts afresh and batch-norm "
                "layers normalise over a different share of the batch, so the run is no "
                f"longer bit-identical to one continued on {saved}"
            )

    def save_checkpoint(self, name: str | None = None) -> Path:
        """Write ``checkpoints/step-N.safetensors`` (or ``checkpoints/NAME``) atomically and
        prune old step files (never with non-finite weights: the previous checkpoint stays
        the last good one). Every process takes part; process 0 writes."""
        self.check_weights()
        self.sync_buffers()
        self.fit_prior()  # a checkpoint's prior belongs to its weights
        folder = self.run_dir / "checkpoints"
        path = folder / name if name else checkpoint.checkpoint_path(folder, self.step)
        state = self.state()
        if self.world.main:
            folder.mkdir(parents=True, exist_ok=True)
            path = checkpoint.save_checkpoint(path, *state)
            if name is None:
                checkpoint.prune_checkpoints(folder, self.config.train.keep_checkpoints)
        return path

    def read_checkpoint(self, path: Path) -> tuple[dict[str, torch.Tensor], dict]:
        """A checkpoint of this run, read by process 0 and sent to the others."""
        return distributed.on_main(
            self.world,
            lambda: checkpoint.load_checkpoint(path, device="cpu"),
            "receiving the checkpoint",
        )


def check_data(data: Dataset, config: RunConfig) -> Dataset:
    """``data`` (its first ``data_limit`` images) if the model can train on it, else a
    ConfigError saying what does not fit."""
    tc, mc = config.train, config.model
    if tc.data_limit:
        data = data.subset(tc.data_limit)
    expected = (mc.channels, mc.image_size, mc.image_size)
    if tuple(data.images.shape[1:]) != expected:
        raise ConfigError(
            f"data {data.name} has images of shape "
            f"{tuple(data.images.shape[1:])} but the model expects {expected}: "
            "set model.image_size/model.channels or resize the data"
        )
    if mc.conditional:
        if data.labels is None:
            raise ConfigError(
                f"a conditional model needs labels, and {data.name} has none:"
                " use class sub-folders (folder:) or a 'labels' array (npz:)"
            )
        if data.num_classes and data.num_classes > mc.num_classes:
            raise ConfigError(
                f"{data.name} has {data.num_classes} classes but "
                f"model.num_classes = {mc.num_classes}"
            )
    return data


def run_length(config: RunConfig, images: int, batches_per_step: int) -> int:
    """The run's total steps: ``steps``, or ``epochs`` passes over ``images``."""
    tc = config.train
    if tc.steps:
        return tc.steps
    if tc.epochs:
        return max(1, math.ceil(tc.epochs * images / (batches_per_step * tc.batch_size)))
    raise ConfigError("the run has no length: set --steps N or --epochs N")
