"""Floating-point operations of a training step, counted from the operand shapes.

Every matrix multiply and convolution that runs (forward, backward and double backward, as
in a gradient penalty) is counted from its shapes with PyTorch's own formulas, 2 FLOPs per
multiply-add; element-wise work (activations, batch norm, the optimiser) is not, which is what
a comparison with the machine's GEMM peak wants.

PyTorch's ``FlopCounterMode`` does the same but also tracks modules with backward hooks, which
``torch.autograd.grad`` (the gradient penalty) refuses; this counter keeps one total instead.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry


class _Counter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        formula = flop_registry.get(func._overloadpacket)
        if formula is None and func is not torch.ops.prim.device.default:
            with self:  # a composite op: count the ops it is made of
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        if formula is not None:
            self.total += int(formula(*args, **kwargs, out_val=out))
        return out


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of the matrix multiplies and convolutions that ``fn()`` runs."""
    with _Counter() as counter:
        fn()
    return counter.total


def step_flops(trainer) -> int:
    """FLOPs of one training step of a :class:`gankit.training.loop.Trainer` (every phase, forward
    and backward). The step really runs: use a trainer you can spare."""
    return count_flops(trainer.train_step)


def sample_flops(model, n: int = 1) -> int:
    """FLOPs of generating ``n`` images (the generator's forward pass, in eval mode)."""
    z = model.sample_latent(n)
    y = model.sample_labels(n)
    with torch.inference_mode(), model.evaluating():
        return count_flops(lambda: model.decode(z, y))
