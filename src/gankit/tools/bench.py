"""``gankit bench``: how fast gankit trains, measured against the usual PyTorch way in one run.

For each model it measures, on this machine and in this process:

* gankit's training step (ms, images/s: the median of several timed repeats after warm-up),
  the FLOPs of that step counted from the layer shapes (:mod:`gankit.tools.flops`) and the share
  of the machine's GEMM peak they reach — the peak measured here too, by a large matrix
  multiply;
* the same model (same networks, losses and schedule) trained the way widespread PyTorch
  example code does it — :class:`UsualWay` — and the ratio of the two. The repeats of both
  alternate, so a noisy neighbour slows both alike;
* sampling throughput and the peak resident memory of the model's measurement.

Then it times an evaluation of 10,000 samples, and time-to-quality: gankit's default DCGAN
against a plain tutorial DCGAN (:func:`tutorial_dcgan`), each trained for the same wall-clock
budget, start-up included, both scored by gankit's evaluator.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gankit.api import launch
from gankit.config import RunConfig
from gankit.data import Dataset, load_dataset
from gankit.errors import ConfigError
from gankit.files import write_text
from gankit.models import build_model
from gankit.presets import DEFAULT_NAMES, preset_names
from gankit.tools.flops import sample_flops, step_flops
from gankit.training import build_optimizers, configure_threads
from gankit.version import __version__
from gankit.viz import to_uint8

BASELINE_BATCH = 64  # the batch size of the usual example code


@dataclass
class Settings:
    """How long to measure: the full bench, or ``--quick`` (seconds, numbers indicative)."""

    repeats: int = 5  # timed repeats per model and side (the median is reported)
    repeat_seconds: float = 0.5  # steps per repeat are chosen to take about this long
    warmup: int = 3  # untimed steps first (allocations, oneDNN kernel choice)
    max_batch: int = 0  # cap the presets' batch sizes (0 = as the preset says)
    sample_n: int = 1000  # images per sampling measurement
    eval_n: int = 10_000  # samples in the evaluation timing
    ttq_seconds: float = 300.0  # wall-clock budget of each time-to-quality run (0 = skip)
    ttq_eval_every: int = 250  # gankit's evaluations during that run (steps)
    ttq_eval_n: int = 2000  # samples per evaluation during that run

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            repeats=2,
            repeat_seconds=0.05,
            warmup=1,
            max_batch=16,
            sample_n=64,
            eval_n=500,
            ttq_seconds=4.0,
            ttq_eval_every=5,
            ttq_eval_n=200,
        )


# --------------------------------------------------------------------------- the machine


def machine() -> dict:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out = {
        "cpu": cpu,
        "cores": cores,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "gankit": __version__,
        "python": platform.python_version(),
        "device": "cpu",
    }
    if torch.cuda.is_available():
        out |= {"device": "cuda", "gpu": torch.cuda.get_device_name()}
    return out


def sync(device: torch.device) -> None:
    """Wait for queued device work (CUDA runs asynchronously) before reading a clock."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_peak_gflops(
    device: torch.device, n: int = 1024, seconds: float = 0.3, tries: int = 5
) -> float:
    """This machine's FP32 matrix-multiply rate (GFLOP/s): the best of ``tries`` timed runs of
    n×n products (2n³ FLOPs each)."""
    if device.type == "cuda":
        n = max(n, 4096)
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    c = torch.empty(n, n, device=device)
    for _ in range(3):
        torch.mm(a, b, out=c)
    sync(device)
    started = time.perf_counter()
    torch.mm(a, b, out=c)
    sync(device)
    reps = max(1, int(seconds / max(time.perf_counter() - started, 1e-6)))
    best = math.inf
    for _ in range(tries):
        started = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b, out=c)
        sync(device)
        best = min(best, (time.perf_counter() - started) / reps)
    return 2 * n**3 / best / 1e9


class PeakMemory:
    """Peak resident memory (MiB) of a block. Linux resets the process's high-water mark on
    request; elsewhere this reads the peak of the whole process so far."""

    def __enter__(self) -> PeakMemory:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.scope = "block"
        except OSError:
            self.scope = "process"
        return self

    def __exit__(self, *exc) -> None:
        self.mib = _peak_rss_mib()


