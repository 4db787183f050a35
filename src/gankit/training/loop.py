"""The training loop: run a model's phases over in-memory batches, log, draw, checkpoint.

Everything that shapes the future of a run is a function of the seed and counters kept in
the checkpoint (batch order, noise, RNG states), so an interrupted run resumes where it was.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from gankit import runs
from gankit.config import RunConfig, from_dict, save_toml, to_dict
from gankit.data import Dataset, load_dataset
from gankit.errors import CheckpointError, ConfigError, GankitError, StorageError
from gankit.files import remove_temporaries
from gankit.models import Context, GenerativeModel, Phase, Shard, build_model
from gankit.runs import checkpoint
from gankit.runs.metrics_log import MetricsLog
from gankit.training import distributed
from gankit.training.batches import Batches
from gankit.training.cpu import ThreadGovernor
from gankit.training.diagnostics import Alarms
from gankit.training.environment import (
    configure_threads,
    derive_seed,
    resolve_device,
    seed_everything,
)
from gankit.training.optim import build_optimizers, match_memory_format
from gankit.version import __version__
from gankit.viz import pair_grid, save_grid

Callback = Callable[[dict], None]


class TrainingDiverged(GankitError):
    """A loss or weight became NaN or infinite; ``cause`` says which, at which step."""

    def __init__(self, message: str, cause: str = ""):
        super().__init__(message)
        self.cause = cause or message



def uses_convolutions(model: nn.Module) -> bool:
    """Whether any network holds a 4-D (convolution) weight."""
    return any(p.dim() == 4 for p in model.parameters())



# --------------------------------------------------------------------------- the trainer


@dataclass
class FitResult:
    """How a call to :meth:`Trainer.fit` ended."""

    step: int
    interrupted: bool  # stopped by SIGINT/SIGTERM (a time budget running out is not)
    last_row: dict
    checkpoint: Path | None


class Trainer:
    """Trains one model in one run folder; see :func:`gankit.api.train` for the short way.

    Started by ``torchrun`` with K processes, it trains the same run data-parallel (see
    :mod:`gankit.distributed`); process 0 alone writes the run folder and calls ``callbacks``.
    """

    def __init__(self, config: RunConfig, run_dir: str | Path, model: GenerativeModel | None = None,
                 data: Dataset | None = None, callbacks: Iterable[Callback] = (),
                 progress: bool = True, tensorboard: bool = True, evaluation=None):
        self.config, self.run_dir = config, Path(run_dir)
        self.world = world = distributed.init()
        # process 0 holds the run folder's lock while it trains there: a second process
        # (a new run with the same --out, a second resume) is refused before it writes
        self._lock, created = runs.take_claim(self.run_dir) if world.main else (None, False)
        try:
            self._set_up(model, data, callbacks, progress, tensorboard, evaluation)
        except BaseException:
            if self._lock is not None:  # refused: leave no empty folder behind
                runs.discard_empty_run(self._lock) if created else self._lock.release()
            raise

    def _set_up(self, model, data, callbacks, progress, tensorboard, evaluation) -> None:
        config, world = self.config, self.world
        tc, mc = config.train, config.model
        self.device = distributed.device_for(world, resolve_device(tc.device))
        threads = configure_threads(tc.threads, world.local_size)
        # threads = 0: follow the load of other programs (spinning threads on a taken core
        # slow every step); a fixed count keeps float rounding identical run to run
        self.governor = (ThreadGovernor(threads) if not tc.threads and threads > 1
                         and self.device.type == "cpu" and not world.parallel else None)
        seed_everything(tc.seed)  # the same on every process: the same networks
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # pick the fastest kernels for these shapes
        if tc.precision == "bf16" and self.device.type == "cpu":
            print("warning: train.precision = 'bf16' on a CPU: most CPUs have no bf16 "
                  "arithmetic and run it many times slower than fp32", file=sys.stderr)

        if data is None:
            data = load_dataset(tc.data, "train", tc.data_dir or None, mc.image_size)
        if tc.data_limit:
            data = data.subset(tc.data_limit)
        expected = (mc.channels, mc.image_size, mc.image_size)
        if tuple(data.images.shape[1:]) != expected:
            raise ConfigError(f"data {data.name} has images of shape "
                              f"{tuple(data.images.shape[1:])} but the model expects {expected}: "
                              "set model.image_size/model.channels or resize the data")
        if mc.conditional:
            if data.labels is None:
                raise ConfigError(f"a conditional model needs labels, and {data.name} has none:"
                                  " use class sub-folders (folder:) or a 'labels' array (npz:)")
            if data.num_classes and data.num_classes > mc.num_classes:
                raise ConfigError(f"{data.name} has {data.num_classes} classes but "
                                  f"model.num_classes = {mc.num_classes}")
        self.data = data

        self.model = model or build_model(mc)
        if tc.sync_bn and world.parallel and self.device.type == "cuda":
            distributed.convert_sync_bn(self.model.nets)
        self.model.to(self.device)
        self.memory_format = (torch.channels_last if tc.fast and uses_convolutions(self.model)
                              else torch.contiguous_format)
        self.model.to(memory_format=self.memory_format)  # oneDNN's fast convolution layout
        self.model.train()
        self.model.shard = Shard(world.rank, world.size)
        self.phases = self.model.phases(reuse=tc.fast)
        self.optimizers = build_optimizers(self.model, self.phases, tc.fast)
        distributed.broadcast_state(world, [self.model])  # process 0's (e.g. custom) networks
        trained = {n for p in self.phases for n in p.nets}
        # one DistributedDataParallel wrapper per trained network (none for one process)
        self.wrappers = wrappers = distributed.wrap(
            world, {n: self.model.nets[n] for n in sorted(trained)}, self.device, tc.sync_bn)
        # each update calls the wrappers of the networks it trains (and of those whose graph
        # it keeps for the next update): DDP all-reduces their gradients and no others
        self._routes = {p.name: {n: wrappers[n] for n in (*p.nets, *p.keeps) if n in wrappers}
                        for p in self.phases}
        if world.rank:  # each process its own stream for dropout and the like
            seed_everything(derive_seed(tc.seed, 6, world.rank))
        self.rng = torch.Generator(self.device).manual_seed(derive_seed(tc.seed, 2))
        labels = data.labels.to(self.device) if data.labels is not None else None
        self.batches = Batches(data.images.to(self.device), labels, tc.batch_size, tc.seed,
                               tc.sampler, world.rank, world.size)
        self.batches_per_step = sum(p.repeat for p in self.phases if p.draw == "batch")
        self.total_steps = self._resolve_steps()
        self.step = 0
        self.elapsed = 0.0  # training seconds over every session of this run
        self.callbacks = list(callbacks) if world.main else []
        self.progress = progress and world.main
        self.log = MetricsLog(self.run_dir, tensorboard, active=world.main)
        self.evaluation = None  # process 0 scores the samples every process makes
        if tc.eval_every and world.main:  # a given Evaluation saves loading one
            self.evaluation = self._check_evaluation(evaluation or self._open_evaluation())
        self.best: dict = {"fid": math.inf, "step": None}  # the best evaluation so far
        self.last_eval: dict = {}
        self.eval_seconds = 0.0
        self.rollbacks, self.lr_scale = 0, 1.0  # divergence rollbacks so far, lr multiplier
        self.alarms = Alarms(mc.num_classes if mc.conditional else data.num_classes,
                             adversarial=mc.family in ("gan", "bigan"))
        self._make_fixed_inputs()
        self._sums: dict[str, torch.Tensor] = {}
        self._counts: dict[str, int] = {}
        self._stop_signal: int | None = None

    # -- set-up ---------------------------------------------------------------------------
    def _resolve_steps(self) -> int:
        tc = self.config.train
        if tc.steps:
            return tc.steps
        if tc.epochs:
            per_step = self.batches_per_step * tc.batch_size
            return max(1, math.ceil(tc.epochs * len(self.data) / per_step))
        raise ConfigError("the run has no length: set --steps N or --epochs N")

    def _open_evaluation(self):
        from gankit.evaluation import open_evaluation

        tc, mc = self.config.train, self.config.model
        return open_evaluation(tc.data, tc.data_dir or None, mc.image_size, self.device,
                               tc.evaluator or None, progress=self.progress)

    def _check_evaluation(self, evaluation):
        mc = self.config.model
        shape = tuple(evaluation.evaluator.image_shape)
        if shape != (mc.channels, mc.image_size, mc.image_size):
            raise ConfigError(f"the evaluator takes images of shape {shape}, the model makes "
                              f"{(mc.channels, mc.image_size, mc.image_size)}: pass an "
                              "evaluator built for this image size (--evaluator)")
        return evaluation

    def _make_fixed_inputs(self) -> None:
        """One noise batch for every sample grid and a few real images for reconstructions."""
        tc, mc = self.config.train, self.config.model
        gen = torch.Generator(self.device).manual_seed(derive_seed(tc.seed, 3))
        self.fixed_z = self.model.sample_latent(tc.grid_size, gen)
        self.fixed_y = (torch.arange(tc.grid_size, device=self.device) % mc.num_classes
                        if mc.conditional else None)
        order = torch.randperm(len(self.data), generator=torch.Generator().manual_seed(
            derive_seed(tc.seed, 4)))[: min(32, len(self.data))]
        self.fixed_real = self.data.images[order].to(self.device)
        # the images whose codes a fitted prior models (a fixed 10,000 at most: seconds)
        self.prior_images, self._prior_step = None, None
        if mc.latent.prior == "fitted":
            order = torch.randperm(len(self.data), generator=torch.Generator().manual_seed(
                derive_seed(tc.seed, 7)))[:10_000]
            self.prior_images = self.data.images[order]

    def _fit_prior(self) -> None:
        """Refit the model's prior to the current codes, once per step it is needed at."""
        if self.prior_images is not None and self._prior_step != self.step:
            self.model.fit_prior(self.prior_images, seed=derive_seed(self.config.train.seed, 8))
            self._prior_step = self.step

    def _grid_latent(self) -> torch.Tensor:
        """The grids' fixed noise; from a fitted prior, the same seeded draws of it each time."""
        if not self.model.fitted_prior:
            return self.fixed_z
        gen = torch.Generator(self.device).manual_seed(derive_seed(self.config.train.seed, 3))
        return self.model.sample_latent(len(self.fixed_z), gen)

    # -- one step -----------------------------------------------------------------------
    def _autocast(self):
        """bf16 autocast when ``train.precision`` asks for it, else nothing."""
        if self.config.train.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _set_trainable(self, phase: Phase) -> None:
        for name, net in self.model.nets.items():
            net.requires_grad_(name in phase.nets or name in phase.keeps)

    def update(self, phase: Phase, ctx: Context | None) -> Context:
        """One optimiser update of ``phase``; returns the context it used (for the next one)."""
        if ctx is None or phase.draw == "batch":
            images, labels = self.batches.next()
            x = self.model.prepare(images).contiguous(memory_format=self.memory_format)
            ctx = self.model.context(x, labels, self.rng)
        elif phase.draw == "noise":
            self.model.refresh_noise(ctx)
        optimizer = self.optimizers[phase.optimizer]
        # spectral norm: one power iteration per update
        with parametrize.cached(), self._autocast(), self.model.routed(self._routes[phase.name]):
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

    def train_step(self) -> None:
        """One step: every phase's updates in order (e.g. n_critic D updates, then G)."""
        ctx: Context | None = None
        for phase in self.phases:
            if len(self.phases) > 1:
                self._set_trainable(phase)
            for _ in range(phase.repeat):
                ctx = self.update(phase, ctx)
        self.step += 1

    def _flush_stats(self) -> dict[str, float]:
        """The logged window's mean statistics; stops a run whose losses or weights are no
        longer finite (one host sync per log row for both)."""
        if not self._sums:
            return {}
        keys = list(self._sums)
        nets, norms = self._weight_norms()
        values = torch.stack([self._sums[k] / self._counts[k] for k in keys] + norms)
        values = distributed.mean(self.world, values).tolist()  # the global batch's means
        self._sums, self._counts = {}, {}
        out = dict(zip(keys, values[:len(keys)], strict=True))
        bad = [k for k, v in out.items() if not math.isfinite(v)]
        nets = [n for n, v in zip(nets, values[len(keys):], strict=True) if not math.isfinite(v)]
        if bad or nets:
            raise self._diverged(" and ".join(
                ([f"{', '.join(bad)} became non-finite"] if bad else [])
                + ([f"the weights of {', '.join(nets)} hold NaN or inf"] if nets else [])))
        return out

    def _weight_norms(self) -> tuple[list[str], list[torch.Tensor]]:
        """Each network's (and the EMA copy's) summed weight norms, on the device: NaN or inf
        there means a NaN or inf weight."""
        nets = dict(self.model.nets.items()) | ({"ema": self.model.ema}
                                                if self.model.ema is not None else {})
        return list(nets), [torch.stack(torch._foreach_norm([p.detach() for p in
                                                              net.parameters()])).sum()
                            for net in nets.values()]

    def _nonfinite_nets(self) -> list[str]:
        """The networks (and the EMA copy) holding a NaN or infinite weight."""
        names, norms = self._weight_norms()
        finite = torch.isfinite(torch.stack(norms)).tolist()
        return [name for name, ok in zip(names, finite, strict=True) if not ok]

    def _check_weights(self) -> None:
        """Stop before a checkpoint or an evaluation if any weight is NaN or infinite."""
        nets = self._nonfinite_nets()
        if nets:
            raise self._diverged(f"the weights of {', '.join(nets)} hold NaN or inf")

    def _diverged(self, what: str) -> TrainingDiverged:
        cause = f"training diverged at step {self.step}: {what}"
        return TrainingDiverged(
            f"{cause}. The last good checkpoint is {self._last_checkpoint_text()} (left "
            "untouched); resume from it with a lower learning rate (--lr), a stabler loss "
            "(e.g. --set loss.gan=hinge, --set spectral_norm=true), or train with "
            "--on-divergence rollback.", cause)

    # -- outputs ------------------------------------------------------------------------
    def save_grids(self) -> None:
        """Sample grid from the fixed noise (and reconstructions of fixed real images)."""
        if not self.world.main:
            return
        self._fit_prior()
        name = f"step-{self.step:08d}.png"
        images = self.model.generate(self._grid_latent(), self.fixed_y)
        nrow = 10 if self.config.model.conditional else None
        save_grid(images.cpu(), self.run_dir / "samples" / name, nrow=nrow, scale=2)
        if hasattr(self.model, "reconstruct"):
            recon = self.model.reconstruct(self.fixed_real)
            save_grid(pair_grid(self.fixed_real.cpu(), recon.cpu(), nrow=8),
                      self.run_dir / "reconstructions" / name, nrow=8, scale=2)

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything needed to continue this run exactly: tensors and JSON metadata."""
        tensors = self.model.weights()
        meta: dict = {"optimizers": {}}
        for key, opt in self.optimizers.items():
            opt_tensors, skeleton = checkpoint.flatten_state_dict(f"optim/{key}",
                                                                  opt.state_dict())
            tensors |= opt_tensors
            meta["optimizers"][key] = skeleton
        # each process's global RNGs: rank 0's as in a one-process run, rank r's under rank{r}/
        for rank, (rng_tensors, rng_meta) in enumerate(distributed.gather_objects(
                self.world, checkpoint.capture_rng_state(), "gathering RNG states")):
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
            "elapsed": self.elapsed,
            "batches": self.batches.state(),
            "best": self.best,
            "rollbacks": self.rollbacks,
            "lr_scale": self.lr_scale,
            "config": to_dict(self.config),
            "versions": {"gankit": __version__, "torch": torch.__version__},
            "device": str(self.device),
            "processes": self.world.size,
        }
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Restore a state written by :meth:`state` (the inverse, on this trainer's device)."""
        self.model.load_weights(tensors)
        for key, opt in self.optimizers.items():
            opt.load_state_dict(checkpoint.unflatten_state_dict(
                tensors, meta["optimizers"][key]))
            match_memory_format(opt)
        self._restore_rng(tensors, meta)
        self.rng.set_state(tensors["rng/trainer"].cpu())
        self.fixed_z = tensors["fixed/z"].to(self.device)
        self.fixed_real = tensors["fixed/real"].to(self.device)
        if "fixed/y" in tensors:
            self.fixed_y = tensors["fixed/y"].to(self.device)
        self.step, self.elapsed = meta["step"], meta["elapsed"]
        self.batches.load_state(meta["batches"])
        self.best = dict(meta.get("best") or self.best)
        self.rollbacks, self.lr_scale = meta.get("rollbacks", 0), meta.get("lr_scale", 1.0)

    def _restore_rng(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """This process's global RNG states from a checkpoint of as many processes; from
        one of another count, process 0 takes rank 0's and the others start fresh streams."""
        world, saved = self.world, meta.get("processes", 1)
        prefix = f"rank{world.rank}/" if world.rank else ""
        if saved == world.size or not world.rank:
            checkpoint.restore_rng_state({k[len(prefix) + 4:]: v for k, v in tensors.items()
                                          if k.startswith(f"{prefix}rng/")}, meta[f"{prefix}rng"])
        else:
            seed_everything(derive_seed(self.config.train.seed, 6, world.rank, meta["step"]))
        if saved != world.size:
            self._warn([(
                f"this checkpoint was written by {saved} process(es) and training goes on with "
                f"{world.size}: the weights, optimiser states, batch order and noise continue "
                f"exactly (batch_size {self.config.train.batch_size} stays the global batch), "
                "but each process's own random stream (dropout) starts afresh and batch-norm "
                "layers normalise over a different share of the batch, so the run is no "
                f"longer bit-identical to one continued on {saved}")])

    def _sync_buffers(self) -> None:
        """Process 0's batch-norm statistics (and other buffers) on every process: what a
        checkpoint keeps and what every process samples with."""
        distributed.broadcast_state(self.world, [self.model], buffers_only=True)

    def save_checkpoint(self, name: str | None = None) -> Path:
        """Write ``checkpoints/step-N.safetensors`` (or ``checkpoints/NAME``) atomically and
        prune old step files (never with non-finite weights: the previous checkpoint stays
        the last good one). Every process takes part; process 0 writes."""
        self._check_weights()
        self._sync_buffers()
        self._fit_prior()  # a checkpoint's prior belongs to its weights
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
            self.world, lambda: checkpoint.load_checkpoint(path, device="cpu"),
            "receiving the checkpoint")

    # -- evaluation -----------------------------------------------------------------------
    def evaluate(self) -> dict:
        """FID & co. of ``eval_samples`` images from a fixed noise batch, logged as a row;
        a better FID than any before writes ``checkpoints/best.safetensors``."""
        tc = self.config.train
        self._check_weights()  # no numbers from (or best checkpoint of) a diverged model
        started = time.perf_counter()
        self._sync_buffers()
        self._fit_prior()
        images, labels = self._eval_samples()
        values = distributed.on_main(self.world, lambda: self._score(images, labels),
                                     "receiving the evaluation")
        seconds = time.perf_counter() - started
        self.eval_seconds += seconds
        row = {"step": self.step} | {f"eval/{k}": v for k, v in values.items()}
        row |= {"eval/n": tc.eval_samples, "eval/seconds": round(seconds, 2)}
        if values["fid"] < self.best["fid"]:
            self.best = {"fid": values["fid"], "step": self.step}
            self.save_checkpoint("best.safetensors")
        self.last_eval = self._emit(row, self.alarms.on_eval(row))
        return row

    def _eval_samples(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``eval_samples`` images from the run's fixed evaluation noise (and labels, 0, 1, …
        for a conditional model); with K processes each makes 1/K of them for process 0."""
        tc, mc, world = self.config.train, self.config.model, self.world
        n, share = tc.eval_samples, -(-tc.eval_samples // world.size)
        gen = torch.Generator(self.device).manual_seed(derive_seed(tc.seed, 5))
        z = self.model.sample_latent(share * world.size, gen)
        labels = (torch.arange(len(z), device=self.device) % mc.num_classes
                  if mc.conditional else None)
        shard = self.model.shard
        images = self.model.generate_batched(shard.take(z), shard.take(labels)
                                             if labels is not None else None)
        images = distributed.gather_rows(world, images, "gathering evaluation samples")[:n]
        return images, (labels[:n] if labels is not None else None)

    def _score(self, images: torch.Tensor, labels: torch.Tensor | None) -> dict:
        values = self.evaluation(images, labels, memorisation=False, kid_subsets=20)
        if hasattr(self.model, "reconstruction_metrics"):  # AE, VAE, BiGAN
            values |= self.model.reconstruction_metrics(self.evaluation.reference_images[:1000])
        return values

    def _warn(self, warnings: list[str]) -> None:
        from tqdm.auto import tqdm

        if not self.world.main:
            return
        for text in warnings:
            tqdm.write(f"warning: {text}", file=sys.stderr)

    def _last_checkpoint_text(self) -> str:
        last = checkpoint.list_checkpoints(self.run_dir / "checkpoints")
        return str(last[-1]) if last else "none (no checkpoint was written yet)"

    # -- the loop -----------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        if self._stop_signal is not None:
            raise KeyboardInterrupt  # second signal: stop now (last checkpoint is intact)
        self._stop_signal = signum

    def fit(self) -> FitResult:
        """Train up to ``total_steps``; returns early (with a checkpoint) on SIGINT/SIGTERM.

        A file that cannot be written (a full disk) stops the run with a StorageError naming
        it and the last good checkpoint; a second signal stops at once (KeyboardInterrupt).
        """
        if self.world.main and not self._lock.held:  # a second fit() of this trainer
            self._lock = runs.lock_run(self.run_dir)
        handlers = self._install_signal_handlers()
        self._bar = self._progress_bar()
        self._last_row: dict = {}
        try:
            with distributed.guarded("training"):  # a lost peer: ProcessLost, not a hang
                interrupted, ckpt = self._train()
        except distributed.ProcessLost as err:
            raise distributed.ProcessLost(
                f"{err} The last good checkpoint is {self._last_checkpoint_text()}; continue "
                "with the same torchrun command and `gankit train --resume RUN_DIR`.") from err
        except StorageError as err:
            raise self._storage_stop(err) from err
        except KeyboardInterrupt:
            raise KeyboardInterrupt(
                f"stopped at once at step {self.step}; the last good checkpoint is "
                f"{self._last_checkpoint_text()}; resume with: gankit train --resume "
                f"{self.run_dir}") from None
        finally:
            self._bar.close()
            self.log.close()
            self._restore_signal_handlers(handlers)
            if self._lock is not None:
                self._lock.release()
        return FitResult(self.step, interrupted, self._last_row, ckpt)

    def _train(self) -> tuple[bool, Path | None]:
        """Prepare the folder, train, and end with grids and a checkpoint."""
        tc = self.config.train
        distributed.on_main(self.world, self._prepare_folder, "preparing the run folder")
        if self.step == 0:
            self.save_grids()  # the untrained model's grid, for comparison
            if tc.eval_every:
                self.evaluate()  # the untrained model's numbers: where the curves start
            if tc.on_divergence == "rollback":
                self.save_checkpoint()  # somewhere to roll back to from the first steps
        self._t_last, self._step_last = time.perf_counter(), self.step
        interrupted, ckpt = self._run_steps()
        if self._sums:  # interrupted between logs: keep the window's values
            self._last_row = self._log_row(0.0)
        self.elapsed += time.perf_counter() - self._t_last
        if self.step % tc.sample_every != 0:
            self.save_grids()
        return interrupted, self.save_checkpoint()

    def _storage_stop(self, err: StorageError) -> StorageError:
        """The error that ends a run whose file ``err.path`` could not be written: it names
        the newest checkpoint, written now if that still works and none holds this step."""
        saved = ""
        newest = checkpoint.list_checkpoints(self.run_dir / "checkpoints")
        folder = (self.run_dir / "checkpoints").resolve()
        if (self.world.main and not self.world.parallel and err.path is not None
                and Path(err.path).resolve().parent != folder
                and (not newest or int(newest[-1].stem.removeprefix("step-")) < self.step)):
            try:
                saved = f"; saved checkpoint {self.save_checkpoint()} first"
            except (StorageError, TrainingDiverged):
                pass  # the disk is full for checkpoints too: the last one stays the last good
        return StorageError(
            f"{err}. Training stopped at step {self.step}{saved}; the last good checkpoint is "
            f"{self._last_checkpoint_text()}. Once the file can be written, continue with: "
            f"gankit train --resume {self.run_dir}")

    def _run_steps(self) -> tuple[bool, Path | None]:
        """Steps until the run's end, its time budget or a signal (whether one stopped it,
        and the newest checkpoint written); a divergence rolls back if so configured."""
        tc, ckpt = self.config.train, None
        budget = tc.max_seconds or math.inf
        started, evaluating = time.perf_counter(), self.eval_seconds
        # every process stops after the same step, whichever of them was signalled
        agreement, interrupted = distributed.Agreement(self.world, 2), False
        while self.step < self.total_steps:
            spent = time.perf_counter() - started - (self.eval_seconds - evaluating)
            interrupted, out_of_time = agreement.vote([self._stop_signal is not None,
                                                       spent >= budget])
            if interrupted or out_of_time:
                break
            try:
                ckpt = self._advance() or ckpt
            except TrainingDiverged as err:
                if tc.on_divergence != "rollback" or self.rollbacks >= tc.max_rollbacks:
                    raise
                self._roll_back(err)
        agreement.settle()
        return interrupted, ckpt

    def _prepare_folder(self) -> None:
        """Process 0: the run folder, writable, with the config, cleared of a killed run's
        temporary files and of log rows past the step this run restarts from."""
        runs.check_writable(self.run_dir, self._space_needed())
        # temporary files of a killed run (this process holds the folder's lock)
        checkpoint.remove_stale_temp_files(self.run_dir / "checkpoints")
        for folder in ("samples", "reconstructions"):
            remove_temporaries(self.run_dir / folder)
        for name in ("config.toml", "metrics.jsonl", "real.png"):
            remove_temporaries(self.run_dir, of=name)
        save_toml(self.config, self.run_dir / "config.toml")
        self.log.truncate_after(self.step)
        if self.step == 0:
            save_grid(self.fixed_real.cpu(), self.run_dir / "real.png", scale=2)

    def _space_needed(self) -> int:
        """Bytes a run may hold at once: the kept checkpoints, one being written and the best
        (each ≈ weights + optimiser moments + EMA), plus 16 MiB for grids and logs."""
        weights = sum(t.numel() * t.element_size() for t in self.model.weights().values())
        moments = sum(t.numel() * t.element_size() for opt in self.optimizers.values()
                      for group in opt.param_groups for t in group["params"]) * 2
        per_checkpoint = weights + moments
        return per_checkpoint * (self.config.train.keep_checkpoints + 2) + 16 * 2**20

    def _advance(self) -> Path | None:
        """One training step and whatever falls due after it: log, evaluation, grid,
        checkpoint (returned when one is written)."""
        tc = self.config.train
        self.train_step()
        if self.governor is not None:
            self._follow_load()
        due_eval = tc.eval_every > 0 and (self.step % tc.eval_every == 0 or
                                          self.step == self.total_steps)
        if self.step % tc.log_every == 0 or self.step == self.total_steps:
            now = time.perf_counter()
            self.elapsed += now - self._t_last
            rate = (self.step - self._step_last) / max(now - self._t_last, 1e-9)
            self._t_last, self._step_last = now, self.step
            self._last_row = self._log_row(rate)
            self._bar.set_postfix_str(self._postfix(self._last_row), refresh=False)
            self._log_line(self._last_row)
        if due_eval:
            self.evaluate()
            self._t_last += self.last_eval["eval/seconds"]  # not training time
        if self.step % tc.sample_every == 0:
            self.save_grids()
        ckpt = None
        if self.step % tc.checkpoint_every == 0 and self.step < self.total_steps:
            ckpt = self.save_checkpoint()
        self._bar.update(1)
        return ckpt

    def _follow_load(self) -> None:
        """Fewer threads while other programs use cores, all of them again once they stop."""
        threads = self.governor.poll()
        if threads is not None and threads < self.governor.max_threads and \
                len(self.governor.changes) == 1:
            self._warn([f"other programs are using the CPU: training on {threads} of "
                        f"{self.governor.max_threads} threads while they do (spinning threads "
                        "on a taken core would slow every step; --set threads=N fixes the count)"])

    def _roll_back(self, err: TrainingDiverged) -> None:
        """Reload the newest good checkpoint and lower every learning rate."""
        tc = self.config.train
        path = distributed.on_main(self.world, lambda: checkpoint.latest_checkpoint(
            self.run_dir / "checkpoints"), "finding the last good checkpoint")
        if path is None:
            raise err
        diverged_at, rollbacks, scale = self.step, self.rollbacks, self.lr_scale
        self.load_state(*self.read_checkpoint(path))
        self._sums, self._counts = {}, {}
        self.rollbacks, self.lr_scale = rollbacks + 1, scale * tc.rollback_lr_factor
        base = {"g": self.config.model.opt_g.lr, "d": self.config.model.opt_d.lr}
        for key, opt in self.optimizers.items():
            for group in opt.param_groups:
                group["lr"] = base[key] * self.lr_scale
        self.log.truncate_after(self.step)
        row = {"step": self.step, "rollback": self.rollbacks, "diverged_at": diverged_at,
               "lr_scale": self.lr_scale}
        self.log.write(row)
        self._warn([f"{err.cause}. Rolled back to step {self.step} ({path.name}) with "
                    f"learning rates × {self.lr_scale:g} (rollback {self.rollbacks} of "
                    f"{tc.max_rollbacks})."])
        self._bar.reset(total=self.total_steps)
        self._bar.update(self.step)
        self._t_last, self._step_last = time.perf_counter(), self.step

    def _log_row(self, steps_per_s: float) -> dict:
        values = self._flush_stats()
        row = {"step": self.step, "epoch": round(self.batches.drawn / self.batches.per_epoch, 4),
               "images_per_s": round(steps_per_s * self.batches_per_step
                                     * self.config.train.batch_size, 1),
               "elapsed_s": round(self.elapsed, 2), "threads": torch.get_num_threads()} | values
        return self._emit(row, self.alarms.on_log(row))

    def _emit(self, row: dict, warnings: list[str]) -> dict:
        """Log a row (with its warnings as text), hand it to the callbacks, show warnings."""
        if warnings:
            row["warning"] = " ".join(warnings)
        self.log.write(row)
        for callback in self.callbacks:
            callback(row)
        self._warn(warnings)
        return row

    def _postfix(self, row: dict) -> str:
        shown = {k: v for k, v in row.items() if k.startswith(("loss/", "D(", "critic"))}
        parts = [f"{k.removeprefix('loss/')}={v:.3g}" for k, v in shown.items()]
        if self.last_eval:
            ev = self.last_eval
            parts.append(f"FID={ev['eval/fid']:.3g} classes={ev['eval/classes_covered']}")
        return " ".join(parts + [f"{row['images_per_s']:.0f} img/s"])

    def _progress_bar(self):
        """A live bar on a terminal; in a log file, plain lines (see :meth:`_log_line`)."""
        from tqdm.auto import tqdm

        self._interactive = sys.stderr.isatty()
        self._last_line = 0.0
        return tqdm(total=self.total_steps, initial=self.step,
                    disable=not (self.progress and self._interactive),
                    desc=self.config.preset or "train", unit="step", dynamic_ncols=True,
                    mininterval=0.5)

    def _log_line(self, row: dict) -> None:
        """Without a terminal, a progress line per log row, at most every 15 s."""
        now = time.monotonic()
        last = row["step"] == self.total_steps
        if self.progress and not self._interactive and (now - self._last_line >= 15 or last):
            self._last_line = now
            print(f"step {row['step']}/{self.total_steps} {self._postfix(row)}",
                  file=sys.stderr, flush=True)

    def _install_signal_handlers(self) -> dict:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return {}
        # a signal ignored by whoever started us (nohup, `&` in a script) stays ignored
        return {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT,
                                                                     signal.SIGTERM)
                if signal.getsignal(sig) is not signal.SIG_IGN}

    @staticmethod
    def _restore_signal_handlers(handlers: dict) -> None:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def resume_trainer(run_dir: str | Path, steps: int | None = None, device: str | None = None,
                   **kwargs) -> Trainer:
    """A trainer restored from the newest good checkpoint of ``run_dir``.

    ``steps`` is the run's new total (e.g. 2000 continues a run stopped at 1000 to 2000).
    """
    run_dir = Path(run_dir)
    if steps is not None and steps < 1:
        raise ConfigError(f"steps = {steps}: a run's total length is at least 1 step")

    def read() -> tuple[dict[str, torch.Tensor], dict]:
        if not run_dir.is_dir():
            raise CheckpointError(f"{run_dir} is not a run folder (it does not exist)")
        runs.claim_run_dir(run_dir)  # locked before reading: a second resume is refused
        path = checkpoint.latest_checkpoint(run_dir / "checkpoints")
        if path is None:
            raise CheckpointError(f"{run_dir} has no usable checkpoint to resume from "
                                  "(looked in its checkpoints/ folder)")
        return checkpoint.load_checkpoint(path)

    # with torchrun, process 0 reads the run folder and sends the checkpoint to the others
    try:
        tensors, meta = distributed.on_main(distributed.init(), read,
                                            "receiving the checkpoint")
        config = from_dict(RunConfig, meta["config"])
        if steps:
            if steps < meta["step"]:
                raise ConfigError(f"--steps {steps} is below the step this run already "
                                  f"reached ({meta['step']}): --steps is the run's total")
            config.train.steps = steps
        if device:
            config.train.device = device
    except BaseException:
        runs.discard_claim(run_dir)
        raise
    trainer = Trainer(config, run_dir, **kwargs)
    trainer.load_state(tensors, meta)
    return trainer
