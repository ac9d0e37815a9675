"""`tcl-fast train` on 2 gloo ranks on 127.0.0.1, bounded and cleaned up: the shared run
(tests/training/conftest.py ddp_tcl_run) under torchrun itself, the others started with the
environment torchrun gives its ranks."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from rank_launch import cpu_gloo_env, launch_ranks
from tcl_fast.cli import main
from tcl_fast.training.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 120
QUICK = ["--epochs", "2", "--limit-batches", "3", "--batch-size", "16", "--backend", "cpp"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(module_args: list[str], script: str | None = None) -> subprocess.CompletedProcess:
    """2 ranks under torchrun itself (the shared run, tests/training/conftest.py ddp_tcl_run)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           *([script] if script else ["-m"]), *module_args]
    # Own session, so a hung job is killed with all its workers (only what this test started).
    p = subprocess.Popen(cmd, env=cpu_gloo_env(PYTHONWARNINGS="ignore"), cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        pytest.fail(f"torchrun did not finish in {TIMEOUT_S} s")
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def _two_ranks(module_args: list[str], script: str | None = None) -> subprocess.CompletedProcess:
    """The same 2 ranks without torchrun's launcher (tests/rank_launch.py): both ranks'
    output, rank 0's first, and the exit code of the first rank that failed (0 when both
    succeed; a rank stopped because the other failed does not count)."""
    cmd = [sys.executable, *([script] if script else ["-m"]), *module_args]
    ranks = launch_ranks(cmd, cpu_gloo_env(PYTHONWARNINGS="ignore"), 2, TIMEOUT_S, cwd=ROOT)
    code = next((r.returncode for r in ranks if r.returncode != 0 and not r.stopped), 0)
    return subprocess.CompletedProcess(cmd, code, "".join(r.stdout for r in ranks),
                                       "".join(r.stderr for r in ranks))


def _rows(out):
    timing = {"train_time_s", "samples_per_s", "images_per_s"}
    return [{k: v for k, v in json.loads(line).items() if k not in timing}
            for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.xdist_group("ddp_tcl_run")
def test_two_rank_resume_equals_an_uninterrupted_two_rank_run(ddp_tcl_run, tmp_path):
    straight, r = ddp_tcl_run
    assert r.returncode == 0, r.stderr[-4000:]
    out = tmp_path / "resumed"
    quick_one_epoch = [a if a != "2" else "1" for a in QUICK]
    r = _two_ranks(["tcl_fast.train", "--out", str(out), *quick_one_epoch])
    assert r.returncode == 0, r.stderr[-4000:]
    assert len(load_checkpoint(str(out))["rng_ranks"]) == 2  # each rank's RNG was saved
    r = _two_ranks(["tcl_fast.train", "--resume", str(out), "--epochs", "2"])
    assert r.returncode == 0, r.stderr[-4000:]
    # Same sampler seeds and per-rank RNGs restored: the resumed run repeats the straight one.
    assert _rows(out) == _rows(straight)
    a, b = load_checkpoint(str(out)), load_checkpoint(str(straight))
    for k in b["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)


@pytest.mark.parametrize("entry", [
    ["tcl_fast.train"],
    ["tcl_fast.cli", "train", "--loss", "stcl"],
    ["tcl_fast.train", "--loss", "ce"],  # the projection head gets no gradient: DDP must be told
], ids=["train-tcl", "cli-stcl", "train-ce"])
@pytest.mark.xdist_group("ddp_tcl_run")
def test_two_rank_training_writes_one_log_and_one_checkpoint(tmp_path, entry, request):
    if entry == ["tcl_fast.train"]:
        out, r = request.getfixturevalue("ddp_tcl_run")  # the shared run (conftest.py)
    else:
        out = tmp_path / "run"
        r = _two_ranks([*entry, "--out", str(out), *QUICK])
    assert r.returncode == 0, r.stderr[-4000:]
    # Rank 0 alone writes: one of each file (and the run-folder lock), no leftovers from another rank.
    assert sorted(os.listdir(out)) == [".lock", "checkpoint.pt", "config.json", "latency.json", "latency.png",
                                       "log.jsonl", "metrics.csv"]
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    # Only rank 0 prints progress: each epoch line and the table appear once.
    assert r.stderr.count("epoch 1/2 ") == 1 and r.stderr.count("epoch 2/2 ") == 1
    assert r.stdout.count("T'=4") == 1
    for row in rows:
        assert row["skipped_steps"] == 0 and row["train_loss"] == row["train_loss"]
        # 3 batches of 16 / 2 per rank, summed over both ranks.
        assert row["samples_per_s"] > 0 and abs(row["train_acc"] * 48 / 100 - round(row["train_acc"] * 48 / 100)) < 1e-6
    lat = json.loads((out / "latency.json").read_text())
    assert lat["samples"] == 450  # the sharded evaluation covers the test set exactly once
    ckpt = load_checkpoint(str(out))
    assert ckpt["epoch"] == 2 and not any(k.startswith("module.") for k in ckpt["model"])


# Rank 1 alone sees a NaN loss at its second step; rank 0's loss stays finite.
_NAN_ON_RANK_1 = textwrap.dedent("""
    import os, sys
    from tcl_fast.training import trainer
    from tcl_fast.cli import main
    real, calls = trainer._forward, [0]
    def poisoned(*args, **kwargs):
        loss, parts, logits = real(*args, **kwargs)
        calls[0] += 1
        if calls[0] == 2 and os.environ["RANK"] == "1":
            loss = loss * float("nan")
        return loss, parts, logits
    trainer._forward = poisoned
    sys.exit(main(["train", *sys.argv[1:]]))
""")


def test_nan_on_one_rank_is_skipped_by_every_rank(tmp_path):
    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(_NAN_ON_RANK_1)
    out = tmp_path / "run"
    r = _two_ranks(["--out", str(out), "--skip-nonfinite", "--no-progress", *QUICK], script=str(script))
    assert r.returncode == 0, r.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["skipped_steps"] for row in rows] == [1, 0]
    # Had rank 0 stepped with the NaN gradients DDP averaged in, its weights would be NaN now.
    for v in load_checkpoint(str(out))["model"].values():
        assert torch.isfinite(v.float()).all()


def test_batch_size_not_divisible_by_world_size(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")  # checked before the process group is joined
    assert main(["train", "--out", str(tmp_path / "r"), "--batch-size", "15", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: batch-size (15) must be divisible") and "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["--sync-bn"], "--sync-bn needs CUDA"),
    (["--amp", "fp16"], "--amp fp16 needs a GPU"),
    (["--contrast", "everywhere"], "unknown contrast 'everywhere'"),
])
def test_cpu_only_refusals(tmp_path, capsys, argv, message):
    assert main(["train", "--out", str(tmp_path / "r"), "--device", "cpu", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert not (tmp_path / "r").exists()  # refused before anything was written