def _peak_rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def median_seconds(
    fns: dict[str, Callable[[], None]], settings: Settings, device: torch.device
) -> dict[str, float]:
    """Seconds per call of each function: the median over ``settings.repeats`` repeats,
    taken in turns (a, b, a, b …) so that a noisy neighbour slows every side alike. A call
    that takes seconds (dcgan-001's step) gets one warm-up call and three repeats."""
    counts, repeats = {}, settings.repeats
    for name, fn in fns.items():
        once = _timed(fn, device)  # the first call: allocations, kernel choice
        if once < 1.0:
            for _ in range(settings.warmup - 1):
                fn()
            once = _timed(fn, device)
        else:
            repeats = min(repeats, 3)
        counts[name] = max(1, round(settings.repeat_seconds / max(once, 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(_timed(fn, device, counts[name]))
    return {name: statistics.median(t) for name, t in times.items()}


def _timed(fn: Callable[[], None], device: torch.device, calls: int = 1) -> float:
    """Seconds per call of ``calls`` calls of ``fn``."""
    sync(device)
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - started) / calls


# --------------------------------------------------------------------------- the usual way


class ExampleStyleImages(torch.utils.data.Dataset):
    """A per-sample data set as example code writes it: each item a PIL image turned into a
    tensor by ToTensor/Normalize-style transforms."""

    def __init__(self, data: Dataset, normalize: bool):
        self.images = data.images.numpy()  # (N, C, H, W) uint8
        self.labels = data.labels.numpy() if data.labels is not None else None
        self.normalize = normalize

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        array = self.images[i]
        image = Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))
        x = torch.from_numpy(np.array(image, dtype=np.uint8))  # "ToTensor"
        x = (x[None] if x.dim() == 2 else x.permute(2, 0, 1)).float().div(255)
        if self.normalize:  # "Normalize((0.5,), (0.5,))" to [-1, 1]
            x = (x - 0.5) / 0.5
        label = int(self.labels[i]) if self.labels is not None else 0
        return x, label


class UsualWay:
    """A model trained the way widespread PyTorch example code does it: a ``DataLoader`` over
    :class:`ExampleStyleImages` (``num_workers=0``, shuffled, batch 64), the optimisers'
    PyTorch defaults, no network frozen while another trains, and each loss read back with
    ``.item()`` at every update. Same networks, losses and schedule as gankit's model."""

    def __init__(
        self,
        config: RunConfig,
        data: Dataset,
        device: torch.device,
        batch_size: int = BASELINE_BATCH,
        seed: int = 0,
    ):
        torch.manual_seed(seed)
        mc = config.model
        self.model = build_model(mc).to(device).train()
        self.device = device
        self.phases = self.model.phases(reuse=False)
        self.optimizers = build_optimizers(self.model, self.phases, fast=False)
        self.loader = torch.utils.data.DataLoader(
            ExampleStyleImages(data, normalize=mc.data_range == "tanh"),
            batch_size=batch_size,
            shuffle=True,
            num_workers=0,
            drop_last=True,
        )
        self.batches = iter(self.loader)
        self.rng = torch.Generator(device).manual_seed(seed)
        self.history: list[float] = []
        self.steps = 0

    def _next(self):
        try:
            x, y = next(self.batches)
        except StopIteration:
            self.batches = iter(self.loader)
            x, y = next(self.batches)
        return x.to(self.device), y.to(self.device)

    def train_step(self) -> None:
        ctx = None
        for phase in self.phases:
            for i in range(phase.repeat):
                if ctx is None or phase.draw == "batch":
                    ctx = self.model.context(*self._next(), self.rng)
                elif phase.draw == "noise":
                    self.model.refresh_noise(ctx)
                ctx.index = self.steps * phase.repeat + i
                optimizer = self.optimizers[phase.optimizer]
                optimizer.zero_grad()
                loss, _ = phase.loss(ctx)
                loss.backward()
                optimizer.step()
                if phase.after_step is not None:
                    phase.after_step()
                self.history.append(loss.item())
        self.steps += 1


# --------------------------------------------------------------------------- per model


# Rows beyond the presets: the default DCGAN built for colour images, as NAME:CxS.
SHAPED_ROWS = ("dcgan:3x32", "dcgan:3x64")


