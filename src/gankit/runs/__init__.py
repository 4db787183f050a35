"""Run folders, their one owner: where a new run goes and its lock, the metrics log, the
checkpoints, and loading a finished (or stopped) run to use it.

A run folder holds ``config.toml``, ``metrics.jsonl``, ``tensorboard/``, ``real.png``,
``samples/step-N.png`` (from one fixed noise batch), ``reconstructions/`` for models with
an encoder, ``checkpoints/step-N.safetensors``, ``status.json`` and ``report.html``.
"""

from gankit.runs.folder import (
    RUN_EVALUATOR,
    RUN_FIGURES,
    RUN_LOCK,
    Run,
    check_writable,
    claim_run_dir,
    discard_claim,
    discard_empty_run,
    holds_run,
    load_run,
    lock_run,
    new_run_dir,
    prepare_run_dir,
    take_claim,
)
from gankit.runs.metrics_log import MetricsLog, read_metrics
from gankit.runs.status import read_status, write_status

__all__ = [
    "RUN_EVALUATOR",
    "RUN_FIGURES",
    "RUN_LOCK",
    "MetricsLog",
    "Run",
    "check_writable",
    "claim_run_dir",
    "discard_claim",
    "discard_empty_run",
    "holds_run",
    "load_run",
    "lock_run",
    "new_run_dir",
    "prepare_run_dir",
    "read_metrics",
    "read_status",
    "take_claim",
    "write_status",
]
