"""benchmarks/bench_lif.py runs end to end on a tiny CPU case and writes the
rows it printed, including the side-by-side launch variants."""
import json
import os
import subprocess
import sys

import pytest

from tcl_fast import _extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(not _extension.has_cpp(), reason="tcl_fast._C not built")
def test_bench_lif_tiny_cpu_run(tmp_path):
    out = tmp_path / "lif.json"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_lif.py"), "--device", "cpu",
           "--dtypes", "float32", "--neurons", "256", "--T", "4", "--no-compile", "--repeats", "2",
           "--plif", "--backends", "cpp", "cpp-plif", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert {r["backend"] for r in rows} == {"torch", "cpp", "cpp-plif"}
    for r in rows:
        assert r["forward_ms"] > 0 and r["forward_backward_ms"] > 0
        assert 0 < r["forward_backward_fraction_of_copy"]
    assert "cpp-plif" in proc.stdout


@pytest.mark.skipif(not _extension.has_cpp(), reason="tcl_fast._C not built")
def test_bench_lif_runs_summarises_fresh_processes(tmp_path):
    out = tmp_path / "runs.json"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "bench_lif_runs.py"), "--runs", "2",
           "--out", str(out), "--", "--device", "cpu", "--dtypes", "float32", "--neurons", "256",
           "--T", "4", "--no-compile", "--repeats", "2", "--backends", "cpp"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert len(result["rows_per_run"]) == 2
    cpp = [s for s in result["summary"] if s["backend"] == "cpp"]
    assert len(cpp) == 1 and cpp[0]["runs"] == 2
    per_run = sorted(run[i]["forward_backward_ms"] for run in result["rows_per_run"]
                     for i in range(len(run)) if run[i]["backend"] == "cpp")
    ms = cpp[0]["forward_backward_ms"]
    assert (ms["min"], ms["max"]) == (per_run[0], per_run[-1])
