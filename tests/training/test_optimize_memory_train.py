"""`tcl-fast train --optimize-memory`: the same run as without it, bit for bit, in
one process, resumed, and on 2 gloo ranks under torchrun (one gradient
all-reduce per step: the checkpointed blocks' recompute adds no reduction, or
the weights would differ)."""
from __future__ import annotations

import pytest
import torch

from run_logs import history, strip_timing
from tcl_fast.cli import main
from tcl_fast.training.checkpoint import load_checkpoint
from test_distributed_train import QUICK as DDP_QUICK
from test_distributed_train import _two_ranks

QUICK = ["--limit-batches", "3", "--batch-size", "16", "--no-progress", "--backend", "cpp"]


def _same_weights(a_dir, b_dir):
    a, b = load_checkpoint(str(a_dir))["model"], load_checkpoint(str(b_dir))["model"]
    assert list(a) == list(b)
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=f"{k} differs")


def test_option_changes_nothing_but_memory_and_resumes_exactly(tmp_path):
    plain, straight, resumed = tmp_path / "plain", tmp_path / "straight", tmp_path / "resumed"
    assert main(["train", "--out", str(plain), "--epochs", "2", *QUICK]) == 0
    assert main(["train", "--out", str(straight), "--epochs", "2", "--optimize-memory", *QUICK]) == 0
    assert load_checkpoint(str(straight))["config"]["optimize_memory"] is True
    assert strip_timing(history(straight)) == strip_timing(history(plain))
    _same_weights(straight, plain)
    assert main(["train", "--out", str(resumed), "--epochs", "1", "--optimize-memory", *QUICK]) == 0
    assert main(["train", "--resume", str(resumed), "--epochs", "2", "--no-progress"]) == 0
    assert load_checkpoint(str(resumed))["config"]["optimize_memory"] is True
    assert strip_timing(history(resumed)) == strip_timing(history(straight))
    _same_weights(resumed, straight)


@pytest.mark.xdist_group("ddp_tcl_run")
def test_two_ranks_equal_two_ranks_without_it(ddp_tcl_run, tmp_path):
    # The plain side is the shared 2-rank run of the same command (conftest.py), not a second copy of it.
    plain, r = ddp_tcl_run
    assert r.returncode == 0, r.stderr[-4000:]
    runs = {"plain": plain}
    out = tmp_path / "opt"
    r = _two_ranks(["tcl_fast.train", "--out", str(out), *DDP_QUICK, "--optimize-memory"])
    assert r.returncode == 0, r.stderr[-4000:]
    runs["opt"] = out
    assert strip_timing(history(runs["opt"])) == strip_timing(history(runs["plain"]))
    _same_weights(runs["opt"], runs["plain"])
