"""Evaluation while a run trains: a callback that scores the model every ``eval_every``
steps and keeps the best checkpoint."""

from __future__ import annotations

import json
import math
import time

import torch

from gankit.config import RunConfig
from gankit.errors import ConfigError
from gankit.evaluation.evaluator import describe
from gankit.evaluation.suite import Evaluation
from gankit.files import write_text
from gankit.models import Reconstructing
from gankit.runs import RUN_EVALUATOR
from gankit.training import Trainer, derive_seed, distributed
from gankit.training.callbacks import Evaluating, due


class PeriodicEvaluation(Evaluating):
    """FID & co. of ``eval_samples`` images from one fixed noise batch at the start of a new
    run, every ``eval_every`` steps and at the last step, logged as ``eval/*`` rows; a better
    FID than any before writes ``checkpoints/best.safetensors``. Evaluation time counts
    neither as training time nor against the time budget.

    ``evaluation`` scores on process 0 (``None`` on the others, which make their share of
    the samples).
    """

    def __init__(self, evaluation: Evaluation | None, config: RunConfig):
        mc = config.model
        if evaluation is not None:
            shape = tuple(evaluation.evaluator.image_shape)
            if shape != (mc.channels, mc.image_size, mc.image_size):
                raise ConfigError(
                    f"the evaluator takes images of shape {shape}, the model "
                    f"makes {(mc.channels, mc.image_size, mc.image_size)}: pass "
                    "an evaluator built for this image size (--evaluator)"
                )
        self.evaluation = evaluation
        self.best: dict = {"fid": math.inf, "step": None}  # the best evaluation so far
        self.last: dict = {}  # the latest evaluation's row
        self.seconds = 0.0  # spent evaluating in this process's calls to fit

    def on_fit_start(self, trainer: Trainer) -> None:
        if self.evaluation is not None:  # which evaluator the numbers come from, for reports
            facts = describe(self.evaluation.evaluator)
            write_text(trainer.run_dir / RUN_EVALUATOR, json.dumps(facts, indent=2) + "\n")
        if trainer.step == 0:
            self.evaluate(trainer)  # the untrained model's numbers: where the curves start

    def on_step_end(self, trainer: Trainer) -> None:
        if due(trainer.step, trainer.config.train.eval_every, trainer.total_steps):
            self.evaluate(trainer)

    def evaluate(self, trainer: Trainer) -> dict:
        """Evaluate the model now (every process takes part); returns the logged row."""
        tc = trainer.config.train
        trainer.check_weights()  # no numbers from (or best checkpoint of) a diverged model
        started = time.perf_counter()
        trainer.sync_buffers()
        trainer.fit_prior()
        images, labels = self._samples(trainer)
        values = distributed.on_main(
            trainer.world, lambda: self._score(trainer, images, labels), "receiving the evaluation"
        )
        seconds = time.perf_counter() - started
        self.seconds += seconds
        trainer.clock.exclude(seconds)
        row = {"step": trainer.step} | {f"eval/{k}": v for k, v in values.items()}
        row |= {"eval/n": tc.eval_samples, "eval/seconds": round(seconds, 2)}
        if values["fid"] < self.best["fid"]:
            self.best = {"fid": values["fid"], "step": trainer.step}
            trainer.save_checkpoint("best.safetensors")
        self.last = trainer.emit(row)
        return row

    def _samples(self, trainer: Trainer) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``eval_samples`` images from the run's fixed evaluation noise (and labels, 0, 1, …
        for a conditional model); with K processes each makes 1/K of them for process 0."""
        tc, mc, world, model = (
            trainer.config.train,
            trainer.config.model,
            trainer.world,
            trainer.model,
        )
        n, share = tc.eval_samples, -(-tc.eval_samples // world.size)
        gen = torch.Generator(trainer.device).manual_seed(derive_seed(tc.seed, 5))
        z = model.sample_latent(share * world.size, gen)
        labels = (
            torch.arange(len(z), device=trainer.device) % mc.num_classes if mc.conditional else None
        )
        shard = trainer.shard
        images = model.generate_batched(
            shard.take(z), shard.take(labels) if labels is not None else None
        )
        images = distributed.gather_rows(world, images, "gathering evaluation samples")[:n]
        return images, (labels[:n] if labels is not None else None)

    def _score(self, trainer: Trainer, images: torch.Tensor, labels: torch.Tensor | None) -> dict:
        values = self.evaluation(images, labels, memorisation=False, kid_subsets=20)
        if isinstance(trainer.model, Reconstructing):  # AE, VAE, BiGAN
            values |= trainer.model.reconstruction_metrics(self.evaluation.reference_images[:1000])
        return values

    def state(self) -> dict:
        return {"best": self.best}

    def load_state(self, meta: dict) -> None:
        self.best = dict(meta.get("best") or self.best)
