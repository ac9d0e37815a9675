"""Every tcl-fast command says which files it wrote and writes none where it wasn't asked to;
config.json records the values the run used; the accuracy plot's axis starts at chance level."""
from __future__ import annotations

import json
import os

import pytest

from tcl_fast.cli import main

QUICK = ["--epochs", "1", "--limit-batches", "1", "--batch-size", "8", "--no-progress", "--backend", "torch"]


# Its tests share a module-scoped training run (runs): under `--dist loadgroup` one worker
# runs the whole module, so the run is made once.
pytestmark = pytest.mark.xdist_group("test_outputs")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("outputs")
    for loss in ("ce", "tcl"):
        assert main(["train", "--loss", loss, "--out", str(root / "runs" / loss), *QUICK]) == 0
    return root


def test_config_records_the_values_used(runs):
    cfg = json.loads((runs / "runs" / "ce" / "config.json").read_text())
    assert cfg["out"] == str(runs / "runs" / "ce")
    assert cfg["lr"] == 5e-3 and cfg["weight_decay"] == 0.0  # adam's defaults, not null


def test_train_prints_where_its_files_went(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *QUICK]) == 0
    out = capsys.readouterr().out
    folder = os.path.join("runs", "digits_small_tcl_T4_seed0")
    assert f"wrote {folder}{os.sep}: config.json" in out and "latency.png" in out
    assert json.loads((tmp_path / folder / "config.json").read_text())["out"] == folder


def test_eval_prints_its_files(runs, capsys):
    assert main(["eval", "--checkpoint", str(runs / "runs" / "ce"), "--T", "2"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {runs / 'runs' / 'ce' / 'eval_T2.json'}, {runs / 'runs' / 'ce' / 'eval_T2.png'}" in out


def test_compare_writes_beside_the_runs_not_in_the_current_directory(runs, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["compare", str(runs / "runs" / "ce"), str(runs / "runs" / "tcl")]) == 0
    assert f"wrote {runs / 'runs' / 'comparison.png'}" in capsys.readouterr().out
    assert (runs / "runs" / "comparison.png").exists() and os.listdir(tmp_path) == []
    # With an evaluation that has its cost (whichever test ran first), compare adds the energy plot.
    assert main(["eval", "--checkpoint", str(runs / "runs" / "ce"), "--T", "2"]) == 0
    capsys.readouterr()
    assert main(["compare", str(runs / "runs" / "ce"), "--out", "c.png", "--json", "c.json"]) == 0
    assert "wrote c.png, c_energy.png, c.json" in capsys.readouterr().out


def test_accuracy_axis_starts_at_chance(tmp_path, monkeypatch):
    import matplotlib.figure

    from tcl_fast.training.evaluation import plot_latency

    limits = []
    real_savefig = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda fig, *a, **k: (limits.append(fig.axes[0].get_ylim()), real_savefig(fig, *a, **k)))
    plot_latency([("a", {1: 97.3, 2: 98.7})], str(tmp_path / "a.png"), chance=10.0)
    plot_latency([("a", {1: 97.3, 2: 98.7})], str(tmp_path / "b.png"))
    plot_latency([("a", {1: 4.0, 2: 98.7})], str(tmp_path / "c.png"), chance=10.0)
    (lo_chance, hi), (lo_none, _), (lo_below, _) = limits
    assert 5 <= lo_chance <= 10 and hi >= 100 and lo_none == 0 and lo_below < 4
