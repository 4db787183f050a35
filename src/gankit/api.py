"""The Python API: everything the command line does, as plain functions.

>>> import gankit
>>> run = gankit.train("dcgan", data="fashion-mnist", steps=500)   # doctest: +SKIP
>>> gankit.show_grid(run.sample(64))                               # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from numbers import Real
from pathlib import Path
from typing import Any

from torch import nn

from gankit import data as datasets
from gankit.config import (
    RunConfig,
    build_config,
    explicit_shape,
    from_dict,
    merge,
    nest,
    resolve_key,
    resumed_config,
    user_settings,
)
from gankit.data import Dataset
from gankit.errors import CheckpointError, ConfigError
from gankit.evaluation import Evaluation, evaluate_run, open_run_evaluation
from gankit.evaluation.during_training import PeriodicEvaluation
from gankit.models import GenerativeModel, build_model
from gankit.presets import folder_image_size, get_preset
from gankit.report import RefreshReport
from gankit.runs import Run, checkpoint, claim_run_dir, discard_claim, load_run, new_run_dir
from gankit.training import Callback, FitResult, Trainer, distributed, resolve_device


def configure(
    model: str, config_file: str | Path | None = None, sets: Iterable[str] = (), **overrides
) -> RunConfig:
    """A validated run config: preset ``model`` ← TOML file ← ``--set`` items ← overrides.

    Overrides take any config key by its full dotted path with ``__`` for dots
    (``model__opt_d__lr=1e-4``) or by a unique leaf name (``steps=500``, ``n_critic=5``).
    ``steps`` must be >= 1 and ``epochs`` > 0; ``epochs`` alone replaces the preset's steps.
    The preset is built for the images it will train on: ``model.channels`` and
    ``model.image_size`` where set, else the data's stored shape (a folder of images larger
    than 64 or of a size the designs miss: the largest they reach up to min(its size, 64)).
    """
    sets = list(sets)
    nested: dict = {}
    for key, value in overrides.items():
        nested = merge(nested, nest(resolve_key(key.replace("__", ".")), value))
    # the config's steps = 0 means "use epochs": a user gives a length, never 0 (a TOML file
    # or --set may still write steps = 0 beside epochs)
    train = nested.get("train", {})
    steps, epochs = train.get("steps"), train.get("epochs")
    if isinstance(epochs, Real) and not 0 < epochs < float("inf"):
        raise ConfigError(
            f"epochs={epochs!r}: the run length in passes over the data must be a number > 0"
        )
    if isinstance(steps, Real) and steps < 1 and not (steps == 0 and epochs):
        raise ConfigError(
            f"steps={steps!r}: a run needs at least 1 step; to give its length "
            "in passes over the data, pass epochs=E instead"
        )
    if epochs is not None and steps is None:
        train["steps"] = 0  # epochs replace the preset's step count
    channels, size, why = image_shape(model, user_settings(config_file, sets, nested))
    base = get_preset(model, channels, size, why)
    return build_config(base, config_file, sets, nested)


def image_shape(model: str, user: dict) -> tuple[int, int, str]:
    """(channels, size, where they come from) of the images preset ``model`` will train on:
    what the user set (``user``: their settings as nested dicts), the rest from the data as
    stored (its headers, not its images); a folder at :func:`folder_image_size` of it."""
    shape = explicit_shape(user)
    if len(shape) == 2:
        return shape["channels"], shape["image_size"], "model.channels and model.image_size as set"
    given = user.get("train") if isinstance(user.get("train"), dict) else {}
    train = get_preset(model)["train"] | given
    name, data_dir = train.get("data"), train.get("data_dir") or None
    if not isinstance(name, str) or not isinstance(data_dir, (str, type(None))):
        name, data_dir = "fashion-mnist", None  # a wrong type: build_config refuses it by name
    channels, size = datasets.data_shape(name, data_dir)  # looked up here: tests stand in for it
    why = f"the images of {name}"
    for key, value in shape.items():  # one of the two was set
        taken = "size" if key == "channels" else "channels"
        why = f"model.{key} = {value} as set, {taken} from {why}"
    if name.startswith("folder:") and "image_size" not in shape:
        if folder_image_size(size) != size:
            why += f", {size}×{size} as stored: resized by default"
        size = folder_image_size(size)
    shape = {"channels": channels, "image_size": size} | shape
    return shape["channels"], shape["image_size"], why


def build(model: str | RunConfig, **networks: nn.Module) -> GenerativeModel:
    """An untrained model from a preset name or a config; pass your own networks by name."""
    config = configure(model) if isinstance(model, str) else model
    return build_model(config.model, **networks)


def launch(
    run: RunConfig | str | Path,
    *,
    out: str | Path | None = None,
    overwrite: bool = False,
    changes: Mapping[str, Any] | None = None,
    named: Mapping[str, str] | None = None,
    networks: Mapping[str, nn.Module] | None = None,
    data: Dataset | None = None,
    callbacks: Iterable[Callback | Callable[[dict], None]] = (),
    progress: bool = True,
    tensorboard: bool = True,
    evaluation: Evaluation | None = None,
) -> Trainer:
    """The one way a run starts or resumes (the command line, :func:`train`, :func:`resume`,
    sweeps and benchmarks all come here): a :class:`~gankit.training.Trainer` ready to fit.

    ``run`` a config: a new run in ``out`` (default ``runs/PRESET-DATA-NNNN``, numbered).
    ``run`` a run folder: that run from its newest good checkpoint, with ``changes`` (keys of
    :data:`gankit.config.RESUMABLE` by name, e.g. ``{"log_every": 10}``) applied and any
    other key refused by the name ``named`` gives it (``--batch-size``). With
    ``eval_every``, the run is scored while it trains (``evaluation``: one already open).
    Started by ``torchrun``, every process calls this alike; process 0 picks the folder.
    """
    world = distributed.init()
    if isinstance(run, RunConfig):
        if changes:
            raise ConfigError(
                "changes apply to a resumed run; for a new run put them in its "
                "config (configure(..., key=value))"
            )
        config, state = run, None
        run_dir = distributed.on_main(
            world,
            lambda: new_run_dir(
                out, f"{config.preset or 'custom'}-{config.train.data}", overwrite=overwrite
            ),
            "choosing the run folder",
        )
    else:
        if out is not None or networks:
            raise ConfigError(
                "a resumed run keeps its folder and its networks (out= and "
                "networks= are for new runs)"
            )
        run_dir = Path(run)
        # process 0 locks the folder and reads its checkpoint, sent to the others
        state = distributed.on_main(
            world, lambda: _read_newest(run_dir), "receiving the checkpoint"
        )
    try:
        if state is not None:
            config = _resumed(state[1], dict(changes or {}), dict(named or {}))
        custom = build_model(config.model, **networks) if networks else None
        extra = (
            [PeriodicEvaluation(evaluation or _open_evaluation(config, world, progress), config)]
            if config.train.eval_every
            else []
        )
        if config.train.report:
            extra.append(RefreshReport())  # after the evaluation: a page with its numbers
        trainer = Trainer(
            config,
            run_dir,
            model=custom,
            data=data,
            callbacks=[*extra, *callbacks],
            progress=progress,
            tensorboard=tensorboard,
        )
    finally:
        discard_claim(run_dir)  # the trainer took the folder's lock, unless it was refused
    if state is not None:
        trainer.load_state(*state)
    return trainer


def _read_newest(run_dir: Path) -> tuple[dict, dict]:
    """The newest good checkpoint of ``run_dir``, read after locking the folder (a second
    resume of the same run is refused)."""
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is not a run folder (it does not exist)")
    claim_run_dir(run_dir)
    try:
        path = checkpoint.latest_checkpoint(run_dir / "checkpoints")
        if path is None:
            raise CheckpointError(
                f"{run_dir} has no usable checkpoint to resume from "
                "(looked in its checkpoints/ folder)"
            )
        return checkpoint.load_checkpoint(path)
    except BaseException:
        discard_claim(run_dir)
        raise


def resume_config(
    run_dir: str | Path,
    changes: Mapping[str, Any] | None = None,
    named: Mapping[str, str] | None = None,
) -> RunConfig:
    """The config resuming ``run_dir`` with ``changes`` would train with (nothing is locked,
    loaded or written: what ``gankit train --resume RUN --dry-run`` prints)."""
    path = checkpoint.latest_checkpoint(Path(run_dir) / "checkpoints")
    if path is None:
        raise CheckpointError(f"{run_dir} has no usable checkpoint to resume from")
    return _resumed(checkpoint.read_meta(path), dict(changes or {}), dict(named or {}))


def _resumed(meta: dict, changes: dict, named: dict) -> RunConfig:
    """A checkpoint's config with ``changes``; the new total is never below the step the run
    has reached."""
    config = resumed_config(from_dict(RunConfig, meta["config"]), changes, named)
    steps = config.train.steps
    if "train.steps" in {resolve_key(k) for k in changes} and steps < meta["step"]:
        raise ConfigError(
            f"{named.get('steps', 'steps')} {steps} is below the step this run "
            f"already reached ({meta['step']}): it is the run's total"
        )
    return config


def _open_evaluation(config: RunConfig, world, progress: bool) -> Evaluation | None:
    """The evaluation of the run's data, on process 0 (the others score nothing)."""
    if not world.main:
        return None
    device = distributed.device_for(world, resolve_device(config.train.device))
    return open_run_evaluation(config, device, progress=progress)


