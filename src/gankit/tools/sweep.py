"""Hyper-parameter sweeps on Optuna: many gankit runs, on one machine or many, ranked by FID.

One Optuna trial is one ordinary run folder: one configuration trained with one seed, so a
sweep of N configurations × S seeds is N × S trials, and the seeds of a configuration can run
at once on different workers. The worker that creates the study enqueues the N configuration
slots up front; whoever takes a slot draws its values from the sampler (which has seen every
finished trial then) and enqueues the slot's S − 1 seed siblings with the same values. Workers
only ever take WAITING trials, each through the storage's atomic WAITING → RUNNING transition
(what Optuna's own ``Study.ask`` does), so no run happens twice and no trial is created beyond
the N × S, however many workers race.

The objective is the FID of the run's last evaluation; each evaluation's FID is reported to
Optuna, whose pruner may stop a run early (its folder keeps a checkpoint: ``gankit train
--resume`` continues it). A diverged run is PRUNED, not FAILED: TPE ranks pruned trials below
every completed one and so learns to avoid the region, while it ignores failed ones. Any other
error FAILs the trial with its message, and the worker goes on with the next trial. A running
trial records a heartbeat every ``heartbeat`` seconds; when its worker dies (SIGKILL, a lost
machine) the next worker or report marks it FAILED (Optuna's ``fail_stale_trials``).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import socket
import statistics
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gankit.api import configure
from gankit.config import RunConfig, resolve_key, to_dict
from gankit.errors import ConfigError, GankitError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SPEC_ATTR = "gankit_sweep"  # study user attr: what every worker of the sweep must agree on
OUT_ATTR = "gankit_out"  # study user attr: the creating worker's sweep folder
# Parameter names beyond the config keys: the train command's learning-rate shortcuts.
SHORTCUTS = {
    "lr": ("model.opt_g.lr", "model.opt_d.lr"),
    "lr_g": ("model.opt_g.lr",),
    "lr_d": ("model.opt_d.lr",),
}
# Config keys that may differ between the workers of one sweep (where and how fast it runs).
MACHINE_KEYS = ("data_dir", "device", "threads")
SPEC_FORMS = "loguniform:LO:HI, uniform:LO:HI, int:LO:HI[:log] or choice:A,B,C"
SETUP_WAIT_S = 120  # how long a worker waits for the creating worker to enqueue the slots


def require_optuna():
    """The ``optuna`` module, or a clear error saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise GankitError(
            'sweeps run on Optuna, which is not installed: pip install "gankit[sweep]"'
        ) from None
    return optuna


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Param:
    """One swept value: its name, the config keys it sets and the range it is drawn from."""

    name: str
    keys: tuple[str, ...]
    kind: str  # loguniform, uniform, int or choice
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple = ()

    @property
    def text(self) -> str:
        """The spec as ``--param`` takes it (``lr=loguniform:1e-05:0.001``)."""
        if self.kind == "choice":
            return f"{self.name}=choice:{','.join(map(_toml_text, self.choices))}"
        return f"{self.name}={self.kind}:{self.low!r}:{self.high!r}" + (
            ":log" if self.kind == "int" and self.log else ""
        )

    def suggest(self, trial) -> Any:
        """This parameter's value for an Optuna trial (drawn, or fixed by an enqueued trial)."""
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def extremes(self) -> list:
        """The values that bound the range: enough to check every value is a valid config."""
        if self.kind == "choice":
            return list(self.choices)
        return [int(self.low), int(self.high)] if self.kind == "int" else [self.low, self.high]


