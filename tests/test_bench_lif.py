"""benchmarks/bench_lif.py runs end to end on a tiny CPU case and writes the
rows it printed, including the side-by-side launch variants."""
import json
import os
import subprocess
import sys

import pytest

from benchmark_scripts import load_benchmark
from tcl_fast import _extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_benchmark(script, *args):
    """Run benchmarks/<script> with args in a fresh process; it must exit 0."""
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", script), *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.mark.skipif(not _extension.has_cpp(), reason="tcl_fast._C not built")
def test_bench_lif_tiny_cpu_run(tmp_path):
    out = tmp_path / "lif.json"
    proc = _run_benchmark(
        "bench_lif.py", "--device", "cpu", "--dtypes", "float32", "--neurons", "256", "--T", "4",
        "--no-compile", "--repeats", "2", "--plif", "--op-path", "--backends", "cpp", "cpp-plif",
        "cpp-op", "--calls-per-sample", "3", "--input-sets", "2", "--out", out)
    result = json.loads(out.read_text())
    assert result["calls_per_sample"] == 3
    rows = result["rows"]
    assert {r["backend"] for r in rows} == {"torch", "cpp", "cpp-plif", "cpp-op"}
    for r in rows:
        assert r["forward_ms"] > 0 and r["forward_backward_ms"] > 0
        assert r["forward_latency_ms"] > 0 and r["forward_backward_latency_ms"] > 0
        assert r["input_sets"] == 2
        assert 0 < r["forward_backward_fraction_of_copy"]
    assert "cpp-plif" in proc.stdout


@pytest.mark.skipif(not _extension.has_cpp(), reason="tcl_fast._C not built")
def test_bench_lif_decay_and_bn_lif_tiny_runs(tmp_path):
    out = tmp_path / "decay.json"
    _run_benchmark("bench_lif_decay.py", "--device", "cpu", "--shape", "2", "2", "3", "4", "--dtypes", "float32",
                   "--rounds", "2", "--min-time", "0", "--out", out)
    rows = json.loads(out.read_text())["rows"]
    assert [r["variant"] for r in rows] == ["copy", "fixed", "shared", "per-channel"]
    assert all(r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 for r in rows)
    out = tmp_path / "bn.json"
    _run_benchmark("bench_bn_lif.py", "--device", "cpu", "--shape", "2", "2", "3", "4", "4", "--layouts", "tb",
                   "--rounds", "2", "--min-time", "0", "--out", out)
    rows = json.loads(out.read_text())["rows"]
    assert [r["impl"] for r in rows] == ["unfused", "recompute", "kernel"]
    assert rows[2]["saved_ratio"] < 0.75 and rows[0]["saved_ratio"] == 1.0


@pytest.mark.skipif(not _extension.has_cpp(), reason="tcl_fast._C not built")
def test_bench_lif_runs_summarises_fresh_processes(tmp_path):
    out = tmp_path / "runs.json"
    _run_benchmark(
        "bench_lif_runs.py", "--runs", "2", "--out", out, "--", "--device", "cpu", "--dtypes",
        "float32", "--neurons", "256", "--T", "4", "--no-compile", "--repeats", "2", "--backends", "cpp")
    result = json.loads(out.read_text())
    assert len(result["rows_per_run"]) == 2
    cpp = [s for s in result["summary"] if s["backend"] == "cpp"]
    assert len(cpp) == 1 and cpp[0]["runs"] == 2
    per_run = sorted(run[i]["forward_backward_ms"] for run in result["rows_per_run"]
                     for i in range(len(run)) if run[i]["backend"] == "cpp")
    ms = cpp[0]["forward_backward_ms"]
    assert (ms["min"], ms["max"]) == (per_run[0], per_run[-1])


@pytest.mark.skipif(not _extension.has_cpp(), reason="tcl_fast._C not built")
def test_profile_lif_splits_kernel_time_from_the_call(tmp_path):
    out = tmp_path / "profile.json"
    _run_benchmark("profile_lif.py", "--device", "cpu", "--T", "3", "--neurons", "4096",
                   "--calls", "2", "--backends", "torch", "cpp", "--out", out)
    rows = {r["backend"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"torch", "cpp"}
    cpp = rows["cpp"]
    assert set(cpp["kernels_us"]) == {"tcl_fast::lif_forward", "tcl_fast::lif_backward"}
    assert cpp["kernel_us"] == pytest.approx(sum(cpp["kernels_us"].values()))
    assert cpp["kernel_us"] > 0 and cpp["wall_us"] > 0 and cpp["copy_kernel_us"] > 0
    assert rows["torch"]["kernels_us"] == {}  # many small ops: no kernel time claimed
    assert rows["torch"]["kernel_us"] is None and "NaN" not in out.read_text()


def test_benchmarks_write_outside_committed_results_unless_told():
    common = load_benchmark("_common")
    default = common.output_path(None, "lif_cpu.json")
    assert os.path.dirname(default) == os.path.join(ROOT, "benchmarks", "results", "local")
    assert common.output_path("x/y.json", "lif_cpu.json") == "x/y.json"
    ignored = subprocess.run(["git", "check-ignore", "-q", default], cwd=ROOT)
    if ignored.returncode in (0, 1):  # 128: not a git checkout
        assert ignored.returncode == 0, "benchmarks/results/local/ must be git-ignored"
    # No script picks its own default path any more: they all go through _common.
    for script in ("bench_lif.py", "bench_lif_backward.py", "bench_lif_runs.py", "bench_supcon.py",
                   "profile_lif.py", "bench_bn_lif.py", "bench_lif_decay.py"):
        text = open(os.path.join(ROOT, "benchmarks", script)).read()
        assert "import _common" in text and "sys.path.insert" not in text, script
