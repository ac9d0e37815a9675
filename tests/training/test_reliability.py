"""No silent failure: non-finite gradients, corrupt checkpoints, shared run folders,
log columns, worker-count-independent data, stale temp files."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import torch

from run_logs import TIMING, history as _history, strip_timing as _strip  # noqa: F401

from tcl_fast.cli import main
from tcl_fast.training import trainer
from tcl_fast.training.checkpoint import HASH_KEY, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[2]
QUICK = ["--limit-batches", "3", "--batch-size", "16", "--no-progress", "--backend", "torch"]


def _all_finite(tree):
    return all(torch.isfinite(v.float()).all() for v in tree.values() if v.is_floating_point())


# Its tests share a module-scoped training run (good_run): under `--dist loadgroup` one worker
# runs the whole module, so the run is made once.
pytestmark = pytest.mark.xdist_group("test_reliability")


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("good") / "run")
    assert main(["train", "--out", out, "--epochs", "1", *QUICK]) == 0
    return out


def _copy(run, tmp_path, name="run"):
    dst = str(tmp_path / name)
    shutil.copytree(run, dst)
    return dst


# --- 1. non-finite gradients ------------------------------------------------------------------
def _nan_pixel_at(call, monkeypatch):
    """One NaN input pixel at the given step: spikes stay 0/1 so the loss stays finite,
    but the gradients are NaN."""
    real, calls = trainer._forward, {"n": 0}

    def poisoned(model, objective, x, y, T):
        calls["n"] += 1
        if calls["n"] == call:
            x = x.clone()
            x.view(-1)[0] = float("nan")
        return real(model, objective, x, y, T)

    monkeypatch.setattr(trainer, "_forward", poisoned)


def test_nan_gradient_with_finite_loss_stops_naming_epoch_and_step(tmp_path, monkeypatch, capsys):
    _nan_pixel_at(5, monkeypatch)  # epoch 2, step 2 (3 steps per epoch)
    out = str(tmp_path / "r")
    assert main(["train", "--out", out, "--epochs", "3", *QUICK]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: a gradient became NaN/inf (the loss was finite) in epoch 2, step 2"), err
    assert "Traceback" not in err and err.count("\n") == 1
    state = load_checkpoint(out)
    assert state["epoch"] == 1 and _all_finite(state["model"])  # the good epoch stays resumable


def test_nan_gradient_is_skipped_with_skip_nonfinite(tmp_path, monkeypatch):
    _nan_pixel_at(2, monkeypatch)
    out = str(tmp_path / "r")
    assert main(["train", "--out", out, "--epochs", "2", "--skip-nonfinite", *QUICK]) == 0
    assert [r["skipped_steps"] for r in _history(out)] == [1, 0]
    assert all(v == v for r in _history(out) for v in r.values())
    assert _all_finite(load_checkpoint(out)["model"])  # weights and BN running statistics


def test_resume_refuses_a_checkpoint_with_nan_weights(good_run, tmp_path, capsys):
    run = _copy(good_run, tmp_path)
    state = load_checkpoint(run)
    name = next(k for k in state["model"] if k.startswith("stem") and k.endswith("weight"))
    state["model"][name].view(-1)[0] = float("nan")
    save_checkpoint(state, os.path.join(run, "checkpoint.pt"))
    for argv in (["train", "--resume", run, "--epochs", "5"], ["eval", "--checkpoint", run]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "NaN/inf" in err and f"model.{name}" in err, err
    assert load_checkpoint(run)["epoch"] == 1


def test_resume_refuses_nan_optimizer_state(good_run, tmp_path, capsys):
    run = _copy(good_run, tmp_path)
    state = load_checkpoint(run)
    first = next(iter(state["optimizer"]["state"].values()))
    first["exp_avg"].view(-1)[0] = float("inf")
    save_checkpoint(state, os.path.join(run, "checkpoint.pt"))
    assert main(["train", "--resume", run, "--epochs", "2"]) == 2
    assert "NaN/inf values in optimizer.state." in capsys.readouterr().err


def test_nonfinite_flag():
    loss, g = torch.tensor(1.0), [torch.ones(3), torch.zeros(2, 2)]
    assert not bool(trainer.nonfinite_flag(loss, g))
    assert bool(trainer.nonfinite_flag(loss, [g[0], torch.tensor([0.0, float("nan")])]))
    assert bool(trainer.nonfinite_flag(loss, [torch.tensor([float("-inf")])]))
    assert bool(trainer.nonfinite_flag(torch.tensor(float("inf")), g))
    assert not bool(trainer.nonfinite_flag(loss, [torch.full((4,), 1e30)]))  # large is not infinite
    assert bool(trainer.nonfinite_flag(loss, [torch.tensor([float("inf"), float("-inf")])]))


# --- 2. checkpoint integrity ------------------------------------------------------------------
def _flip_bytes_inside_largest_tensor(path, n=50):
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(open(path, "rb").read())
    name_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    for i in range(start, start + n):
        data[i] ^= 0x5A
    open(path, "wb").write(bytes(data))


def test_flipped_bytes_in_a_tensor_are_refused(good_run, tmp_path, capsys):
    run = _copy(good_run, tmp_path)
    _flip_bytes_inside_largest_tensor(os.path.join(run, "checkpoint.pt"))
    for argv in (["train", "--resume", run, "--epochs", "2"], ["eval", "--checkpoint", run]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "is corrupt" in err and "SHA-256" in err, err
        assert "Traceback" not in err and err.count("\n") == 1
    assert len(_history(run)) == 1


def test_checkpoint_without_a_hash_loads_with_a_warning(good_run, tmp_path):
    state = load_checkpoint(good_run)
    del state[HASH_KEY]
    old = str(tmp_path / "old.pt")
    torch.save(state, old)
    with pytest.warns(UserWarning, match="no content hash"):
        assert load_checkpoint(old)["epoch"] == 1


# --- 3. one run per folder --------------------------------------------------------------------
# A training process that stalls in epoch 1 until the parent lets it go.
_HELD_RUN = textwrap.dedent("""
    import os, sys, time
    from tcl_fast.training import trainer
    from tcl_fast.cli import main
    real, calls, marker, release = trainer._forward, [0], sys.argv[1], sys.argv[2]
    def hold(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            open(marker, "w").close()
            while not os.path.exists(release):
                time.sleep(0.05)
        return real(*args, **kwargs)
    trainer._forward = hold
    sys.exit(main(["train", *sys.argv[3:]]))
""")


# `tcl-fast ARGS`, then a line saying whether torch was imported.
_MAIN_SAYING_IF_TORCH_LOADED = textwrap.dedent("""
    import sys
    from tcl_fast.cli import main
    code = main(sys.argv[1:])
    print("torch imported" if "torch" in sys.modules else "torch not imported")
    sys.exit(code)
""")


def _cli(args, **kw):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300, **kw)


def test_second_run_on_a_busy_folder_exits_2_and_the_first_finishes_intact(tmp_path):
    out, marker, release = str(tmp_path / "run"), str(tmp_path / "inside"), str(tmp_path / "go")
    script = tmp_path / "held.py"
    script.write_text(_HELD_RUN)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    first = subprocess.Popen([sys.executable, str(script), marker, release, "--out", out, "--epochs", "2", *QUICK],
                             env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(marker):
            assert first.poll() is None, first.communicate()[1][-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for argv in (["--out", out, "--overwrite", *QUICK], ["--resume", out, "--no-progress"]):
            r = _cli(["-c", _MAIN_SAYING_IF_TORCH_LOADED, "train", *argv])
            assert r.returncode == 2, r.stderr[-3000:]
            assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
            assert repr(out) in r.stderr and f"process {first.pid}" in r.stderr, r.stderr
            assert r.stdout == "torch not imported\n"  # refused at once, before seconds of imports
        open(release, "w").close()
        assert first.wait(timeout=300) == 0, first.communicate()[1][-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert [r["epoch"] for r in _history(out)] == [1, 2]
    with open(os.path.join(out, "metrics.csv")) as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["1", "2"]
    assert load_checkpoint(out)["epoch"] == 2
    # The lock died with its process: the folder can be resumed now.
    assert main(["train", "--resume", out, "--epochs", "3", "--no-progress"]) == 0


# --- 5. log columns ---------------------------------------------------------------------------
COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "skipped_steps",
           "train_time_s", "samples_per_s", "images_per_s"]


def test_every_documented_column_is_in_the_log_and_the_csv(good_run):
    assert list(trainer.LOG_COLUMNS) == COLUMNS
    for row in _history(good_run):
        assert set(COLUMNS) <= set(row), set(COLUMNS) - set(row)
        assert row["train_time_s"] > 0 and row["samples_per_s"] > 0
    with open(os.path.join(good_run, "metrics.csv")) as f:
        header = next(csv.reader(f))
    assert set(COLUMNS) <= set(header), set(COLUMNS) - set(header)


# --- 6. --workers on resume -------------------------------------------------------------------
def test_resume_with_another_worker_count_is_exact(tmp_path):
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    assert main(["train", "--out", straight, "--epochs", "2", *QUICK]) == 0
    assert main(["train", "--out", resumed, "--epochs", "1", *QUICK]) == 0
    assert main(["train", "--resume", resumed, "--epochs", "2", "--workers", "2", "--no-progress"]) == 0
    assert _strip(_history(resumed)) == _strip(_history(straight))
    a, b = load_checkpoint(resumed)["model"], load_checkpoint(straight)["model"]
    for k in b:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


# --- 8. stale temp files ----------------------------------------------------------------------
def test_temp_file_of_a_killed_save_is_removed_at_start(good_run, tmp_path):
    run = _copy(good_run, tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = os.path.join(run, f"checkpoint.pt.tmp.{dead.pid}")
    with open(stale, "wb") as f:
        f.write(b"PK\x03\x04 half a checkpoint")
    assert main(["train", "--resume", run, "--epochs", "2", "--no-progress"]) == 0
    assert not os.path.exists(stale)
    assert not [p for p in os.listdir(run) if ".tmp" in p]


# --- 7. CLI cases without a README row ----------------------------------------------------------
def test_eval_of_a_gpu_backend_checkpoint_on_cpu_falls_back_to_auto(good_run, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("the CUDA backend can run here")
    state = load_checkpoint(good_run)
    state["config"]["backend"] = "cuda"
    path = str(tmp_path / "gpu.pt")
    save_checkpoint(state, path)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", path, "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "--backend cuda, which cannot run on cpu" in err and "--backend auto" in err
    with open(tmp_path / "eval_T4.json") as f:
        assert json.load(f)["accuracy"]["4"] == pytest.approx(_history(good_run)[-1]["test_acc"])


def test_backend_refused_before_the_run_folder_is_created(tmp_path, capsys, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("the GPU backends can run here")
    from tcl_fast import _extension

    monkeypatch.setattr(_extension, "_HAS_TRITON", False)  # as outside the tests (no TRITON_INTERPRET)
    for backend in ("cuda", "triton"):
        out = tmp_path / backend
        assert main(["train", "--out", str(out), "--backend", backend, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --backend {backend}: ") and err.count("\n") == 1
        assert not out.exists()