def parse_model(spec: str) -> tuple[str, tuple[int, int] | None]:
    """``"dcgan"`` → ("dcgan", None); ``"dcgan:3x64"`` → ("dcgan", (3, 64)): the preset built
    for images of 3 channels and 64×64 (the data is resized and given 3 channels to match)."""
    name, _, shape = spec.partition(":")
    if not shape:
        return name, None
    channels, _, size = shape.lower().partition("x")
    if not (channels.isdigit() and size.isdigit()):
        raise ConfigError(f"--models {spec}: a shape is written CxS, e.g. dcgan:3x32")
    return name, (int(channels), int(size))


def preset_config(
    name: str, settings: Settings, data: str, shape: tuple[int, int] | None = None
) -> RunConfig:
    from gankit.api import configure

    sized = {} if shape is None else {"channels": shape[0], "image_size": shape[1]}
    config = configure(name, data=data, **sized)
    config.train.log_every = 10**9  # no log rows inside the timing
    if settings.max_batch:
        config.train.batch_size = min(config.train.batch_size, settings.max_batch)
    return config


def bench_model(name: str, data: Dataset, settings: Settings, peak: float) -> dict:
    """One model's row of the table (``name``: a preset, or ``PRESET:CxS``, see
    :func:`parse_model`; ``data`` already has the row's shape)."""
    preset, shape = parse_model(name)
    config = preset_config(preset, settings, data.source, shape)
    with PeakMemory() as memory, tempfile.TemporaryDirectory() as tmp:
        trainer = launch(
            config, out=Path(tmp) / "run", data=data, progress=False, tensorboard=False
        )
        device = trainer.device
        flops = step_flops(trainer)
        usual_batch = min(BASELINE_BATCH, settings.max_batch or BASELINE_BATCH, len(data))
        usual = UsualWay(config, data, device, usual_batch)
        usual_flops = step_flops(usual)
        seconds = median_seconds(
            {"gankit": trainer.train_step, "usual": usual.train_step}, settings, device
        )
        model, n = trainer.model, settings.sample_n
        gen = torch.Generator(device).manual_seed(0)
        sample = {"sample": lambda: model.sample(n, rng=gen)}
        sample_s = median_seconds(
            sample, Settings(repeats=3, repeat_seconds=0.0, warmup=1), device
        )["sample"]
        sample_gflop = sample_flops(model, 8) / 8 / 1e9
    images_per_step = trainer.batches_per_step * config.train.batch_size
    usual_images = sum(p.repeat for p in usual.phases if p.draw == "batch") * usual_batch
    ips = images_per_step / seconds["gankit"]
    usual_ips = usual_images / seconds["usual"]
    gflops = flops / 1e9 / seconds["gankit"]
    return {
        "model": name,
        "kind": "default" if preset in DEFAULT_NAMES else "reference",
        "image_shape": list(data.images.shape[1:]),
        "batch_size": config.train.batch_size,
        "ms_per_step": round(seconds["gankit"] * 1e3, 2),
        "images_per_s": round(ips, 1),
        "baseline_batch_size": usual_batch,
        "baseline_ms_per_step": round(seconds["usual"] * 1e3, 2),
        "baseline_images_per_s": round(usual_ips, 1),
        "speedup": round(ips / usual_ips, 2),
        "gflop_per_step": round(flops / 1e9, 3),
        "baseline_gflop_per_step": round(usual_flops / 1e9, 3),
        "gflops": round(gflops, 1),
        "gemm_peak_gflops": round(peak, 1),
        "peak_fraction": round(gflops / peak, 3),
        "sample_images_per_s": round(n / sample_s, 1),
        "sample_gflop_per_image": round(sample_gflop, 4),
        "peak_rss_mib": round(memory.mib, 1),
        "rss_scope": memory.scope,
    }


# --------------------------------------------------------------------------- evaluation


def bench_evaluation(data: str, settings: Settings, device: torch.device) -> dict:
    """Seconds to evaluate ``eval_n`` samples (of an untrained default DCGAN: the cost does not
    depend on what the images show) with every metric, memorisation included: once as a
    training run's repeated evaluations see it, and the first call of a process."""
    from gankit.evaluation import open_evaluation

    started = time.perf_counter()
    evaluation = open_evaluation(data, device=device, progress=False)
    setup = time.perf_counter() - started
    model = build_model(preset_config("dcgan", settings, data).model).to(device)
    images = model.sample(settings.eval_n, rng=torch.Generator(device).manual_seed(0))
    times = []
    for _ in range(2):  # the first also finds the reference's k-NN radii for this n
        started = time.perf_counter()
        evaluation(images)
        times.append(time.perf_counter() - started)
    return {
        "n": settings.eval_n,
        "seconds": round(times[1], 2),
        "first_call_seconds": round(times[0], 2),
        "open_seconds": round(setup, 2),
    }