def _toml_text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _toml_scalar(raw: str) -> Any:
    """A value in TOML syntax (``1e-4``, ``true``, ``"adam"``); a bare word is a string."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def parse_param(text: str) -> Param:
    """``"lr=loguniform:1e-5:1e-3"`` → a :class:`Param`; a bad spec is a ConfigError saying
    what is wrong and how to write it."""
    name, sep, rest = (part.strip() for part in text.partition("="))
    if not sep or not name or not rest:
        raise ConfigError(
            f"--param {text!r}: expected NAME=SPEC with SPEC one of {SPEC_FORMS}, "
            "e.g. --param lr=loguniform:1e-5:1e-3"
        )
    try:
        keys = SHORTCUTS.get(name) or (resolve_key(name),)
    except ConfigError as err:
        raise ConfigError(
            f"--param {text!r}: {err} (NAME is any key --set takes, or lr, lr_g, lr_d)"
        ) from None
    kind, _, args = rest.partition(":")
    if kind == "choice":
        choices = tuple(_toml_scalar(v.strip()) for v in args.split(","))
        if not args.strip() or any(v == "" for v in choices):
            raise ConfigError(f"--param {text!r}: choice needs values, e.g. choice:64,128,256")
        if any(not isinstance(v, (bool, int, float, str)) for v in choices):
            raise ConfigError(
                f"--param {text!r}: choice values must be numbers, strings or true/false"
            )
        if len(set(choices)) < len(choices):
            raise ConfigError(f"--param {text!r}: a choice is listed twice")
        return Param(name, keys, kind, choices=choices)
    if kind not in ("loguniform", "uniform", "int"):
        raise ConfigError(f"--param {text!r}: unknown distribution {kind!r}: use {SPEC_FORMS}")
    bounds = args.split(":")
    log = kind == "loguniform"
    if kind == "int" and len(bounds) == 3 and bounds[2] == "log":
        bounds, log = bounds[:2], True
    if len(bounds) != 2:
        raise ConfigError(
            f"--param {text!r}: expected {kind}:LO:HI" + ("[:log]" if kind == "int" else "")
        )
    number = int if kind == "int" else float
    try:
        low, high = (number(b) for b in bounds)
    except ValueError:
        raise ConfigError(
            f"--param {text!r}: LO and HI must be " + ("integers" if kind == "int" else "numbers")
        ) from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ConfigError(f"--param {text!r}: expected finite bounds with LO < HI")
    if log and low <= 0:
        raise ConfigError(f"--param {text!r}: a log scale needs LO > 0")
    return Param(name, keys, kind, low, high, log)


# --------------------------------------------------------------------------- the sweep spec


@dataclass
class SweepSpec:
    """What every trial of a sweep shares: model, base options, swept params and seed count."""

    model: str
    params: list[Param]
    trials: int
    seeds: int = 1
    config_file: str | None = None
    sets: list[str] = field(default_factory=list)
    overrides: dict[str, Any] = field(default_factory=dict)  # full dotted key → value

    def config(self, values: dict[str, Any], seed_index: int = 0) -> RunConfig:
        """The run config of one trial: swept ``values`` by param name, the ``seed_index``-th
        seed (the base seed + index)."""
        overrides = dict(self.overrides)
        for param in self.params:
            overrides |= dict.fromkeys(param.keys, values[param.name])
        return self._configure(overrides, seed_index)

    def _configure(self, overrides: dict[str, Any], seed_index: int = 0) -> RunConfig:
        """The model's config with ``overrides``; evaluation defaults to every quarter run."""
        config = configure(
            self.model,
            self.config_file,
            self.sets,
            **{k.replace(".", "__"): v for k, v in overrides.items()},
        )
        config.train.seed += seed_index  # any integer is a valid seed
        if not config.train.eval_every:
            if not config.train.steps:
                raise ConfigError(
                    f"a sweep ranks runs by FID, and {self.model} runs for "
                    f"{config.train.epochs:g} epochs, not a step count: give "
                    "--eval-every N (or --steps N for a default of steps / 4)"
                )
            config.train.eval_every = max(1, config.train.steps // 4)
        return config

    def lows(self) -> dict[str, Any]:
        """Every parameter at the first of its values."""
        return {p.name: p.extremes()[0] for p in self.params}

    def validate(self) -> None:
        """Build the base config, then one for each end of each range: a bad option, key or
        value is refused now, before any trial runs, naming the --param at fault."""
        if self.trials < 1 or self.seeds < 1:
            raise ConfigError(f"--trials {self.trials} --seeds {self.seeds}: both must be >= 1")
        if not self.params:
            raise ConfigError(
                "name what to sweep: --param NAME=SPEC (repeatable), e.g. "
                "--param lr=loguniform:1e-5:1e-3"
            )
        names = [p.name for p in self.params]
        if len(set(names)) < len(names):
            raise ConfigError(f"--param names repeat: {', '.join(names)}")
        keys = [k for p in self.params for k in p.keys]
        if len(set(keys)) < len(keys):
            raise ConfigError(
                f"two --param set the same config key ({', '.join(keys)}): lr covers lr_g and lr_d"
            )
        self._configure(self.overrides)
        for param in self.params:
            for value in param.extremes():
                try:
                    self._configure(self.overrides | dict.fromkeys(param.keys, value))
                except ConfigError as err:
                    raise ConfigError(f"--param {param.text}: at {value!r}, {err}") from None
        self.config(self.lows())

    def record(self) -> dict:
        """What a second worker must agree on, as JSON-ready data: the spec and the base
        config (less the keys that may differ between machines)."""
        config = to_dict(self.config(self.lows()))
        for key in MACHINE_KEYS:
            config["train"].pop(key)
        return {
            "model": self.model,
            "params": [p.text for p in self.params],
            "trials": self.trials,
            "seeds": self.seeds,
            "config": config,
        }


def _full_keys(overrides: dict[str, Any]) -> dict[str, Any]:
    """Override keys as full dotted paths (``steps`` → ``train.steps``)."""
    return {resolve_key(k.replace("__", ".")): v for k, v in overrides.items()}


# --------------------------------------------------------------------------- storage, study


@contextlib.contextmanager
def open_storage(url: str, heartbeat: int | None = None):
    """``with open_storage(url) as storage:`` Optuna's database storage at ``url``
    (``sqlite:///FILE`` or a server such as ``postgresql+psycopg2://USER@HOST/DB``),
    recording heartbeats every ``heartbeat`` s; its connections are closed on leaving."""
    storage = _connect(url, heartbeat)
    try:
        yield storage
    finally:
        storage.engine.dispose()


def _connect(url: str, heartbeat: int | None):
    optuna = require_optuna()
    import sqlalchemy.exc

    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = (
        {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    )
    for attempt in range(6):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" since Optuna 2.9
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine, heartbeat_interval=heartbeat
                )
        except sqlalchemy.exc.ArgumentError as err:
            raise GankitError(
                f"--storage {url!r} is not a database URL ({err}): use e.g. "
                "sqlite:///sweep.db or postgresql+psycopg2://USER@HOST/DB"
            ) from None
        except ImportError as err:
            raise GankitError(
                f"--storage {_shown(url)} needs a database driver: {err} (for "
                "PostgreSQL: pip install psycopg2-binary)"
            ) from None
        except sqlalchemy.exc.SQLAlchemyError as err:
            # workers that start together on a new database race to create its tables
            if attempt == 5:
                raise GankitError(
                    f"cannot open the sweep storage {_shown(url)}: {str(err).splitlines()[0]}"
                ) from None
            time.sleep(0.3 * (attempt + 1))


def _shown(url: str) -> str:
    """A storage URL fit to print: its password masked."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: nothing to hide
        return url


def _name(choice) -> str:
    """A sampler's or pruner's name as the study records it."""
    return choice if isinstance(choice, str) else type(choice).__name__


def _sampler(name):
    """Optuna's sampler by name (``tpe``, ``random``), or a sampler object as it is."""
    optuna = require_optuna()
    if isinstance(name, optuna.samplers.BaseSampler):
        return name
    if name == "tpe":
        return optuna.samplers.TPESampler()
    if name == "random":
        return optuna.samplers.RandomSampler()
    raise ConfigError(f"--sampler {name!r}: use tpe or random")


def _pruner(name):
    """Optuna's pruner by name (``median``, ``none``), or a pruner object as it is."""
    optuna = require_optuna()
    if isinstance(name, optuna.pruners.BasePruner):
        return name
    if name == "median":  # prune below the median of earlier trials at the same step
        return optuna.pruners.MedianPruner(n_startup_trials=5)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner {name!r}: use median or none")


def open_study(storage, name: str, record: dict, out: Path, sampler="tpe", pruner="median"):
    """Create the study with its N configuration slots, or join it when another worker did:
    then ``record`` must match the creator's (else a ConfigError naming the differences)."""
    optuna = require_optuna()
    try:
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            direction="minimize",
            sampler=_sampler(sampler),
            pruner=_pruner(pruner),
        )
    except optuna.exceptions.DuplicatedStudyError:  # another worker created it: join
        study = optuna.load_study(
            study_name=name, storage=storage, sampler=_sampler(sampler), pruner=_pruner(pruner)
        )
        _check_same_sweep(record, _wait_for_record(study), name)
        return study
    for _ in range(record["trials"]):
        study.enqueue_trial({}, user_attrs={"seed_index": 0})
    study.set_user_attr(OUT_ATTR, str(out.resolve()))
    study.set_user_attr(SPEC_ATTR, record)  # last: it tells other workers the queue is ready
    return study


