"""benchmarks/bench_train_step.py runs end to end at a tiny size and writes its rows."""
import json
import os
import subprocess
import sys

import pytest

from benchmark_scripts import load_benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_train_step_tiny_cpu_run(tmp_path):
    out = tmp_path / "ts.json"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_train_step.py"), "--device", "cpu",
           "--models", "resnet19", "sj_resnet18", "--T", "2", "--batch", "2", "--time-batch", "1",
           "--repeats", "1", "--hw", "8", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["device_type"] == "cpu" and result["device"] and result["hw"] == 8
    rows = {(r["model"], r["config"]): r for r in result["rows"]}
    for cfg in ("plain", "pack", "pack+fuse"):
        r = rows[("resnet19", cfg)]
        assert r["saved_bytes"] > 0 and r["step_ms"] > 0 and r["images_per_s"] > 0
    plain, pack, fused = (rows[("resnet19", c)]["saved_bytes"] for c in ("plain", "pack", "pack+fuse"))
    assert fused < pack < plain
    assert rows[("resnet19", "pack")]["vs_plain"] == pack / plain
    assert 0 <= rows[("resnet19", "plain")]["neuron_share"] <= 1
    if ("resnet19", "sj[torch]") in rows:  # spikingjelly installed
        assert rows[("resnet19", "plain")]["vs_sj"] < 1
        assert ("sj_resnet18", "sj-zoo[torch]") in rows
    if not any(c.startswith("zoo-tcl") for _, c in rows):
        assert "converted-zoo rows" in proc.stdout
    elif ("sj_resnet18", "zoo-tcl+pack+fuse") in rows:
        assert (rows[("sj_resnet18", "zoo-tcl+pack+fuse")]["saved_bytes"]
                < rows[("sj_resnet18", "zoo-tcl+pack")]["saved_bytes"])


def test_rows_are_kept_when_the_run_stops_part_way(tmp_path):
    # The JSON is rewritten (atomically) before each row is printed: a run
    # killed right after its first row keeps that row.
    out = tmp_path / "ts.json"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_train_step.py"), "--device", "cpu",
           "--models", "resnet19", "--configs", "plain", "pack", "--T", "2", "--batch", "2",
           "--time-T", "--no-neuron-share", "--hw", "8", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        for line in proc.stdout:  # stop it as soon as the first row is printed
            if line.startswith("resnet19"):
                break
        proc.kill()
    finally:
        proc.wait(timeout=60)
    rows = json.loads(out.read_text())["rows"]
    assert [r["config"] for r in rows][:1] == ["plain"]


def test_peak_budget_mode_finds_the_largest_batch_within_the_budget(tmp_path):
    # --peak --budget-mib: each row (a fresh process) also searches the largest batch whose
    # whole-step peak (here CPU resident-set growth) fits; the answer must agree with its probes.
    out = tmp_path / "peak.json"
    # limit 4: doubling probes 1, 2, 4 and at most one bisection (test_largest_fitting covers the search)
    budget, limit = 60.0, 4
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_train_step.py"), "--peak", "--device", "cpu",
           "--models", "resnet19", "--peak-configs", "plain", "ckpt", "sj+memopt2", "--T", "2", "--batch", "2",
           "--hw", "8", "--repeats", "1", "--budget-mib", str(budget), "--budget-max-batch", str(limit),
           "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    if ("sj+memopt2 skipped" not in proc.stdout) and ("not installed" not in proc.stdout):
        raise AssertionError("memopt level 2 needs CUDA: the CPU run must skip it and say so")
    result = json.loads(out.read_text())
    assert result["budget_mib"] == budget
    rows = {r["config"]: r for r in result["rows"]}
    assert set(rows) == {"plain", "ckpt"}
    for r in rows.values():
        fits = {b: p is not None and p <= budget * 2**20 for b, p in r["budget_probes"]}
        best = r["max_batch"]
        assert 0 <= best <= limit
        assert best == 0 or fits[best]
        assert best == limit or not fits.get(best + 1, False)
        assert best == max([b for b, ok in fits.items() if ok], default=0)
    assert rows["ckpt"]["grads_equal_reference"] is True


@pytest.mark.parametrize("limit", [1, 2, 5, 8, 13])
def test_largest_fitting_finds_every_threshold_with_few_probes(limit):
    largest_fitting = load_benchmark("bench_train_step").largest_fitting
    for threshold in range(0, limit + 3):  # batches up to `threshold` fit
        probes = []

        def fits(b):
            assert 1 <= b <= limit, b  # never probes outside 1..limit
            probes.append(b)
            return b <= threshold

        assert largest_fitting(fits, limit) == min(threshold, limit)
        assert len(probes) == len(set(probes))  # no batch probed twice
        assert len(probes) <= 2 * limit.bit_length() + 1
