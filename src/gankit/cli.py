"""The ``gankit`` command: a thin layer of sub-commands over :mod:`gankit.api` and friends."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from gankit.errors import GankitError
from gankit.version import __version__

DEFAULT_STORAGE = "sqlite:///sweep.db"  # a sweep's study, in the working directory

EPILOG = """examples:
  gankit train dcgan --data fashion-mnist
  gankit train gan-002 --data mnist-5k --set label_smoothing=0.2 --steps 3000
  gankit train --resume runs/dcgan-fashion-mnist-0001 --steps 4000
  gankit train dcgan --data fashion-mnist --eval-every 500   (FID & co. while training)
  gankit sample runs/dcgan-fashion-mnist-0001 --n 10000 --out samples.npz
  gankit eval runs/dcgan-fashion-mnist-0001
  torchrun --standalone --nproc-per-node 2 -m gankit train gan --data fashion-mnist
                            (one run on 2 processes; --batch-size stays the global batch)
  gankit compare runs/*
  gankit presets            (every model and preset, with what it is)
  gankit sweep dcgan --data fashion-mnist --param lr=loguniform:1e-5:1e-3 --trials 20 \\
      --seeds 3 --storage sqlite:///sweep.db --study dcgan-lr   (see gankit sweep -h)
"""


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a model or preset into a run folder",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train MODEL (a default such as dcgan, or a reference preset "
        "such as gan-000) into a run folder, or continue one with --resume.",
        epilog=EPILOG,
    )
    p.add_argument("model", nargs="?", help="model or preset name (see `gankit presets`)")
    p.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue this run from its newest checkpoint; --steps then sets the new total, "
        "and --data-dir, --device, --max-seconds, --log-every, --sample-every, "
        "--checkpoint-every, --eval-every, --on-divergence (and --set threads=N, "
        "keep_checkpoints=N) take effect; options that would change the model or the data "
        "are refused",
    )
    p.add_argument("--out", help="run folder (default: runs/MODEL-DATA-NNNN, numbered)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out run")
    p.add_argument(
        "--dry-run", action="store_true", help="print the resolved config as TOML and exit"
    )
    _add_run_options(p)


def _steps_arg(text: str) -> int:
    """--steps: a whole number >= 1 (the config's 0, "use epochs", is not for users)."""
    try:
        steps = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of steps") from None
    if steps < 1:
        raise argparse.ArgumentTypeError(
            f"{steps}: a run needs at least 1 step (to give its "
            "length in passes over the data, use --epochs)"
        )
    return steps


def _positive_number(text: str, what: str, rule: str) -> float:
    """A finite number > 0 from ``text``, else argparse's error: "not WHAT", or "TEXT: RULE"."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: {rule}")
    return value


def _epochs_arg(text: str) -> float:
    """--epochs: a number > 0 (fractions of a pass allowed)."""
    return _positive_number(
        text,
        "a number of epochs",
        "the run length in passes over the data must be a number > 0, e.g. 0.5 or 10",
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """The options that shape a training run: `gankit train` and every run of `gankit sweep`."""
    p.add_argument(
        "--data",
        help="fashion-mnist, mnist, mnist-5k, cifar10, folder:PATH or npz:PATH (colour is kept "
        "and the default models are sized from the data)",
    )
    p.add_argument(
        "--data-dir",
        help="folder holding the data files (else $GANKIT_DATA, the "
        "cache ~/.cache/gankit, system copies, then a download)",
    )
    length = p.add_mutually_exclusive_group()
    length.add_argument(
        "--steps",
        type=_steps_arg,
        metavar="N",
        help="total steps of the run (>= 1; with --resume, the new total)",
    )
    length.add_argument(
        "--epochs", type=_epochs_arg, metavar="E", help="run length in passes over the data (> 0)"
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        metavar="S",
        help="stop after S seconds of training (with a checkpoint; --resume continues)",
    )
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="learning rate of every optimiser")
    p.add_argument("--lr-g", type=float, help="learning rate of G (and E; AE/VAE: the only one)")
    p.add_argument("--lr-d", type=float, help="learning rate of D / the critic")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--sample-every", type=int, metavar="N", help="sample grid every N steps")
    p.add_argument("--checkpoint-every", type=int, metavar="N")
    p.add_argument("--log-every", type=int, metavar="N")
    p.add_argument(
        "--eval-every",
        type=int,
        metavar="N",
        help="FID, KID, precision/recall, "
        "class coverage every N steps on --eval-samples images; keeps "
        "checkpoints/best.safetensors (the first use builds the data's evaluator)",
    )
    p.add_argument(
        "--eval-samples",
        type=int,
        metavar="N",
        help="images per evaluation during training (default 2000)",
    )
    p.add_argument(
        "--evaluator",
        metavar="FILE",
        help="evaluator file to use instead of gankit's own for the data",
    )
    p.add_argument(
        "--on-divergence",
        choices=["stop", "rollback"],
        help="when a loss or "
        "weight becomes NaN/inf: stop (default), or reload the last good checkpoint "
        "and halve the learning rates (at most 3 times)",
    )
    p.add_argument("--config", metavar="FILE.toml", help="TOML file of config values")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any config value, e.g. --set n_critic=5 --set model.opt_d.lr=1e-4 "
        "(repeatable; values in TOML syntax)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


# Each run option of the command line: its flag and the config keys it sets.
RUN_FLAGS: dict[str, tuple[str, ...]] = {
    "data": ("data",),
    "data_dir": ("data_dir",),
    "steps": ("steps",),
    "epochs": ("epochs",),
    "max_seconds": ("max_seconds",),
    "batch_size": ("batch_size",),
    "seed": ("seed",),
    "device": ("device",),
    "sample_every": ("sample_every",),
    "checkpoint_every": ("checkpoint_every",),
    "log_every": ("log_every",),
    "eval_every": ("eval_every",),
    "eval_samples": ("eval_samples",),
    "evaluator": ("evaluator",),
    "on_divergence": ("on_divergence",),
    "lr": ("model.opt_g.lr", "model.opt_d.lr"),
    "lr_g": ("model.opt_g.lr",),
    "lr_d": ("model.opt_d.lr",),
}


def _run_overrides(args: argparse.Namespace) -> tuple[dict, dict]:
    """The run options given on the command line as config overrides by dotted key, and
    the flag that gave each (for messages)."""
    overrides, named = {}, {}
    for option in sorted(RUN_FLAGS, key=lambda o: o in ("lr_g", "lr_d")):  # lr_g/lr_d win
        value = getattr(args, option)
        if value is not None:
            for key in RUN_FLAGS[option]:
                overrides[key], named[key] = value, f"--{option.replace('_', '-')}"
    return overrides, named  # configure() lets epochs alone replace the preset's step count


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or resume) one run; under torchrun, one of its K processes (see Scale out)."""
    from gankit.training import distributed

    try:
        code = _train(args, distributed.init())
    except BaseException:
        distributed.shutdown(together=False)
        raise
    distributed.shutdown()
    return code


def _train(args: argparse.Namespace, world) -> int:
    from functools import partial

    from gankit.api import configure, launch, resume_config
    from gankit.training import distributed

    say = partial(distributed.say, world)  # process 0 speaks for the run
    overrides, named = _run_overrides(args)
    if args.resume:
        changes = _resume_changes(args, overrides, named)
        if args.dry_run:
            return _show_config(say, resume_config(args.resume, changes, named))
        trainer = launch(args.resume, changes=changes, named=named, progress=not args.no_progress)
        changed = ", ".join(f"{named[k]} {v}" for k, v in changes.items())
        say(
            f"resuming {trainer.run_dir} at step {trainer.step} of {trainer.total_steps}"
            + (f" with {changed}" if changed else "")
        )
    else:
        if not args.model:
            raise GankitError(
                "name a model or preset (e.g. `gankit train dcgan`), or pass "
                "--resume RUN_DIR; `gankit presets` lists them"
            )
        config = configure(
            args.model,
            args.config,
            args.set,
            **{k.replace(".", "__"): v for k, v in overrides.items()},
        )
        if args.dry_run:
            return _show_config(say, config)
        trainer = launch(
            config, out=args.out, overwrite=args.overwrite, progress=not args.no_progress
        )
        where = (
            f"{world.size} processes ({trainer.device.type}, "
            f"{config.train.batch_size // world.size} images each)"
            if world.parallel
            else trainer.device
        )
        say(
            f"training {config.preset} on {trainer.data.name} ({len(trainer.data)} images) "
            f"for {trainer.total_steps} steps on {where} -> {trainer.run_dir}"
        )
    result = trainer.fit()
    launcher = (
        ""
        if not world.parallel
        else f"torchrun --standalone --nproc-per-node {world.size} -m "
        if world.size == world.local_size
        else "torchrun (the same options) -m "
    )
    row = " ".join(
        f"{k}={v:.4g}"
        for k, v in result.last_row.items()
        if k.startswith(("loss/", "D(", "critic"))
    )
    if result.interrupted:
        say(
            f"\nstopped at step {result.step}; checkpoint {result.checkpoint}\n"
            f"resume with: {launcher}gankit train --resume {trainer.run_dir}"
        )
        return 130
    if result.step < trainer.total_steps:
        say(
            f"time budget of {trainer.config.train.max_seconds:g} s used at step "
            f"{result.step} of {trainer.total_steps}; continue with: {launcher}gankit train "
            f"--resume {trainer.run_dir}"
        )
    say(
        f"done: step {result.step}, {trainer.clock.elapsed:.0f} s of training. {row}\n"
        f"samples: {trainer.run_dir / 'samples'}  checkpoint: {result.checkpoint}"
    )
    from gankit.evaluation.during_training import PeriodicEvaluation

    scoring = trainer.callback(PeriodicEvaluation)
    if scoring is not None and scoring.best["step"] is not None:
        best, spent = scoring.best, scoring.seconds
        share = spent / max(trainer.clock.elapsed + spent, 1e-9)
        say(
            f"best FID {best['fid']:.4g} at step {best['step']} (checkpoints/best.safetensors);"
            f" evaluation took {spent:.0f} s, {share:.0%} of the run"
        )
    from gankit.report import RefreshReport

    report = trainer.callback(RefreshReport)
    if report is not None and report.writes:
        share = report.seconds / max(trainer.clock.elapsed, 1e-9)
        say(
            f"report: {trainer.run_dir / 'report.html'} (written {report.writes} times in "
            f"{report.seconds:.2f} s, {share:.2%} of the training time)"
        )
    return 0


def _resume_changes(args: argparse.Namespace, overrides: dict, named: dict) -> dict:
    """What ``--resume`` is asked to change (flags and ``--set``, by dotted key), after
    refusing what never applies to a resumed run."""
    from gankit.config import parse_assignment

    for given, flag in (
        (args.model, f"the model {args.model!r}"),
        (args.out, "--out"),
        (args.overwrite, "--overwrite"),
        (args.config, "--config"),
    ):
        if given:
            raise GankitError(
                f"{flag}: --resume continues a run with its own model, folder "
                "and saved config; pass only what may change (e.g. --steps, "
                "--data-dir, --log-every; see `gankit train -h`)"
            )
    changes = dict(overrides)
    for item in args.set:
        path, value = parse_assignment(item)
        changes[path], named[path] = value, f"--set {item}"
    return changes


def _show_config(say, config) -> int:
    import tomli_w

    from gankit.config import to_dict

    say(tomli_w.dumps(to_dict(config)), end="")
    return 0


SWEEP_EPILOG = """examples:
  gankit sweep dcgan --data fashion-mnist --steps 2000 --trials 20 --seeds 3 \\
      --param lr=loguniform:1e-5:1e-3 --param n_critic=int:1:5 \\
      --storage sqlite:///sweep.db --study dcgan-lr
  (start the same command in more terminals, or on more machines with a PostgreSQL
   --storage such as postgresql+psycopg2://USER@HOST/DB, to run trials in parallel)
  gankit sweep report --storage sqlite:///sweep.db --study dcgan-lr

--param NAME=SPEC, SPEC one of: loguniform:LO:HI, uniform:LO:HI, int:LO:HI[:log],
choice:A,B,C (TOML values). NAME: any key --set takes, or lr (both optimisers), lr_g, lr_d.
Each trial is one run (one configuration, one seed) in OUT/trial-NNNN, resumable with
`gankit train --resume`; the objective is the FID of its last evaluation.
"""


def _add_sweep(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="hyper-parameter sweep on Optuna (many workers may join)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train --trials configurations of MODEL, each with --seeds "
        "seeds, drawn by Optuna from the --param ranges, ranked by FID. Every "
        "option of `gankit train` applies to each run. `gankit sweep report` "
        "prints the results.",
        epilog=SWEEP_EPILOG,
    )
    p.add_argument("model", help="model or preset name (see `gankit presets`)")
    p.add_argument(
        "--param",
        action="append",
        default=[],
        required=True,
        metavar="NAME=SPEC",
        help="a swept value (repeatable), e.g. lr=loguniform:1e-5:1e-3",
    )
    p.add_argument(
        "--trials",
        type=int,
        required=True,
        metavar="N",
        help="configurations to try (runs: N × seeds)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        metavar="S",
        help="seeds per configuration: --seed (default the preset's), +1, … (default 1)",
    )
    p.add_argument(
        "--storage",
        default=DEFAULT_STORAGE,
        metavar="URL",
        help="Optuna storage "
        "shared by the workers: sqlite:///FILE.db (one machine; default "
        f"{DEFAULT_STORAGE}) or postgresql+psycopg2://USER:PASSWORD@HOST/DB (many)",
    )
    p.add_argument("--study", required=True, metavar="NAME", help="study name in the storage")
    p.add_argument("--out", metavar="FOLDER", help="where the runs go (default sweeps/STUDY)")
    p.add_argument(
        "--sampler",
        choices=["tpe", "random"],
        default="tpe",
        help="how configurations are drawn (default tpe)",
    )
    p.add_argument(
        "--pruner",
        choices=["median", "none"],
        default="median",
        help="stop runs whose FID is worse than the median of earlier runs at the "
        "same step (default median)",
    )
    p.add_argument(
        "--heartbeat",
        type=int,
        default=60,
        metavar="S",
        help="a running trial "
        "reports every S seconds; one silent for 2×S (a killed worker) is marked "
        "failed (default 60)",
    )
    _add_run_options(p)


def cmd_sweep(args: argparse.Namespace) -> int:
    from gankit.tools.sweep import require_optuna, sweep

    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # gankit prints each trial itself
    outcomes = sweep(
        args.model,
        storage=args.storage,
        study=args.study,
        params=args.param,
        trials=args.trials,
        seeds=args.seeds,
        out=args.out,
        sampler=args.sampler,
        pruner=args.pruner,
        heartbeat=args.heartbeat,
        config_file=args.config,
        sets=args.set,
        progress=not args.no_progress,
        **{k.replace(".", "__"): v for k, v in _run_overrides(args)[0].items()},
    )
    ran = ", ".join(f"{o.number} {o.state.lower()}" for o in outcomes) or "none"
    print(
        f"no trial left to take; this worker ran: {ran}\n"
        f"results: gankit sweep report --storage {args.storage} --study {args.study}"
    )
    return 0


def _add_sweep_report(sub) -> None:
    p = sub.add_parser(
        "sweep-report",
        help="results of a sweep (also: gankit sweep report)",
        description="Print a sweep's best configuration, its trials, FID mean "
        "± std over seeds per configuration and parameter importances; write a "
        "sensitivity plot.",
    )
    p.add_argument(
        "--storage",
        default=DEFAULT_STORAGE,
        metavar="URL",
        help=f"the sweep's Optuna storage (default {DEFAULT_STORAGE})",
    )
    p.add_argument("--study", required=True, metavar="NAME")
    p.add_argument(
        "--plot",
        metavar="FILE.png",
        help="where the sensitivity plot goes "
        "(default: sensitivity.png in the sweep folder, else sweep-STUDY.png)",
    )
    p.add_argument(
        "--html",
        metavar="FILE.html",
        help="also write the report as one page, linking to each trial's own page",
    )


def cmd_sweep_report(args: argparse.Namespace) -> int:
    from gankit.tools.sweep import (
        format_sweep_report,
        require_optuna,
        sweep_report,
        write_sweep_html,
    )

    optuna = require_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    report = sweep_report(args.storage, args.study, args.plot)
    print(format_sweep_report(report))
    if args.html:
        print(f"page: {write_sweep_html(report, args.html)}")
    return 0


def _run_parser(sub, name: str, help: str) -> argparse.ArgumentParser:
    """A sub-command that reads a trained run: RUN_DIR and --device."""
    p = sub.add_parser(name, help=help)
    p.add_argument("run_dir", help="a run folder written by `gankit train`")
    p.add_argument("--device", default="cpu", help="where to load the model (default cpu)")
    return p


def _add_sample(sub) -> None:
    p = _run_parser(sub, "sample", "generate images from a trained run")
    p.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    p.add_argument(
        "--out",
        help="FILE.npz (uint8 'images' (N, H, W), 'labels' for a "
        "conditional model) or DIR/ for one PNG per image",
    )
    p.add_argument("--grid", metavar="FILE.png", help="also write one grid of the images")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out file or non-empty folder, and an existing --grid",
    )
    p.add_argument("--label", type=int, help="conditional model: the class to generate")
    p.add_argument("--seed", type=int, default=0)
    _add_temperature(p)


def _temperature_arg(text: str) -> float:
    """--temperature: a number > 0 (refused before a model is loaded)."""
    return _positive_number(
        text,
        "a number",
        "expected a number > 0 (1 draws as in training; below 1 truncates, above 1 widens)",
    )


def _add_temperature(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--temperature",
        type=_temperature_arg,
        metavar="T",
        help="scale the draws the images are generated from (default: the model's "
        "latent.temperature): below 1 truncates to more typical samples, above 1 widens",
    )


def _with_temperature(run, value: float | None):
    """The loaded run, sampling at ``value`` if one was given."""
    if value is not None:
        run.config.model.latent.temperature = value
    return run


def cmd_sample(args: argparse.Namespace) -> int:
    """Generate --n images; each output appears whole under its name or not at all."""
    import numpy as np
    import torch

    from gankit.files import atomic_folder, atomic_write, remove_temporaries
    from gankit.runs import load_run
    from gankit.viz import save_grid, save_images

    if not args.out and not args.grid:
        raise GankitError("say where the images go: --out FILE.npz, --out DIR/ or --grid FILE.png")
    if args.n < 1:
        raise GankitError(f"--n {args.n}: expected at least 1 image")
    out, grid = (Path(p) if p else None for p in (args.out, args.grid))
    to_folder = out is not None and (args.out.endswith(("/", "\\")) or out.is_dir())
    if to_folder and out.is_file():
        raise GankitError(f"--out {args.out}: {out} is a file, not a folder; choose another path")
    if out is not None and not to_folder and out.suffix != ".npz":
        raise GankitError(f"--out {out}: use a .npz file or a folder ending in /")
    if not args.overwrite:  # refused before the model is loaded and the images are generated
        for option, path in (("--out", out), ("--grid", grid)):
            if path is not None and (path.is_file() or (path.is_dir() and any(path.iterdir()))):
                raise GankitError(
                    f"{option} {path} already exists: pass --overwrite to "
                    "replace it, or choose another path"
                )
    run = _with_temperature(load_run(args.run_dir, args.device), args.temperature)
    labels = None
    if args.label is not None:
        if not run.config.model.conditional:
            raise GankitError(f"--label needs a conditional model; {run.config.preset} is not")
        if not 0 <= args.label < run.config.model.num_classes:
            last = run.config.model.num_classes - 1
            raise GankitError(f"--label {args.label}: classes are 0..{last}")
        labels = torch.full((args.n,), args.label, dtype=torch.long, device=run.model.device)
    elif run.config.model.conditional:
        labels = torch.arange(args.n, device=run.model.device) % run.config.model.num_classes
    images = run.sample(args.n, labels, args.seed).cpu()  # (N, C, H, W) uint8
    if out is not None:
        # what a killed `gankit sample` left (a live one keeps touching its temporary)
        remove_temporaries(out.parent, of=out.name, idle=60)
        if to_folder:
            with atomic_folder(out, overwrite=args.overwrite) as tmp:
                save_images(images, tmp, labels=labels.cpu() if labels is not None else None)
        else:
            arrays = {
                "images": images[:, 0].numpy()
                if images.shape[1] == 1
                else images.permute(0, 2, 3, 1).numpy()
            }
            if labels is not None:
                arrays["labels"] = labels.cpu().numpy().astype(np.int64)
            with atomic_write(out, "wb") as f:
                np.savez_compressed(f, **arrays)
        print(f"wrote {args.n} images to {out}")
    if args.grid:
        save_grid(images, args.grid, nrow=10 if labels is not None else None, scale=2)
        print(f"wrote grid {args.grid}")
    return 0


def _add_interpolate(sub) -> None:
    p = _run_parser(sub, "interpolate", "walk between latent points of a trained run")
    p.add_argument("--out", required=True, metavar="FILE.png")
    p.add_argument("--rows", type=int, default=8, help="number of walks (default 8)")
    p.add_argument("--steps", type=int, default=10, help="images per walk (default 10)")
    p.add_argument("--mode", choices=["slerp", "lerp"], default="slerp")
    p.add_argument("--seed", type=int, default=0)


def cmd_interpolate(args: argparse.Namespace) -> int:
    from gankit.runs import load_run
    from gankit.viz import save_grid

    if args.rows < 1 or args.steps < 2:
        raise GankitError("--rows must be >= 1 and --steps >= 2")
    run = load_run(args.run_dir, args.device)
    images = run.interpolations(args.rows, args.steps, args.mode, args.seed)
    save_grid(images.cpu(), args.out, nrow=args.steps, scale=2)
    print(f"wrote {args.rows} walks of {args.steps} images to {args.out}")
    return 0


def _add_latent(sub) -> None:
    p = _run_parser(sub, "latent", "plot the codes of test images (AE, VAE, BiGAN)")
    p.add_argument("--out", required=True, metavar="FILE.png")
    p.add_argument("--data", help="data set to encode (default: the run's, test split)")
    p.add_argument("--n", type=int, default=5000, help="images to encode (default 5000)")


def cmd_latent(args: argparse.Namespace) -> int:
    from gankit.models import Reconstructing
    from gankit.report.figures import plot_codes
    from gankit.runs import load_run

    run = load_run(args.run_dir, args.device)
    if not isinstance(run.model, Reconstructing):
        raise GankitError(
            f"{run.config.preset} has no encoder: `gankit latent` is for AE, VAE and BiGAN runs"
        )
    data = _test_split(run, args.data)
    for path in plot_codes(run, data.subset(min(args.n, len(data))), args.out):
        print(
            f"wrote {path}"
            + (" (decoded 2-D latent grid)" if path.stem.endswith("-manifold") else "")
        )
    return 0


def _test_split(run, data: str | None = None):
    """The test split of ``data`` (default: the run's data) in the shape its model makes."""
    from gankit.data import load_dataset

    tc, mc = run.config.train, run.config.model
    return load_dataset(
        data or tc.data, "test", tc.data_dir or None, mc.image_size, channels=mc.channels
    )


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="FID, KID, precision/recall, coverage … of a run or samples",
        description="Evaluate a trained run (or any .npz of samples) against the "
        "real test split, on the features of gankit's evaluator for the data. "
        "Prints a table and writes eval.json, and eval-nearest.png beside it: the 8 "
        "samples nearest the training set and 8 random ones, each followed by its 3 "
        "nearest training images (a glance at memorisation).",
    )
    p.add_argument("run_dir", nargs="?", help="a run folder written by `gankit train`")
    p.add_argument(
        "--samples",
        metavar="FILE.npz",
        help="evaluate these images instead: a "
        "uint8 'images' array (N, H, W) or (N, H, W, 3) [and 'labels' that were requested]",
    )
    p.add_argument("--data", help="the real data to compare with (default: the run's)")
    p.add_argument("--data-dir")
    p.add_argument("--n", type=int, default=10_000, help="samples to generate (default 10000)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--checkpoint", default="latest", help="latest (default), best, or a file")
    _add_temperature(p)
    p.add_argument("--evaluator", metavar="FILE", help="an evaluator file instead of gankit's")
    p.add_argument(
        "--inception",
        action="store_true",
        help="also compute Inception FID (needs torch-fidelity and its downloaded weights)",
    )
    p.add_argument(
        "--out",
        metavar="FILE.json",
        help="where to write the report (default: RUN_DIR/eval.json, or beside the samples "
        "file); the nearest-neighbour grid goes beside it as STEM-nearest.png",
    )
    p.add_argument("--device", default="cpu")


def cmd_eval(args: argparse.Namespace) -> int:
    from gankit.evaluation import (
        evaluate_images,
        evaluate_run,
        format_report,
        inception_fid,
        load_samples,
        open_evaluation,
        open_run_evaluation,
        write_report,
    )
    from gankit.runs import load_run

    if bool(args.run_dir) == bool(args.samples):
        raise GankitError("give a run folder or --samples FILE.npz (one of them)")
    if args.n < 10:
        raise GankitError(
            f"--n {args.n}: evaluate at least 10 samples (thousands for stable numbers)"
        )
    if args.samples and args.temperature is not None:
        raise GankitError("--temperature is for a run folder; --samples are already drawn")
    if args.samples:
        if not args.data:
            raise GankitError("--samples needs --data NAME: the real data to compare with")
        images, labels = load_samples(args.samples)  # a bad file is refused before any build
        evaluation = open_evaluation(  # the real images in the samples' shape
            args.data,
            args.data_dir,
            images.shape[-1],
            args.device,
            args.evaluator,
            channels=images.shape[1],
        )
        out = Path(args.out or Path(args.samples).with_suffix(".eval.json"))
        nearest = out.with_name(f"{out.stem}-nearest.png")
        report = evaluate_images(
            evaluation, images, labels, nearest=nearest, samples=args.samples, data=args.data
        )
    else:
        ckpt = None
        if args.checkpoint == "best":
            ckpt = Path(args.run_dir) / "checkpoints" / "best.safetensors"
            if not ckpt.exists():
                raise GankitError(
                    f"{args.run_dir} has no best checkpoint: it is written by "
                    "training with --eval-every"
                )
        elif args.checkpoint != "latest":
            ckpt = Path(args.checkpoint)
        run = _with_temperature(load_run(args.run_dir, args.device, ckpt), args.temperature)
        evaluation = open_run_evaluation(
            run.config,
            args.device,
            data=args.data,
            data_dir=args.data_dir,
            evaluator=args.evaluator,
        )
        out = Path(args.out or Path(args.run_dir) / "eval.json")
        nearest = out.with_name(f"{out.stem}-nearest.png")
        report = evaluate_run(run, evaluation, args.n, args.seed, nearest=nearest)
        report["checkpoint"] = args.checkpoint
    if args.inception:
        fake = (
            load_samples(args.samples)[0] if args.samples else run.sample(args.n, None, args.seed)
        )
        from gankit.data import load_dataset

        real = load_dataset(report["reference"].rsplit(":", 1)[0], "test", args.data_dir)
        report["metrics"] |= inception_fid(fake, real.images)
    print(format_report(report))
    write_report(report, out)
    print(f"\nwrote {out} ({report['seconds']:.1f} s)")
    if "nearest" in report:
        print(f"wrote {nearest}: samples beside their nearest training images")
    return 0


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", help="one table of metrics across runs (Markdown, CSV)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--csv", metavar="FILE.csv", help="also write the table as CSV (every column)")
    p.add_argument("--all", action="store_true", help="show every column (stds, NN medians)")


def cmd_compare(args: argparse.Namespace) -> int:
    from gankit.evaluation import COMPARE_COLUMNS, compare_rows, rows_to_csv, rows_to_markdown

    rows = compare_rows(args.run_dirs)
    print(rows_to_markdown(rows, None if args.all else COMPARE_COLUMNS))
    if args.csv:
        rows_to_csv(rows, args.csv)
        print(f"\nwrote {args.csv}")
    return 0


def _add_evaluator(sub) -> None:
    p = sub.add_parser("evaluator", help="build or describe the feature network of a data set")
    p.add_argument("action", choices=["build", "info"])
    p.add_argument("data", help="data set name (fashion-mnist, mnist, …) or, for info, a file")
    p.add_argument("--data-dir")
    p.add_argument(
        "--image-size",
        type=int,
        help="the size of the images it scores (default: the size the default models train "
        "at on this data, e.g. 28 for fashion-mnist, 32 for cifar10, up to 64 for a folder)",
    )
    p.add_argument(
        "--channels",
        type=int,
        default=0,
        choices=[0, 1, 3],
        help="1 or 3 to convert the images (default 0: as stored)",
    )
    p.add_argument("--rebuild", action="store_true", help="train anew even if cached")
    p.add_argument("--out", metavar="FILE", help="build: also save the evaluator here")
    p.add_argument("--device", default="cpu")


def cmd_evaluator(args: argparse.Namespace) -> int:
    import json

    from gankit.evaluation.evaluator import describe, get_evaluator, load_evaluator, save_evaluator

    if args.action == "info" and Path(args.data).is_file():
        net = load_evaluator(args.data)
    else:
        size = args.image_size
        if size is None:  # what the default models train at on this data
            from gankit.api import image_shape

            train = {"data": args.data} | ({"data_dir": args.data_dir} if args.data_dir else {})
            size = image_shape("dcgan", {"train": train})[1]
        net = get_evaluator(
            args.data,
            args.data_dir,
            size,
            args.device,
            rebuild=args.action == "build" and args.rebuild,
            channels=args.channels,
        )
    if args.action == "build" and args.out:
        save_evaluator(net, args.out)
        print(f"saved {args.out}")
    print(net.name)
    print(json.dumps(describe(net) | {"recipe": net.info.get("recipe")}, indent=2))
    return 0


def _add_presets(sub) -> None:
    p = sub.add_parser("presets", help="list models and presets, or show one as TOML")
    p.add_argument("name", nargs="?", help="show this preset's full config")


def cmd_presets(args: argparse.Namespace) -> int:
    from gankit.presets import get_preset, preset_names

    if args.name:
        import tomli_w

        from gankit.api import configure
        from gankit.config import to_dict

        print(tomli_w.dumps(to_dict(configure(args.name))), end="")
        return 0
    for name in preset_names():
        p = get_preset(name)
        print(
            f"{name:10s} {p['model']['family']:6s} {p['train']['data']:14s} "
            f"{p['description'].split(':')[0].split('.')[0]}"
        )
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench",
        help="training speed against the usual PyTorch way, FLOPs, "
        "GEMM peak share, sampling, evaluation and time to quality",
        description="Measure every default model and reference preset (or "
        "--models) on this machine: gankit's training throughput, the same "
        "model trained the usual PyTorch way, FLOPs per step and the share of "
        "the GEMM peak measured in the same run, sampling speed and peak "
        "memory; then the time to evaluate 10,000 samples and time to quality "
        "(default DCGAN vs a tutorial DCGAN, 5 minutes each). Measure on an "
        "idle machine: other busy programs slow every number.",
    )
    p.add_argument("--models", metavar="A,B", help="models or presets to measure (default: all)")
    p.add_argument(
        "--data",
        default="fashion-mnist",
        help="data to train on (default fashion-mnist; the throughput does not depend on it)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="seconds instead of minutes: batches "
        "capped at 16, few repeats, 4-second time-to-quality runs (numbers are "
        "indicative only)",
    )
    p.add_argument(
        "--ttq-seconds",
        type=float,
        metavar="S",
        help="budget of each time-to-quality run (default 300; 0 skips it)",
    )
    p.add_argument(
        "--no-eval",
        action="store_true",
        help="skip the evaluation timing and time to quality (no evaluator needed)",
    )
    p.add_argument(
        "--threads", type=int, default=0, help="CPU threads (default: one per physical core)"
    )
    p.add_argument(
        "--json",
        metavar="FILE",
        help='also write the report as JSON (one row per model under "rows")',
    )


def cmd_bench(args: argparse.Namespace) -> int:
    from gankit.tools import bench

    models = bench.resolve_models(args.models)
    settings = bench.Settings.quick() if args.quick else bench.Settings()
    if args.ttq_seconds is not None:
        if args.ttq_seconds < 0:
            raise GankitError("--ttq-seconds must be >= 0 (0 skips time to quality)")
        settings.ttq_seconds = args.ttq_seconds
    report = bench.run_bench(
        models,
        args.data,
        settings,
        args.threads,
        evaluation=not args.no_eval,
        ttq=not args.no_eval,
        log=lambda text: print(text, file=sys.stderr, flush=True),
    )
    print(bench.format_bench(report))
    if args.json:
        print(f"wrote {bench.write_json(report, args.json)}", file=sys.stderr)
    return 0


def _add_table(sub) -> None:
    p = sub.add_parser(
        "table",
        help="train every model for the same time and score them: the README's model table",
        description="Train every default and reference preset (or --models) on "
        "one data set for the same wall-clock budget of training, score 10,000 "
        "samples of each on the data's evaluator, and write OUT/table.md (the "
        "Markdown table, each default beside its family's reference presets) "
        "and OUT/table.json; the run folders stay in OUT. Run it on an idle "
        "machine: other busy programs cost every model steps.",
    )
    p.add_argument("--models", metavar="A,B", help="models or presets (default: all)")
    p.add_argument(
        "--data", default="fashion-mnist", help="data to train and score on (default fashion-mnist)"
    )
    p.add_argument(
        "--minutes", type=float, default=5.0, help="training time of each model (default 5)"
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="seeds per model; the table shows mean ± std (default 1)",
    )
    p.add_argument(
        "--eval-n",
        type=int,
        default=10_000,
        metavar="N",
        help="samples scored per run (default 10000)",
    )
    p.add_argument(
        "--out",
        default="table",
        metavar="DIR",
        help="where the runs and the table go (default ./table)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="6 s of training and 1,000 samples "
        "per model: checks the command, numbers indicative only",
    )


def cmd_table(args: argparse.Namespace) -> int:
    from gankit.tools.table import TableSettings, format_table, run_table, table_models

    settings = (
        TableSettings(0.1, args.seeds, 1000, args.data)
        if args.quick
        else TableSettings(args.minutes, args.seeds, args.eval_n, args.data)
    )
    report = run_table(
        table_models(args.models),
        args.out,
        settings,
        log=lambda text: print(text, file=sys.stderr, flush=True),
    )
    print(format_table(report))
    print(f"\nwrote {Path(args.out) / 'table.md'} and table.json", file=sys.stderr)
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser(
        "report",
        help="one self-contained HTML page per run, or one comparing several runs",
        description="Write a run's page (its report.html, refreshed by training too) or, for "
        "several runs, one page comparing them. Pages open from disk with no network.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument(
        "--out",
        metavar="FILE.html",
        help="the page's file or folder (one run: RUN_DIR/report.html; several: compare.html here)",
    )
    p.add_argument(
        "--no-figures",
        action="store_true",
        help="do not draw the interpolation strip and latent plot from the checkpoint",
    )
    p.add_argument("--device", default="cpu", help="for drawing the figures (default cpu)")


def cmd_report(args: argparse.Namespace) -> int:
    import time

    from gankit.report import REPORT, write_comparison, write_run_report

    for run_dir in map(Path, args.run_dirs):
        if not run_dir.is_dir():
            raise GankitError(f"{run_dir} is not a run folder (it does not exist)")
        if not any((run_dir / name).exists() for name in ("config.toml", "metrics.jsonl")):
            raise GankitError(
                f"{run_dir} holds no config.toml or metrics.jsonl: not a gankit run folder"
            )
    folders = [Path(d).resolve() for d in args.run_dirs]
    twice = {str(d) for d in args.run_dirs if folders.count(Path(d).resolve()) > 1}
    if twice:
        raise GankitError(f"{', '.join(sorted(twice))}: given twice; compare each run once")
    started = time.perf_counter()
    single = len(args.run_dirs) == 1
    out = Path(args.out) if args.out else None
    if out is not None and out.is_dir():  # a folder: the page goes in it
        out = out / (REPORT if single else "compare.html")
    for run_dir in map(Path, args.run_dirs):
        if not args.no_figures:
            _draw_figures(run_dir, args.device)
        if single or not (run_dir / REPORT).exists():
            written = write_run_report(run_dir, out if single else None)
    if not single:
        written = write_comparison(args.run_dirs, out or "compare.html")
    size = written.stat().st_size
    seconds = time.perf_counter() - started
    print(f"wrote {written} ({size / 2**20:.2f} MiB, {seconds:.1f} s); open it in a browser")
    return 0


def _draw_figures(run_dir: Path, device: str) -> None:
    """The report's interpolation strip and latent plot, drawn from the newest checkpoint
    unless they are newer than it; a run that cannot be loaded goes without them."""
    from gankit.models import Reconstructing
    from gankit.notices import notice
    from gankit.report.figures import write_figures
    from gankit.runs import RUN_FIGURES, checkpoint, load_run

    newest = checkpoint.latest_checkpoint(run_dir / "checkpoints")
    drawn = run_dir / RUN_FIGURES / "interpolation.png"
    if newest is None or (drawn.exists() and drawn.stat().st_mtime >= newest.stat().st_mtime):
        return
    try:
        run = load_run(run_dir, device, newest)
        data = None
        if isinstance(run.model, Reconstructing):
            try:
                data = _test_split(run)
            except GankitError as err:
                notice(f"{run_dir}: no latent plot ({err})")
        write_figures(run, data)
    except GankitError as err:
        notice(f"{run_dir}: no figures from its checkpoint ({err})")


COMMANDS = {
    "train": cmd_train,
    "sample": cmd_sample,
    "interpolate": cmd_interpolate,
    "latent": cmd_latent,
    "eval": cmd_eval,
    "compare": cmd_compare,
    "report": cmd_report,
    "evaluator": cmd_evaluator,
    "presets": cmd_presets,
    "bench": cmd_bench,
    "sweep": cmd_sweep,
    "sweep-report": cmd_sweep_report,
    "table": cmd_table,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gankit", description="Train, sample and inspect classic generative image models."
    )
    parser.add_argument("--version", action="version", version=f"gankit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_train,
        _add_sample,
        _add_interpolate,
        _add_latent,
        _add_eval,
        _add_compare,
        _add_report,
        _add_evaluator,
        _add_presets,
        _add_bench,
        _add_sweep,
        _add_sweep_report,
        _add_table,
    ):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gankit`` console script."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:2] == ["sweep", "report"]:  # `gankit sweep report` is the sweep-report command
        argv = ["sweep-report", *argv[2:]]
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except GankitError as err:
        size = os.environ.get("WORLD_SIZE", "1")  # under torchrun, say which process speaks
        who = f" (process {os.environ.get('RANK', '?')} of {size})" if size != "1" else ""
        print(f"gankit: error{who}: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:  # a second Ctrl-C: what stopped, and how to go on
        print(f"\ngankit: interrupted{': ' if str(err) else ''}{err}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