def train(
    model: str | RunConfig = "dcgan",
    *,
    out: str | Path | None = None,
    callbacks: Iterable[Callback | Callable[[dict], None]] = (),
    progress: bool = True,
    overwrite: bool = False,
    networks: dict[str, nn.Module] | None = None,
    config_file: str | Path | None = None,
    sets: Iterable[str] = (),
    **overrides,
) -> Run:
    """Train a model into a run folder and return it loaded.

    ``callbacks`` receive every logged row (a dict of step, losses, D(x), …): plot live in a
    notebook; or pass :class:`~gankit.training.Callback` objects for the run's other
    moments. ``networks`` replaces built-in networks by your own modules, e.g.
    ``networks={"generator": MyG(), "discriminator": MyD()}``. Started by ``torchrun``,
    the same call in every process trains one run data-parallel.
    """
    config = (
        model if isinstance(model, RunConfig) else configure(model, config_file, sets, **overrides)
    )
    trainer = launch(
        config,
        out=out,
        overwrite=overwrite,
        networks=networks,
        callbacks=callbacks,
        progress=progress,
    )
    trainer.fit()
    return _as_run(trainer)


def resume(
    run_dir: str | Path,
    steps: int | None = None,
    progress: bool = True,
    callbacks: Iterable[Callback | Callable[[dict], None]] = (),
    **changes,
) -> Run:
    """Continue a run from its newest checkpoint up to ``steps`` in total; ``changes`` are
    the options a resumed run may change (``data_dir``, ``log_every``, ``eval_every``, …:
    :data:`gankit.config.RESUMABLE`)."""
    if steps is not None:
        changes["steps"] = steps
    trainer = launch(run_dir, changes=changes, callbacks=callbacks, progress=progress)
    trainer.fit()
    return _as_run(trainer)


def evaluate(
    run: Run | str | Path,
    n: int = 10_000,
    seed: int = 0,
    data: str | None = None,
    evaluator: str | Path | None = None,
    progress: bool = True,
) -> dict:
    """The metrics report of a run (what ``gankit eval`` prints): FID, KID, precision/recall,
    density/coverage, classifier score, mode coverage, memorisation, reconstruction."""
    run = run if isinstance(run, Run) else load_run(run)
    evaluation = open_run_evaluation(
        run.config, run.model.device, data=data, evaluator=evaluator, progress=progress
    )
    return evaluate_run(run, evaluation, n, seed)


def _as_run(trainer: Trainer) -> Run:
    trainer.model.eval()
    return Run(trainer.run_dir, trainer.config, trainer.model, trainer.step)


__all__ = [
    "FitResult",
    "Run",
    "build",
    "configure",
    "evaluate",
    "launch",
    "load_run",
    "resume",
    "train",
]
