"""End-to-end `tcl-fast train/eval/compare` on digits with a few batches per epoch."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from run_logs import TIMING, history as _history, strip_timing as _strip  # noqa: F401

from tcl_fast.cli import main
from tcl_fast.training import trainer
from tcl_fast.training.checkpoint import load_checkpoint, save_checkpoint

QUICK = ["--limit-batches", "3", "--batch-size", "16", "--no-progress", "--backend", "torch"]


# Its tests share a module-scoped training run (run1): under `--dist loadgroup` one worker
# runs the whole module, so the run is made once.
pytestmark = pytest.mark.xdist_group("test_cli")


@pytest.fixture(scope="module")
def run1(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("runs") / "one")
    assert main(["train", "--out", out, "--epochs", "1", *QUICK]) == 0
    return out


def test_train_writes_log_csv_checkpoint_table_and_plot(run1, capsys):
    rows = _history(run1)
    assert [r["epoch"] for r in rows] == [1]
    assert {"train_loss", "train_acc", "train_ce", "train_tcl", "test_acc", "lr", "samples_per_s", "images_per_s"} <= set(rows[0])
    with open(os.path.join(run1, "metrics.csv")) as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == 1 and float(csv_rows[0]["test_acc"]) == pytest.approx(rows[0]["test_acc"])
    ckpt = load_checkpoint(run1)
    assert ckpt["epoch"] == 1 and ckpt["config"]["loss"] == "tcl"
    with open(os.path.join(run1, "latency.json")) as f:
        lat = json.load(f)
    assert set(lat["accuracy"]) == {"1", "2", "3", "4"} and lat["samples"] == 450
    assert lat["accuracy"]["4"] == pytest.approx(rows[-1]["test_acc"])
    with open(os.path.join(run1, "latency.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in os.listdir(run1) if ".tmp" in p]


def test_eval_reproduces_the_logged_accuracy(run1, tmp_path, capsys):
    assert main(["eval", "--checkpoint", run1, "--out", str(tmp_path)]) == 0
    with open(tmp_path / "eval_T4.json") as f:
        ev = json.load(f)
    assert ev["accuracy"]["4"] == pytest.approx(_history(run1)[-1]["test_acc"], abs=1e-9)
    assert "T'=4" in capsys.readouterr().out
    assert main(["eval", "--checkpoint", os.path.join(run1, "checkpoint.pt"), "--T", "2",
                 "--out", str(tmp_path)]) == 0
    with open(tmp_path / "eval_T2.json") as f:
        ev2 = json.load(f)
    assert ev2["accuracy"] == {"1": ev["accuracy"]["1"], "2": ev["accuracy"]["2"]}
    assert (tmp_path / "eval_T2.png").exists()


def test_latency_table_equals_separate_short_runs(run1):
    """evaluate_latency's one-pass T'=1..T equals running the model with T' steps."""
    from tcl_fast.training.config import TrainConfig

    cfg = TrainConfig.from_dict(load_checkpoint(run1)["config"])
    bundle = trainer.build_data(cfg, augment=False)
    model = trainer.build_for_config(cfg, bundle.num_classes, bundle.in_channels)
    model.load_state_dict(load_checkpoint(run1)["model"])
    model.eval()
    loader = torch.utils.data.DataLoader(bundle.test, batch_size=500)
    acc = trainer.evaluate_latency(model, loader, 4, torch.device("cpu"))["accuracy"]
    x, y = next(iter(loader))
    with torch.no_grad():
        for t in (1, 3):
            direct = (model(x, T=t).logits.mean(0).argmax(-1) == y).double().mean().item() * 100
            assert acc[str(t)] == pytest.approx(direct, abs=1e-9)


def test_resume_extends_the_epoch_count(run1, tmp_path):
    import shutil

    resumed = str(tmp_path / "resumed")
    shutil.copytree(run1, resumed)
    assert main(["train", "--resume", resumed, "--epochs", "2", "--no-progress"]) == 0
    assert [r["epoch"] for r in _history(resumed)] == [1, 2]
    assert _strip(_history(resumed))[0] == _strip(_history(run1))[0]
    assert load_checkpoint(resumed)["epoch"] == 2


