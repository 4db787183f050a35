"""Optimisers from their configs, one per phase key."""

from __future__ import annotations

from collections.abc import Callable

import torch

from gankit.config import OptimConfig
from gankit.errors import ConfigError
from gankit.models import GenerativeModel, Phase


def _fused(fast: bool) -> dict:
    return {"fused": True} if fast else {}  # else PyTorch's own choice


# name -> (params, config, fast) -> optimiser. ``fast``: PyTorch's fused kernels (Adam, AdamW,
# SGD) or its multi-tensor ``foreach`` path (RMSprop); else PyTorch's plain defaults.
OPTIMIZERS: dict[str, Callable[[list, OptimConfig, bool], torch.optim.Optimizer]] = {
    "adam": lambda params, c, fast: torch.optim.Adam(
        params, c.lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay, **_fused(fast)
    ),
    "adamw": lambda params, c, fast: torch.optim.AdamW(
        params, c.lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay, **_fused(fast)
    ),
    "rmsprop": lambda params, c, fast: torch.optim.RMSprop(
        params,
        c.lr,
        alpha=c.alpha,
        eps=c.eps,
        weight_decay=c.weight_decay,
        momentum=c.momentum,
        foreach=True if fast else None,
    ),
    "sgd": lambda params, c, fast: torch.optim.SGD(
        params, c.lr, momentum=c.momentum, weight_decay=c.weight_decay, **_fused(fast)
    ),
}


def make_optimizer(c: OptimConfig, params: list, fast: bool = True) -> torch.optim.Optimizer:
    """The optimiser ``c`` describes (one of :data:`OPTIMIZERS`)."""
    if c.name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimiser {c.name!r}: use {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[c.name](params, c, fast)


def build_optimizers(
    model: GenerativeModel, phases: list[Phase], fast: bool = True
) -> dict[str, torch.optim.Optimizer]:
    """One optimiser per key in the phases ("g", "d"), over the networks those phases train."""
    nets: dict[str, list[str]] = {}
    for phase in phases:
        nets.setdefault(phase.optimizer, [])
        nets[phase.optimizer] += [n for n in phase.nets if n not in nets[phase.optimizer]]
    configs = {"g": model.config.opt_g, "d": model.config.opt_d}
    return {
        key: make_optimizer(
            configs[key], [p for n in names for p in model.nets[n].parameters()], fast
        )
        for key, names in nets.items()
    }


def match_memory_format(optimizer: torch.optim.Optimizer) -> None:
    """Give each loaded optimiser state tensor its parameter's memory layout: a checkpoint
    stores them contiguous, and fused kernels assume the layouts agree."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if (
                    isinstance(value, torch.Tensor)
                    and value.shape == p.shape
                    and value.stride() != p.stride()
                ):
                    state[key] = torch.empty_like(p).copy_(value)
