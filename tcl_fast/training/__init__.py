"""Training loop, evaluation and run comparison for tcl_fast SNNs.

Names are imported on first use, so ``tcl_fast.training.config`` (all the CLI
needs to parse its arguments) loads without torch.
"""
from __future__ import annotations

from tcl_fast._lazy import lazy_names

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

__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())
