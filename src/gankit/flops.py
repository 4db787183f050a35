"""Floating-point operations of a training step, counted from the layer shapes.

PyTorch's ``FlopCounterMode`` counts the matrix multiplies and convolutions that run
(forward and backward, 2 FLOPs per multiply-add) from their shapes; element-wise work
(activations, batch norm, the optimiser) is not counted, which is what a comparison with the
machine's GEMM peak wants.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matrix multiplies and convolutions that ``fn()`` runs."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def step_flops(trainer) -> int:
    """FLOPs of one training step of a :class:`gankit.train.Trainer` (every phase, forward
    and backward). The step really runs: use a trainer you can spare."""
    return count_flops(trainer.train_step)


def sample_flops(model, n: int = 1) -> int:
    """FLOPs of generating ``n`` images (the generator's forward pass)."""
    z = model.sample_latent(n)
    y = model.sample_labels(n)
    with torch.inference_mode():
        return count_flops(lambda: model.decode(z, y))