# --------------------------------------------------------------------------- time to quality


def tutorial_dcgan(latent: int = 100) -> tuple[nn.Module, nn.Module]:
    """The DCGAN of the common Fashion-MNIST tutorials, in plain PyTorch: G z → fc 7·7·128 →
    BN/ReLU → 4×4 stride-2 transposed convs (64 with BN/ReLU, then 1) → tanh; D two 4×4
    stride-2 convs (64, 128) with LeakyReLU 0.2 and BN on the second → fc 1."""
    generator = nn.Sequential(
        nn.Linear(latent, 7 * 7 * 128, bias=False),
        nn.BatchNorm1d(7 * 7 * 128),
        nn.ReLU(),
        nn.Unflatten(1, (128, 7, 7)),
        nn.ConvTranspose2d(128, 64, 4, 2, 1, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.ConvTranspose2d(64, 1, 4, 2, 1),
        nn.Tanh(),
    )
    discriminator = nn.Sequential(
        nn.Conv2d(1, 64, 4, 2, 1),
        nn.LeakyReLU(0.2),
        nn.Conv2d(64, 128, 4, 2, 1, bias=False),
        nn.BatchNorm2d(128),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        nn.Linear(128 * 7 * 7, 1),
    )
    return generator, discriminator


def train_tutorial(
    images: torch.Tensor, seconds: float, seed: int = 0, latent: int = 100, batch_size: int = 128
) -> tuple[nn.Module, int]:
    """Train :func:`tutorial_dcgan` as tutorials do (data preloaded as floats in [-1, 1], a
    shuffled pass per epoch, BCE, Adam 2e-4 β (0.5, 0.999), the same G(z) for both updates,
    losses read each step) until ``seconds`` have passed; returns G and the step count."""
    torch.manual_seed(seed)
    generator, discriminator = tutorial_dcgan(latent)
    opt_g = torch.optim.Adam(generator.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(discriminator.parameters(), 2e-4, betas=(0.5, 0.999))
    x_all = images.float() / 127.5 - 1.0
    ones, zeros = torch.ones(batch_size, 1), torch.zeros(batch_size, 1)
    started, steps = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        for idx in torch.randperm(len(x_all)).split(batch_size):
            if len(idx) < batch_size or time.perf_counter() - started >= seconds:
                break
            real = x_all[idx]
            fake = generator(torch.randn(batch_size, latent))
            opt_d.zero_grad()
            loss_d = F.binary_cross_entropy_with_logits(
                discriminator(real), ones
            ) + F.binary_cross_entropy_with_logits(discriminator(fake.detach()), zeros)
            loss_d.backward()
            opt_d.step()
            opt_g.zero_grad()
            loss_g = F.binary_cross_entropy_with_logits(discriminator(fake), ones)
            loss_g.backward()
            opt_g.step()
            loss_d.item(), loss_g.item()
            steps += 1
    return generator.eval(), steps


def interpreter_start_seconds() -> float:
    """Seconds a fresh Python takes to import torch and gankit's trainer (part of a user's
    start-up, which an in-process measurement would not see)."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", "import gankit.training"], check=True, capture_output=True
    )
    return time.perf_counter() - started


def time_to_quality(data_name: str, settings: Settings, device: torch.device) -> dict:
    """gankit's default DCGAN and the tutorial DCGAN, each for the same wall-clock budget
    (interpreter start, data loading and set-up included; evaluations excluded), scored on
    the same 10,000-sample evaluation; plus when gankit's DCGAN first matched the tutorial's
    final FID and one fifth of it (on its ``ttq_eval_n``-sample evaluations)."""
    from gankit.evaluation import open_evaluation
    from gankit.evaluation.during_training import PeriodicEvaluation

    budget = settings.ttq_seconds
    evaluation = open_evaluation(data_name, device=device, progress=False)
    start_up = interpreter_start_seconds()
    eval_gen = torch.Generator(device).manual_seed(0)

    # the tutorial: plain PyTorch, data preloaded
    started = time.perf_counter()
    images = load_dataset(data_name, "train").images
    generator, tutorial_steps = train_tutorial(
        images, budget - start_up - (time.perf_counter() - started)
    )
    with torch.inference_mode():
        z = torch.randn(settings.eval_n, 100, generator=eval_gen)
        fake = to_uint8(generator(z))
    tutorial = _scores(evaluation(fake, memorisation=False)) | {"steps": tutorial_steps}

    # gankit's default, through the ordinary trainer
    config = preset_config("dcgan", Settings(), data_name)
    config.train.log_every = 50
    config.train.steps = 10**9
    config.train.eval_every = settings.ttq_eval_every
    config.train.eval_samples = settings.ttq_eval_n
    curve: list[tuple[float, float]] = []  # (wall seconds without evaluations, FID)

    def on_row(row: dict) -> None:
        if "eval/fid" in row:
            now = time.perf_counter() - started - trainer.callback(PeriodicEvaluation).seconds
            curve.append((start_up + now, row["eval/fid"]))

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        trainer = launch(
            config,
            out=Path(tmp) / "run",
            progress=False,
            tensorboard=False,
            evaluation=evaluation,
            callbacks=[on_row],
        )
        trainer.config.train.max_seconds = budget - start_up - (time.perf_counter() - started)
        result = trainer.fit()
        images = trainer.model.sample(settings.eval_n, rng=eval_gen)
    ours = _scores(evaluation(images, memorisation=False)) | {"steps": result.step}

    def first_below(target: float) -> float | None:
        hits = [t for t, fid in curve if fid <= target]
        return round(hits[0], 1) if hits else None

    return {
        "budget_s": budget,
        "start_up_s": round(start_up, 2),
        "n": settings.eval_n,
        "tutorial": tutorial,
        "gankit": ours,
        "fid_ratio": round(ours["fid"] / tutorial["fid"], 3),
        "seconds_to_tutorial_fid": first_below(tutorial["fid"]),
        "seconds_to_fifth_tutorial_fid": first_below(tutorial["fid"] / 5),
        "curve": [(round(t, 1), round(f, 2)) for t, f in curve],
    }


def _scores(values: dict) -> dict:
    return {
        k: round(float(values[k]), 4)
        for k in ("fid", "precision", "recall", "classes_covered", "coverage")
    }


# --------------------------------------------------------------------------- the whole bench


def resolve_models(spec: str | None) -> list[str]:
    """``--models a,b`` (or every default and reference preset, then :data:`SHAPED_ROWS`),
    checked against the names; ``NAME:CxS`` builds a preset for another image shape."""
    if not spec:
        return preset_names() + list(SHAPED_ROWS)
    names = [n.strip() for n in spec.split(",") if n.strip()]
    known = preset_names()
    unknown = [n for n in names if parse_model(n)[0] not in known]
    if unknown:
        raise ConfigError(f"--models: unknown {', '.join(unknown)}; known: {', '.join(known)}")
    return names


def run_bench(
    models: list[str],
    data: str = "fashion-mnist",
    settings: Settings | None = None,
    threads: int = 0,
    evaluation: bool = True,
    ttq: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Measure ``models`` (throughput, baseline, FLOPs, peak share, sampling, memory), then
    the evaluation time and time-to-quality; returns the report (see :func:`format_bench`)."""
    settings = settings or Settings()
    configure_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report: dict = {"machine": machine(), "settings": vars(settings).copy()}
    peak = gemm_peak_gflops(device, seconds=0.05 if settings.max_batch else 0.3)
    report["gemm_peak_gflops"] = round(peak, 1)
    log(
        f"GEMM peak {peak:.0f} GFLOP/s on {report['machine']['cpu']}, "
        f"{report['machine']['threads']} threads"
    )
    datasets: dict[tuple[int, int] | None, Dataset] = {}
    report["rows"] = []
    for name in models:
        shape = parse_model(name)[1]
        if shape not in datasets:  # the data in the row's shape: resized, 1 or 3 channels
            sized = {} if shape is None else {"channels": shape[0], "image_size": shape[1]}
            datasets[shape] = load_dataset(data, "train", **sized)
        row = bench_model(name, datasets[shape], settings, peak)
        report["rows"].append(row)
        log(
            f"{name}: {row['images_per_s']:.0f} images/s ({row['speedup']:.1f}× the usual way)"
            f", {100 * row['peak_fraction']:.0f}% of GEMM peak"
        )
    if evaluation:
        report["evaluation"] = bench_evaluation(data, settings, device)
    if ttq and settings.ttq_seconds > 0:
        log(f"time to quality: two runs of {settings.ttq_seconds:.0f} s …")
        report["time_to_quality"] = time_to_quality(data, settings, device)
    return report


COLUMNS = [
    ("model", "model"),
    ("batch_size", "batch"),
    ("ms_per_step", "ms/step"),
    ("images_per_s", "images/s"),
    ("baseline_images_per_s", "usual way images/s"),
    ("speedup", "speed-up"),
    ("gflop_per_step", "GFLOP/step"),
    ("gflops", "GFLOP/s"),
    ("peak_fraction", "% GEMM peak"),
    ("sample_images_per_s", "samples/s"),
    ("peak_rss_mib", "peak RSS MiB"),
]


def format_bench(report: dict) -> str:
    """The report as Markdown: machine, one row per model, evaluation, time-to-quality."""
    m = report["machine"]
    lines = [
        f"gankit {m['gankit']}, torch {m['torch']}, Python {m['python']} on {m['cpu']} "
        f"({m['cores']} cores, {m['threads']} threads"
        + (f", {m['gpu']}" if "gpu" in m else "")
        + f"); GEMM peak "
        f"{report['gemm_peak_gflops']:.0f} GFLOP/s",
        "",
    ]
    lines.append("| " + " | ".join(title for _, title in COLUMNS) + " |")
    lines.append("|" + "|".join("---" if k == "model" else "---:" for k, _ in COLUMNS) + "|")
    for row in report["rows"]:
        cells = []
        for key, _ in COLUMNS:
            value = row[key]
            if key == "peak_fraction":
                cells.append(f"{100 * value:.0f}%")
            elif key == "speedup":
                cells.append(f"{value:.1f}×")
            elif isinstance(value, float):
                cells.append(f"{value:,.0f}" if value >= 100 else f"{value:.3g}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    batch = report["rows"][0]["baseline_batch_size"] if report["rows"] else BASELINE_BATCH
    lines.append(
        f"usual way: a per-sample DataLoader with ToTensor/Normalize-style transforms, "
        f"batch {batch}, PyTorch's default optimisers, .item() per update."
    )
    if "evaluation" in report:
        ev = report["evaluation"]
        lines.append(
            f"evaluation of {ev['n']:,} samples, every metric: {ev['seconds']:.2f} s "
            f"({ev['first_call_seconds']:.2f} s for a process's first)"
        )
    if "time_to_quality" in report:
        lines += ["", *_format_ttq(report["time_to_quality"])]
    return "\n".join(lines)


def _format_ttq(t: dict) -> list[str]:
    rows = [
        "| run | steps | FID | precision | recall | classes | coverage |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, key in (
        ("tutorial DCGAN (plain PyTorch)", "tutorial"),
        ("gankit dcgan (default)", "gankit"),
    ):
        r = t[key]
        rows.append(
            f"| {name} | {r['steps']} | {r['fid']:.1f} | {r['precision']:.2f} | "
            f"{r['recall']:.2f} | {int(r['classes_covered'])} | {r['coverage']:.2f} |"
        )

    def when(value):
        return f"{value:.0f} s" if value is not None else "not within the budget"

    return [
        f"time to quality: {t['budget_s']:.0f} s of wall time each, start-up included "
        f"({t['start_up_s']:.1f} s interpreter start); {t['n']:,} samples scored",
        "",
        *rows,
        "",
        f"gankit/tutorial FID: {t['fid_ratio']:.2f}; gankit reached the tutorial's final FID"
        f" after {when(t['seconds_to_tutorial_fid'])}, a fifth of it after "
        f"{when(t['seconds_to_fifth_tutorial_fid'])}",
    ]


def write_json(report: dict, path: str | Path) -> Path:
    return write_text(path, json.dumps(report, indent=2) + "\n")