def test_ctrl_c_then_resume_equals_an_uninterrupted_run(tmp_path, monkeypatch, capsys):
    straight = str(tmp_path / "straight")
    assert main(["train", "--out", straight, "--epochs", "2", *QUICK]) == 0
    out = str(tmp_path / "interrupted")
    real, calls = trainer._forward, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 2, batch 2 (3 batches per epoch)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "_forward", flaky)
    assert main(["train", "--out", out, "--epochs", "2", *QUICK]) == 130
    assert "--resume" in capsys.readouterr().err
    assert load_checkpoint(out)["epoch"] == 1 and len(_history(out)) == 1
    monkeypatch.setattr(trainer, "_forward", real)
    assert main(["train", "--resume", out, "--no-progress"]) == 0
    # Seeded CPU runs are deterministic, and resuming restores every RNG: identical logs and weights.
    assert [r["epoch"] for r in _history(out)] == [1, 2]
    assert _strip(_history(out)) == _strip(_history(straight))
    a, b = load_checkpoint(out), load_checkpoint(straight)
    for k in b["model"]:
        torch.testing.assert_close(a["model"][k], b["model"][k], rtol=0, atol=0)
    for k in ("optimizer", "scheduler"):
        assert str(a[k]) == str(b[k])


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pt")
    save_checkpoint({"epoch": 1}, path)

    def boom(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        save_checkpoint({"epoch": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


@pytest.mark.parametrize("extra", [
    ["--loss", "ce"], ["--loss", "tet", "--lambda-mse", "0.1"], ["--loss", "stcl", "--ce-mode", "tet"],
    ["--loss", "tcl", "--batch-size", "1", "--limit-batches", "4"],
    ["--loss", "tcl", "--batch-size", "1", "--T", "1", "--limit-batches", "2"],
])
def test_other_objectives_and_batch_of_one_run(tmp_path, extra, capsys):
    out = str(tmp_path / "r")
    assert main(["train", "--out", out, "--epochs", "1", *QUICK, *extra]) == 0
    row = _history(out)[0]
    assert row["train_loss"] == row["train_loss"]  # not NaN
    loss = extra[1]
    assert f"train_{ {'tet': 'ce'}.get(loss, loss) }" in row


def test_compare_prints_one_table_and_one_plot(run1, tmp_path, capsys):
    other = str(tmp_path / "ce")
    assert main(["train", "--out", other, "--epochs", "1", "--loss", "ce", *QUICK]) == 0
    capsys.readouterr()
    png = str(tmp_path / "cmp.png")
    assert main(["compare", run1, other, "--out", png, "--json", str(tmp_path / "cmp.json")]) == 0
    table = capsys.readouterr().out
    from tcl_fast.training.config import TrainConfig

    assert TrainConfig(loss="tcl").label() in table and "| ce " in table and "T'=4" in table
    with open(png, "rb") as f:
        assert f.read(4) == b"\x89PNG"
    with open(tmp_path / "cmp.json") as f:
        assert len(json.load(f)) == 2


@pytest.mark.parametrize("argv, message", [
    (["train", "--dataset", "mnist"], "unknown dataset 'mnist'"),
    (["train", "--model", "vgg99"], "unknown model"),
    (["train", "--loss", "hinge"], "unknown loss"),
    (["train", "--T", "0"], "T must be"),
    (["train", "--lambda", "-1"], "lambda must be >= 0"),
    (["train", "--lr", "0"], "lr must be > 0"),
    (["train", "--lr", "fast"], "invalid float value"),
    (["train", "--temperature", "0"], "temperature must be > 0"),
    (["train", "--batch-size", "0"], "batch-size"),
    (["train", "--optimizer", "lion"], "unknown optimizer"),
    (["train", "--dataset", "cifar10"], "needs --data-root"),
    (["train", "--dataset", "dvs-cifar10", "--data-root", "/nonexistent/dvs"], "does not exist"),
    (["train", "--resume", "/nonexistent/run"], "no checkpoint"),
    (["train", "--bogus"], "unrecognized arguments"),
    (["eval", "--checkpoint", "/nonexistent/ckpt.pt"], "no checkpoint"),
    (["eval", "--checkpoint", "/nonexistent/ckpt.pt", "--batch-size", "0"], "batch-size must be an integer >= 1"),
    (["compare", "/nonexistent/run"], "no latency.json"),
])
def test_user_errors_give_one_clear_message_and_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_existing_run_and_changed_settings_on_resume_are_refused(run1, capsys):
    assert main(["train", "--out", run1, *QUICK]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--resume", run1, "--loss", "ce"]) == 2
    assert "cannot change --loss" in capsys.readouterr().err


def test_digits_run_ends_with_a_next_step_line_whose_commands_run(tmp_path, capsys):
    out = str(tmp_path / "tcl")
    assert main(["train", "--out", out, "--epochs", "1", *QUICK]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    ce_out = out + "_ce"
    assert last.startswith(f"next: tcl-fast eval --checkpoint {out} ")
    assert f"rerun with --loss ce --out {ce_out}, then tcl-fast compare {ce_out} {out} " in last
    assert "tcl-fast train --dataset cifar10 --data-root DIR" in last
    # what the line says to run, runs
    assert main(["eval", "--checkpoint", out]) == 0
    assert main(["train", "--out", ce_out, "--loss", "ce", "--epochs", "1", *QUICK]) == 0
    ce_last = capsys.readouterr().out.strip().splitlines()[-1]
    assert ce_last.startswith(f"next: tcl-fast eval --checkpoint {ce_out} ") and "compare" not in ce_last
    assert main(["compare", ce_out, out, "--out", str(tmp_path / "cmp.png")]) == 0


def test_next_step_line_names_the_default_run_folders():
    from tcl_fast.cli import next_step_hint
    from tcl_fast.training.config import TrainConfig

    cfg = TrainConfig(T=2, seed=3)
    line = next_step_hint(cfg, cfg.resolved_out())
    tcl_out, ce_out = (os.path.join("runs", f"digits_small_{loss}_T2_seed3") for loss in ("tcl", "ce"))
    assert f"rerun with --loss ce, then tcl-fast compare {ce_out} {tcl_out} " in line


def test_subprocess_entry_points(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    r = subprocess.run([sys.executable, "-m", "tcl_fast.cli", "train", "--T", "0"], capture_output=True,
                       text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "tcl_fast.train", "--help"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0 and "--lambda" in r.stdout and "--resume" in r.stdout