def _wait_for_record(study) -> dict:
    """The creator's sweep record, waiting while the creator is still enqueueing."""
    deadline = time.monotonic() + SETUP_WAIT_S
    while SPEC_ATTR not in (attrs := study.user_attrs):
        if time.monotonic() > deadline:
            raise ConfigError(
                f"study {study.study_name!r} exists but holds no gankit sweep (made "
                "by something else, or its creator died while setting it up): "
                "choose another --study, or delete it with `optuna delete-study`"
            )
        time.sleep(0.5)
    return attrs[SPEC_ATTR]


def _check_same_sweep(mine: dict, theirs: dict, name: str) -> None:
    differences = [f"{key}: {a!r} here, {b!r} in the study" for key, a, b in _diff(mine, theirs)]
    if differences:
        raise ConfigError(
            f"study {name!r} was created with other sweep options: "
            + "; ".join(differences[:5])
            + ". Give every worker the same options "
            "(only --device, --data-dir, --set threads=N and --no-progress may "
            "differ), or start a new --study"
        )


def _diff(a: Any, b: Any, prefix: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(key, a's value, b's value) wherever two nested dicts differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in dict.fromkeys([*a, *b]):
            yield from _diff(a.get(key), b.get(key), f"{prefix}{key}.")
    elif a != b:
        yield prefix.rstrip("."), a, b


def _study_exists(storage, name: str) -> bool:
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return False
    return True


def _take_waiting_trial(study, storage) -> int | None:
    """Take the oldest WAITING trial (→ RUNNING) and return its id; None when none is left.

    The storage makes the transition atomic: of workers racing for one trial, exactly one
    sees True. (Optuna's ``Study.ask`` pops the same way, but creates a new trial when the
    queue is empty, which would overshoot the sweep's N × S runs.)
    """
    optuna = require_optuna()
    from optuna.trial import TrialState

    study_id = storage.get_study_id_from_name(study.study_name)
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        try:
            if storage.set_trial_state_values(trial_id, TrialState.RUNNING):
                return trial_id
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def fail_stale_trials(study) -> None:
    """Mark FAILED the running trials whose worker stopped sending heartbeats."""
    optuna = require_optuna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


@contextlib.contextmanager
def _heartbeat(
    storage, trial_id: int, interval: float, log: Callable[[str], None]
) -> Iterator[None]:
    """Record the trial's heartbeat now and every ``interval`` s until the block ends, from a
    daemon thread: if this process dies the beats stop, and the trial goes stale."""
    import sqlalchemy.exc

    storage.record_heartbeat(trial_id)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                storage.record_heartbeat(trial_id)
            except sqlalchemy.exc.SQLAlchemyError as err:  # a busy database: retry next beat
                log(f"warning: heartbeat of trial id {trial_id} not recorded: {err}")

    thread = threading.Thread(target=beat, name=f"gankit-heartbeat-{trial_id}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# --------------------------------------------------------------------------- running trials


@dataclass
class TrialOutcome:
    """How one trial this worker ran ended."""

    number: int
    state: str  # COMPLETE, PRUNED or FAIL
    fid: float | None
    run_dir: Path
    note: str = ""


class _Reporter:
    """Trainer callback: each evaluation's FID goes to Optuna, whose pruner may stop the run."""

    def __init__(self, trial):
        self.trial = trial
        self.total_steps = 0
        self.last_eval: dict = {}

    def __call__(self, row: dict) -> None:
        if "eval/fid" not in row:
            return
        self.last_eval = row
        step, fid = row["step"], row["eval/fid"]
        if step == 0 or not math.isfinite(fid):  # the untrained model: nothing to rank yet
            return
        self.trial.report(fid, step)
        if step < self.total_steps and self.trial.should_prune():
            optuna = require_optuna()
            raise optuna.TrialPruned(
                f"pruned at step {step}: FID {fid:.4g} is worse than earlier trials there"
            )


def _evaluation(config: RunConfig, cache: dict, progress: bool):
    """The run's evaluation, opened once per worker (every trial of a sweep shares it)."""
    from gankit.evaluation import open_run_evaluation
    from gankit.training import resolve_device

    tc, mc = config.train, config.model
    key = (tc.data, tc.data_dir, mc.image_size, mc.channels, tc.device, tc.evaluator)
    if key not in cache:
        device = resolve_device(tc.device)
        cache[key] = open_run_evaluation(config, device, progress=progress)
    return cache[key]


def _run_trial(
    study,
    trial_id: int,
    spec: SweepSpec,
    out: Path,
    evaluations: dict,
    progress: bool,
    log: Callable[[str], None],
) -> TrialOutcome:
    """Train one taken trial into ``out/trial-NNNN`` and tell Optuna how it ended."""
    optuna = require_optuna()
    from optuna.trial import TrialState

    from gankit.api import launch
    from gankit.evaluation.during_training import PeriodicEvaluation
    from gankit.runs import lock_run
    from gankit.training import TrainingDiverged

    trial = optuna.trial.Trial(study, trial_id)
    run_dir = out / f"trial-{trial.number:04d}"
    state, fid, note, trainer = TrialState.FAIL, None, "", None
    try:
        values = {p.name: p.suggest(trial) for p in spec.params}
        if "config" not in trial.user_attrs:  # a configuration slot: its other seeds follow
            trial.set_user_attr("config", trial.number)
            for index in range(1, spec.seeds):
                study.enqueue_trial(
                    values, user_attrs={"config": trial.number, "seed_index": index}
                )
        attrs = trial.user_attrs
        config = spec.config(values, attrs["seed_index"])
        trial.set_user_attr("seed", config.train.seed)
        trial.set_user_attr("run_dir", str(run_dir.resolve()))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        shown = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items()
        )
        log(
            f"trial {trial.number} (configuration {attrs['config']}, seed "
            f"{config.train.seed}): {shown} -> {run_dir}"
        )
        reporter = _Reporter(trial)
        trainer = launch(
            config,
            out=run_dir,
            callbacks=[reporter],
            progress=progress,
            evaluation=_evaluation(config, evaluations, progress),
        )
        reporter.total_steps = trainer.total_steps
        result = trainer.fit()
        if result.interrupted:
            note = f"interrupted at step {result.step}: gankit train --resume {run_dir}"
            _tell(study, trial, TrialState.FAIL, None, note, log)
            raise KeyboardInterrupt
        if reporter.last_eval.get("step") != trainer.step:  # a time budget ended the run
            with lock_run(run_dir):  # it may write the best checkpoint
                trainer.callback(PeriodicEvaluation).evaluate(trainer)
        metrics = {
            k.removeprefix("eval/"): v
            for k, v in reporter.last_eval.items()
            if k.startswith("eval/")
        }
        trial.set_user_attr("steps", trainer.step)
        trial.set_user_attr("metrics", metrics)
        state, fid = TrialState.COMPLETE, metrics["fid"]
    except optuna.TrialPruned as pruned:
        state, note = TrialState.PRUNED, str(pruned)
        trial.set_user_attr("steps", trainer.step)
        with lock_run(run_dir):
            trainer.save_checkpoint()  # the folder stays resumable at the step it stopped
    except TrainingDiverged as err:
        state, note = TrialState.PRUNED, f"diverged: {err.cause}"
        trial.set_user_attr("steps", trainer.step)
    except KeyboardInterrupt:
        if not note:  # a second Ctrl-C: no checkpoint of this step
            _tell(study, trial, TrialState.FAIL, None, "interrupted", log)
        raise
    except Exception as err:  # any failure of one run: record it and go on with the next
        note = f"{type(err).__name__}: {err}"
        log(traceback.format_exc().rstrip())
    _tell(study, trial, state, fid, note, log)
    log(
        f"trial {trial.number}: {state.name}"
        + (f", FID {fid:.4g}" if fid is not None else "")
        + (f" ({note})" if note else "")
    )
    return TrialOutcome(trial.number, state.name, fid, run_dir, note)


def _tell(study, trial, state, value: float | None, note: str, log: Callable[[str], None]) -> None:
    """Finish a trial; one another worker already marked FAILED (its heartbeats came too
    late) stays as it is, with a warning."""
    optuna = require_optuna()
    try:
        if note:
            trial.set_user_attr("note", note)
        study.tell(trial, value, state=state)
    except optuna.exceptions.UpdateFinishedTrialError:
        log(
            f"warning: trial {trial.number} was marked finished by another worker while it "
            "ran (its heartbeats were late: a busy database or machine? raise --heartbeat)"
        )


def sweep(
    model: str,
    *,
    storage: str,
    study: str,
    params: Iterable[str],
    trials: int,
    seeds: int = 1,
    out: str | Path | None = None,
    sampler="tpe",
    pruner="median",
    heartbeat: int = 60,
    config_file: str | Path | None = None,
    sets: Iterable[str] = (),
    progress: bool = False,
    log: Callable[[str], None] = print,
    **overrides,
) -> list[TrialOutcome]:
    """Run trials of a sweep until none is left; returns those this worker ran.

    ``params`` are specs such as ``"lr=loguniform:1e-5:1e-3"``; ``trials`` configurations are
    each trained with ``seeds`` seeds (the base seed, +1, …) into ``out/trial-NNNN`` (default
    ``sweeps/STUDY``). ``overrides`` and ``sets`` apply to every run as in
    :func:`gankit.api.configure`. ``sampler``: ``"tpe"``, ``"random"`` or any Optuna sampler
    that draws enqueued trials (GridSampler does not); ``pruner``: ``"median"``, ``"none"`` or
    any Optuna pruner. Start the same call in more processes,
    on this machine or others sharing ``storage``, to run trials in parallel.
    """
    require_optuna()
    spec = SweepSpec(
        model,
        [parse_param(p) for p in params],
        trials,
        seeds,
        str(config_file) if config_file else None,
        list(sets),
        _full_keys(overrides),
    )
    spec.validate()
    if isinstance(heartbeat, bool) or not isinstance(heartbeat, int) or heartbeat < 1:
        raise ConfigError(f"--heartbeat {heartbeat!r}: expected whole seconds >= 1")
    out = (
        Path(out) if out else Path("sweeps") / (re.sub(r"[^A-Za-z0-9_.-]+", "-", study) or "sweep")
    )
    record = spec.record() | {
        "sampler": _name(sampler),
        "pruner": _name(pruner),
        "heartbeat": heartbeat,
    }
    with open_storage(storage, heartbeat) as store:
        if not _study_exists(store, study) and any(out.glob("trial-*")):
            raise ConfigError(
                f"--out {out} holds the trial folders of another sweep: choose "
                "another --out (or --study), or delete them"
            )
        found = open_study(store, study, record, out, sampler, pruner)
        log(
            f"sweep {study!r} in {_shown(storage)}: {trials} configurations × {seeds} seeds; "
            f"runs go to {out}/"
        )
        outcomes: list[TrialOutcome] = []
        evaluations: dict = {}
        while True:
            fail_stale_trials(found)
            trial_id = _take_waiting_trial(found, store)
            if trial_id is None:
                break
            with _heartbeat(store, trial_id, heartbeat, log):
                outcomes.append(_run_trial(found, trial_id, spec, out, evaluations, progress, log))
    return outcomes


# --------------------------------------------------------------------------- the report


@dataclass
class SweepReport:
    """A study's trials, its configurations ranked by mean FID, and parameter importances."""

    study: str
    storage: str
    record: dict
    trials: list[dict]  # number, state, config, seed, the params, fid, steps, run, note
    configs: list[dict]  # config, the params, fid (mean), std, seeds: best first
    importances: dict[str, float]
    importance_note: str = ""
    plot: Path | None = None


def sweep_report(storage: str, study: str, plot: str | Path | None = None) -> SweepReport:
    """Read a sweep's study (first failing trials whose worker died) and write its
    sensitivity plot to ``plot`` (default: ``sensitivity.png`` in the sweep folder when it is
    on this machine, else ``sweep-STUDY.png`` here)."""
    optuna = require_optuna()
    with open_storage(storage) as store:
        try:
            found = optuna.load_study(study_name=study, storage=store)
        except KeyError:
            names = [s.study_name for s in optuna.get_all_study_summaries(store)]
            raise ConfigError(
                f"no study {study!r} in {_shown(storage)}; it holds: {', '.join(names) or 'none'}"
            ) from None
        record = found.user_attrs.get(SPEC_ATTR)
        if record is None:
            raise ConfigError(
                f"study {study!r} is not a gankit sweep (it has no {SPEC_ATTR} attribute)"
            )
        with open_storage(storage, record["heartbeat"]) as beating:
            fail_stale_trials(optuna.load_study(study_name=study, storage=beating))
        params = [parse_param(text) for text in record["params"]]
        trials = [_trial_row(t, params) for t in found.get_trials(deepcopy=False)]
        configs = _config_rows(trials, params)
        importances, note = _importances(found, configs)
    report = SweepReport(study, _shown(storage), record, trials, configs, importances, note)
    if any(c["fid"] is not None for c in configs):
        folder = Path(found.user_attrs.get(OUT_ATTR, ""))
        default = (
            folder / "sensitivity.png"
            if folder.is_dir()
            else Path(f"sweep-{re.sub(r'[^A-Za-z0-9_.-]+', '-', study)}.png")
        )
        report.plot = _plot(configs, params, Path(plot or default), study)
    return report


def _trial_row(trial, params: list[Param]) -> dict:
    attrs = trial.user_attrs
    fid = trial.value if trial.state.name == "COMPLETE" else None
    note = attrs.get("note", "")
    if trial.state.name == "FAIL" and not note:
        note = "its worker stopped (killed?): no heartbeat"
    return (
        {
            "trial": trial.number,
            "state": trial.state.name,
            "config": attrs.get("config"),
            "seed": attrs.get("seed"),
        }
        | {p.name: trial.params.get(p.name) for p in params}
        | {
            "fid": fid,
            "steps": attrs.get("steps"),
            "run": _short_path(attrs.get("run_dir")),
            "note": note,
        }
    )


def _short_path(path: str | None) -> str:
    """A run folder relative to here when it is below here."""
    if not path:
        return ""
    with contextlib.suppress(ValueError):
        return str(Path(path).relative_to(Path.cwd()))
    return path


def _config_rows(trials: list[dict], params: list[Param]) -> list[dict]:
    """One row per configuration: its values and the mean ± std FID of its completed seeds,
    the best (lowest mean) first, configurations without a completed seed last."""
    groups: dict[int, list[dict]] = {}
    for row in trials:
        if row["config"] is not None:
            groups.setdefault(row["config"], []).append(row)
    rows = []
    for config, members in groups.items():
        fids = [r["fid"] for r in members if r["fid"] is not None]
        rows.append(
            {"config": config}
            | {p.name: members[0][p.name] for p in params}
            | {
                "fid": statistics.fmean(fids) if fids else None,
                "std": statistics.stdev(fids) if len(fids) > 1 else None,
                "seeds": len(fids),
                "runs": len(members),
            }
        )
    return sorted(rows, key=lambda r: (r["fid"] is None, r["fid"] or 0.0, r["config"]))


def _importances(study, configs: list[dict]) -> tuple[dict[str, float], str]:
    """Optuna's parameter importances by PED-ANOVA (fANOVA, Optuna's default, needs
    scikit-learn), or why there are none yet."""
    optuna = require_optuna()
    done = sum(c["fid"] is not None for c in configs)
    if done < 3:
        return {}, (
            f"parameter importances need at least 3 configurations with a completed "
            f"run (this study has {done})"
        )
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
        except (ValueError, RuntimeError) as err:
            return {}, f"parameter importances could not be computed: {err}"
    notes = [str(w.message).splitlines()[0] for w in caught]
    if len(importances) == 1:
        notes.append("one parameter: its importance is 1 by definition")
    return dict(importances), " ".join(notes)


def _plot(configs: list[dict], params: list[Param], path: Path, study: str) -> Path:
    """FID against each parameter: one point per configuration, its seeds' std as bars."""
    from gankit.viz import plot_sensitivity

    done = [c for c in configs if c["fid"] is not None]
    panels = [
        {
            "name": p.name,
            "values": [c[p.name] for c in done],
            "fid": [c["fid"] for c in done],
            "std": [c["std"] or 0.0 for c in done],
            "log": p.log,
            "range": None if p.kind == "choice" else (p.low, p.high),
        }
        for p in params
    ]
    return plot_sensitivity(
        panels,
        path,
        title=f"sweep {study}: FID by parameter (mean ± std over seeds; lower is better)",
    )


def format_sweep_report(report: SweepReport) -> str:
    """The report as text: a summary, the best configuration, the trials, the configurations
    by mean FID, the importances."""
    from gankit.evaluation import format_value, rows_to_markdown

    rec, names = report.record, [parse_param(t).name for t in report.record["params"]]
    states = [t["state"] for t in report.trials]
    counts = ", ".join(
        f"{states.count(s)} {s.lower()}"
        for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")
        if s in states
    )
    lines = [
        f"study {report.study} ({report.storage}): {rec['model']} on "
        f"{rec['config']['train']['data']}, {rec['trials']} configurations × "
        f"{rec['seeds']} seeds = {rec['trials'] * rec['seeds']} runs; trials: "
        f"{counts or 'none yet'}"
    ]
    best = report.configs[0] if report.configs and report.configs[0]["fid"] is not None else None
    if best:
        values = " ".join(f"{n}={format_value(best[n])}" for n in names)
        runs = [
            t["run"]
            for t in report.trials
            if t["config"] == best["config"] and t["fid"] is not None
        ]
        lines.append(
            f"best configuration: {best['config']} ({values}): FID "
            f"{_mean_std(best)} over {best['seeds']} seed(s); runs: {', '.join(runs)}"
        )
    lines += [
        "",
        "trials:",
        rows_to_markdown(
            report.trials,
            ["trial", "state", "config", "seed", *names, "fid", "steps", "run", "note"],
        ),
    ]
    lines += [
        "",
        "FID by configuration (mean ± std over seeds, best first):",
        rows_to_markdown(
            [
                {"config": c["config"]}
                | {n: c[n] for n in names}
                | {"FID": _mean_std(c), "seeds": f"{c['seeds']}/{c['runs']}"}
                for c in report.configs
            ]
        ),
    ]
    lines += ["", "parameter importances (PED-ANOVA):"]
    lines += [f"  {name}: {value:.3f}" for name, value in report.importances.items()]
    if report.importance_note:
        lines.append(f"  ({report.importance_note})")
    if report.plot:
        lines += ["", f"sensitivity plot: {_short_path(str(report.plot))}"]
    return "\n".join(lines)


def _mean_std(config: dict) -> str:
    if config["fid"] is None:
        return "-"
    std = config["std"]
    return f"{config['fid']:.4g} ± {std:.3g}" if std is not None else f"{config['fid']:.4g}"


def write_sweep_html(report: SweepReport, out: str | Path) -> Path:
    """The sweep as one self-contained page (``gankit sweep report --html``): its summary
    and best configuration, the trials with a link to each trial's own page, FID by
    configuration, the parameter importances and the sensitivity plot."""
    from gankit.evaluation import format_value
    from gankit.files import write_text
    from gankit.report.html import esc, figure, number, page, scrub_paths, sections, table

    out = Path(out)
    names = [parse_param(t).name for t in report.record["params"]]
    summary = format_sweep_report(report).split("\n\n")[0].splitlines()

    def link(run: str) -> str:
        target = Path(run) / "report.html"
        if not run or not target.exists():
            return f"<code>{esc(run or '–')}</code>"
        href = Path(os.path.relpath(target.resolve(), out.parent.resolve())).as_posix()
        return f'<a href="{esc(href)}"><code>{esc(run)}</code></a>'

    trials = [
        [number(t["trial"]), esc(t["state"].lower()), number(t["config"]), number(t["seed"])]
        + [esc(format_value(t[n])) for n in names]
        + [number(t["fid"]), number(t["steps"]), link(t["run"]), esc(t["note"])]
        for t in report.trials
    ]
    best = report.configs[0]["config"] if report.configs else None
    configs = [
        [f'<td class="num best">{c["config"]}</td>' if c["config"] == best else number(c["config"])]
        + [esc(format_value(c[n])) for n in names]
        + [esc(_mean_std(c)), f"{c['seeds']}/{c['runs']}"]
        for c in report.configs
    ]
    importances = [[esc(n), f"{v:.3f}"] for n, v in report.importances.items()]
    note = f'<p class="note">{esc(report.importance_note)}</p>' if report.importance_note else ""
    parts = [
        ("summary", "Summary", "".join(f"<p>{esc(line)}</p>" for line in summary)),
        (
            "sensitivity",
            "Sensitivity",
            figure(
                report.plot,
                "FID by parameter: one point per configuration, its seeds' "
                "spread as bars (lower is better).",
            )
            if report.plot and Path(report.plot).exists()
            else "<p>No completed trial yet.</p>",
        ),
        (
            "configurations",
            "FID by configuration (mean ± std over seeds, best first)",
            table(["config", *map(esc, names), "FID", "seeds"], configs, numeric={0}),
        ),
        (
            "trials",
            "Trials",
            table(
                [
                    "trial",
                    "state",
                    "config",
                    "seed",
                    *map(esc, names),
                    "FID",
                    "steps",
                    "run",
                    "note",
                ],
                trials,
                numeric={0, 2, 3, len(names) + 4, len(names) + 5},
            )
            + '<p class="note">Each run links to its own page (its <code>report.html</code>).</p>',
        ),
        (
            "importances",
            "Parameter importances (PED-ANOVA)",
            (table(["parameter", "importance"], importances, numeric={1}) if importances else "")
            + note,
        ),
    ]
    title = f"sweep {report.study}"
    body = f"<header><h1>{esc(title)}</h1></header>" + sections(parts)
    html = page(f"{title} — gankit report", body, {"kind": "sweep", "study": report.study})
    return write_text(out, scrub_paths(html, out.parent))
