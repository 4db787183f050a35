"""Training: the loop, its batches, optimisers, the machine it runs on (device, threads,
processes) and the guards that keep a run healthy."""

from gankit.training.batches import Batches
from gankit.training.environment import (
    configure_threads,
    derive_seed,
    resolve_device,
    seed_everything,
)
from gankit.training.loop import (
    Callback,
    FitResult,
    Trainer,
    TrainingDiverged,
    resume_trainer,
    uses_convolutions,
)
from gankit.training.optim import build_optimizers, make_optimizer

__all__ = ["Batches", "Callback", "FitResult", "Trainer", "TrainingDiverged", "build_optimizers",
           "configure_threads", "derive_seed", "make_optimizer", "resolve_device",
           "resume_trainer", "seed_everything", "uses_convolutions"]
