"""Surviving faults: SIGKILL + --resume, bad checkpoints, non-finite losses."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from run_logs import TIMING, history as _history, strip_timing as _strip  # noqa: F401

from tcl_fast.cli import main
from tcl_fast.training import trainer
from tcl_fast.training.checkpoint import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["--limit-batches", "3", "--batch-size", "16", "--no-progress", "--backend", "cpp"]


# A real `tcl-fast train` process that announces (via a marker file) when it is inside
# epoch 2 and then stalls there, so the parent's SIGKILL lands mid-epoch, deterministically.
_KILLED_RUN = textwrap.dedent("""
    import sys, time, torch
    torch.set_num_threads(int(sys.argv[1]))
    from tcl_fast.training import trainer
    from tcl_fast.cli import main
    real, calls, marker = trainer._forward, [0], sys.argv[2]
    def stall_in_epoch_2(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 5:  # epoch 2, step 2 (3 steps per epoch)
            open(marker, "w").close()
            time.sleep(120)
        return real(*args, **kwargs)
    trainer._forward = stall_in_epoch_2
    sys.exit(main(["train", *sys.argv[3:]]))
""")


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path):
    straight = str(tmp_path / "straight")
    assert main(["train", "--out", straight, "--epochs", "3", *QUICK]) == 0
    out, marker = str(tmp_path / "killed"), str(tmp_path / "in_epoch_2")
    script = tmp_path / "killed_run.py"
    script.write_text(_KILLED_RUN)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    p = subprocess.Popen([sys.executable, str(script), str(torch.get_num_threads()), marker,
                          "--out", out, "--epochs", "3", *QUICK], env=env, cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(marker):
            assert p.poll() is None, f"training exited early: {p.communicate()[1][-3000:]}"
            assert time.monotonic() < deadline, "training never reached epoch 2"
            time.sleep(0.05)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == -signal.SIGKILL
    assert load_checkpoint(out)["epoch"] == 1  # the last complete checkpoint survived
    assert not [f for f in os.listdir(out) if ".tmp" in f]
    assert main(["train", "--resume", out, "--no-progress"]) == 0
    # Same seed, same thread count, every RNG restored: identical metrics and weights.
    assert [r["epoch"] for r in _history(out)] == [1, 2, 3]
    assert _strip(_history(out)) == _strip(_history(straight))
    a, b = load_checkpoint(out), load_checkpoint(straight)
    for k in b["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)


# Its tests share a module-scoped training run (good_run): under `--dist loadgroup` one worker
# runs the whole module, so the run is made once.
pytestmark = pytest.mark.xdist_group("test_faults")


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("good") / "run")
    assert main(["train", "--out", out, "--epochs", "1", *QUICK]) == 0
    return out


def test_truncated_checkpoint_is_refused(good_run, tmp_path, capsys):
    import shutil

    run = str(tmp_path / "run")
    shutil.copytree(good_run, run)
    ckpt = os.path.join(run, "checkpoint.pt")
    data = open(ckpt, "rb").read()
    with open(ckpt, "wb") as f:
        f.write(data[: len(data) // 2])
    for argv in (["train", "--resume", run], ["eval", "--checkpoint", run]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "is not a readable tcl_fast checkpoint" in err
        assert "Traceback" not in err


def test_checkpoint_of_another_model_is_refused_before_loading(good_run, tmp_path, capsys, monkeypatch):
    state = load_checkpoint(good_run)
    # The run's own config, but weights of a different network (as if the file were swapped).
    other = trainer.build_for_config(trainer.TrainConfig(proj_dim=8), 10, 1).state_dict()
    foreign = str(tmp_path / "foreign.pt")
    save_checkpoint({**state, "model": other}, foreign)
    loads = []
    real_load = torch.nn.Module.load_state_dict
    monkeypatch.setattr(torch.nn.Module, "load_state_dict",
                        lambda self, *a, **k: loads.append(type(self).__name__) or real_load(self, *a, **k))
    for argv in (["train", "--resume", foreign, "--out", str(tmp_path / "r")], ["eval", "--checkpoint", foreign]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "from another model" in err and "wrong shape" in err
        assert "nothing was loaded" in err
    assert loads == []  # refused before any weights were copied into a model
    assert not (tmp_path / "r").exists()


def _nan_at(call: int, monkeypatch):
    """Make the loss NaN at the given training step (counted from 1 over the whole run)."""
    real, calls = trainer._forward, {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss, parts, logits = real(*args, **kwargs)
        if calls["n"] == call:
            loss = loss * float("nan")
        return loss, parts, logits

    monkeypatch.setattr(trainer, "_forward", poisoned)


def test_nonfinite_loss_stops_naming_epoch_and_step(tmp_path, monkeypatch, capsys):
    _nan_at(5, monkeypatch)  # epoch 2, step 2
    out = str(tmp_path / "r")
    assert main(["train", "--out", out, "--epochs", "2", *QUICK]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: loss became nan in epoch 2, step 2") and "--skip-nonfinite" in err
    assert "Traceback" not in err
    assert load_checkpoint(out)["epoch"] == 1  # the good epoch stays resumable


def test_skip_nonfinite_skips_and_counts_the_step(tmp_path, monkeypatch):
    out = str(tmp_path / "r")
    clean = str(tmp_path / "clean")
    assert main(["train", "--out", clean, "--epochs", "1", *QUICK]) == 0
    _nan_at(2, monkeypatch)
    assert main(["train", "--out", out, "--epochs", "1", "--skip-nonfinite", *QUICK]) == 0
    row, ref = _history(out)[0], _history(clean)[0]
    assert row["skipped_steps"] == 1 and ref["skipped_steps"] == 0
    assert all(v == v for v in row.values())  # nothing NaN reached the logged metrics
    assert row["train_loss"] != ref["train_loss"]  # the poisoned step left the metrics
    for v in load_checkpoint(out)["model"].values():
        assert torch.isfinite(v.float()).all()  # nor the weights


def test_checkpoint_is_fsynced_before_the_rename(tmp_path, monkeypatch):
    from tcl_fast.training import checkpoint

    path = str(tmp_path / "checkpoint.pt")
    save_checkpoint({"epoch": 1}, path)
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        # The new file is complete on disk while the old checkpoint is still in place.
        events.append(("fsync", torch.load(path, weights_only=True)["epoch"]))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.getsize(src) > 0))
        return real_replace(src, dst)

    monkeypatch.setattr(checkpoint.os, "fsync", fsync)
    monkeypatch.setattr(checkpoint.os, "replace", replace)
    save_checkpoint({"epoch": 2}, path)
    assert events[:2] == [("fsync", 1), ("replace", True)]
    assert torch.load(path, weights_only=True)["epoch"] == 2
