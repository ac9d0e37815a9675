"""Training loop, evaluation and run comparison for tcl_fast SNNs."""
from __future__ import annotations

from tcl_fast.training.config import TrainConfig, UserError
from tcl_fast.training.evaluation import evaluate_latency, format_table, plot_latency
from tcl_fast.training.trainer import RunResult, compare_runs, evaluate_checkpoint, train

__all__ = ["TrainConfig", "UserError", "RunResult", "train", "evaluate_checkpoint", "compare_runs",
           "evaluate_latency", "format_table", "plot_latency"]
