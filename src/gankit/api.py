"""The Python API: everything the command line does, as plain functions.

>>> import gankit
>>> run = gankit.train("dcgan", data="fashion-mnist", steps=500)   # doctest: +SKIP
>>> gankit.show_grid(run.sample(64))                               # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from numbers import Real
from pathlib import Path

from torch import nn

from gankit.config import RunConfig, build_config, resolve_key
from gankit.errors import ConfigError
from gankit.models import GenerativeModel, build_model
from gankit.presets import get_preset
from gankit.runs import Run, discard_claim, load_run, new_run_dir
from gankit.training import FitResult, Trainer, distributed, resume_trainer


def configure(model: str, config_file: str | Path | None = None, sets: Iterable[str] = (),
              **overrides) -> RunConfig:
    """A validated run config: preset ``model`` ← TOML file ← ``--set`` items ← overrides.

    Overrides take any config key by its full dotted path with ``__`` for dots
    (``model__opt_d__lr=1e-4``) or by a unique leaf name (``steps=500``, ``n_critic=5``).
    ``steps`` must be >= 1 and ``epochs`` > 0; ``epochs`` alone replaces the preset's steps.
    """
    nested: dict = {}
    for key, value in overrides.items():
        path = resolve_key(key.replace("__", "."))
        node = nested
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    # the config's steps = 0 means "use epochs": a user gives a length, never 0 (a TOML file
    # or --set may still write steps = 0 beside epochs)
    train = nested.get("train", {})
    steps, epochs = train.get("steps"), train.get("epochs")
    if isinstance(epochs, Real) and not 0 < epochs < float("inf"):
        raise ConfigError(f"epochs={epochs!r}: the run length in passes over the data must be "
                          "a number > 0")
    if isinstance(steps, Real) and steps < 1 and not (steps == 0 and epochs):
        raise ConfigError(f"steps={steps!r}: a run needs at least 1 step; to give its length "
                          "in passes over the data, pass epochs=E instead")
    if epochs is not None and steps is None:
        train["steps"] = 0  # epochs replace the preset's step count
    return build_config(get_preset(model), config_file, list(sets), nested)


def build(model: str | RunConfig, **networks: nn.Module) -> GenerativeModel:
    """An untrained model from a preset name or a config; pass your own networks by name."""
    config = configure(model) if isinstance(model, str) else model
    return build_model(config.model, **networks)


def train(model: str | RunConfig = "dcgan", *, out: str | Path | None = None,
          callbacks: Iterable[Callable[[dict], None]] = (), progress: bool = True,
          overwrite: bool = False, networks: dict[str, nn.Module] | None = None,
          config_file: str | Path | None = None, sets: Iterable[str] = (),
          **overrides) -> Run:
    """Train a model into a run folder and return it loaded.

    ``callbacks`` receive every logged row (a dict of step, losses, D(x), …): plot live in a
    notebook. ``networks`` replaces built-in networks by your own modules, e.g.
    ``networks={"generator": MyG(), "discriminator": MyD()}``. Started by ``torchrun``,
    the same call in every process trains one run data-parallel.
    """
    config = model if isinstance(model, RunConfig) else configure(
        model, config_file, sets, **overrides)
    # under torchrun, process 0 picks the folder for all (numbered folders would race)
    run_dir = distributed.on_main(distributed.init(), lambda: new_run_dir(
        out, f"{config.preset or 'custom'}-{config.train.data}", overwrite=overwrite),
        "choosing the run folder")
    try:
        custom = build_model(config.model, **networks) if networks else None
        trainer = Trainer(config, run_dir, model=custom, callbacks=callbacks, progress=progress)
    finally:
        discard_claim(run_dir)  # the trainer took the folder's lock, unless it was refused
    trainer.fit()
    return _as_run(trainer)


def resume(run_dir: str | Path, steps: int | None = None, progress: bool = True,
           callbacks: Iterable[Callable[[dict], None]] = ()) -> Run:
    """Continue a run from its newest checkpoint up to ``steps`` in total."""
    trainer = resume_trainer(run_dir, steps, progress=progress, callbacks=callbacks)
    trainer.fit()
    return _as_run(trainer)


def evaluate(run: Run | str | Path, n: int = 10_000, seed: int = 0, data: str | None = None,
             evaluator: str | Path | None = None, progress: bool = True) -> dict:
    """The metrics report of a run (what ``gankit eval`` prints): FID, KID, precision/recall,
    density/coverage, classifier score, mode coverage, memorisation, reconstruction."""
    from gankit.evaluation import evaluate_run, open_evaluation

    run = run if isinstance(run, Run) else load_run(run)
    tc = run.config.train
    evaluation = open_evaluation(data or tc.data, tc.data_dir or None,
                                 run.config.model.image_size, run.model.device,
                                 evaluator or tc.evaluator or None, progress)
    return evaluate_run(run, evaluation, n, seed)


def _as_run(trainer: Trainer) -> Run:
    trainer.model.eval()
    return Run(trainer.run_dir, trainer.config, trainer.model, trainer.step)


__all__ = ["FitResult", "Run", "build", "configure", "evaluate", "load_run", "resume", "train"]
