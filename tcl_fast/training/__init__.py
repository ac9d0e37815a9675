"""Training loop, evaluation and run comparison for tcl_fast SNNs.

Names are imported on first use, so ``tcl_fast.training.config`` (all the CLI
needs to parse its arguments) loads without torch.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "TrainConfig": "tcl_fast.training.config",
    "UserError": "tcl_fast.training.config",
    "evaluate_latency": "tcl_fast.training.evaluation",
    "format_table": "tcl_fast.training.evaluation",
    "plot_latency": "tcl_fast.training.evaluation",
    "RunResult": "tcl_fast.training.trainer",
    "compare_runs": "tcl_fast.training.trainer",
    "evaluate_checkpoint": "tcl_fast.training.trainer",
    "train": "tcl_fast.training.trainer",
}
__all__ = list(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tcl_fast.training' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
