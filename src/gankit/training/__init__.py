"""Training: the loop and its callbacks, batches, optimisers, the guards that keep a run
healthy and stoppable, and the machine it runs on (device, threads, processes)."""

from gankit.training.batches import Batches
from gankit.training.callbacks import Callback
from gankit.training.environment import (
    configure_threads,
    derive_seed,
    resolve_device,
    seed_everything,
)
from gankit.training.guards import TrainingDiverged
from gankit.training.loop import FitResult, Trainer, fit_prior, prior_images, uses_convolutions
from gankit.training.optim import build_optimizers, make_optimizer

__all__ = [
    "Batches",
    "Callback",
    "FitResult",
    "Trainer",
    "TrainingDiverged",
    "build_optimizers",
    "configure_threads",
    "derive_seed",
    "fit_prior",
    "make_optimizer",
    "prior_images",
    "resolve_device",
    "seed_everything",
    "uses_convolutions",
]
