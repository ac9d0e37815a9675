"""Run bench_lif.py several times, each in a fresh process, and summarise.

    python benchmarks/bench_lif_runs.py --runs 6 -- --T 8 --neurons 1048576 \
        --dtypes float32 --no-compile --backends cpp

On a shared VM the copy baseline itself moves between processes (this 2-core
EPYC VM: a 32 MiB clone takes 0.9 ms in some processes and 1.5 ms in others),
so one run's "% copy" is one sample. This prints, per (dtype, T, neurons,
backend), the min / median / max over the runs of each measured quantity, and
writes every run's rows plus the summary to JSON (default
benchmarks/results/local/lif_runs_<device>.json).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import _common

HERE = _common.HERE
KEYS = ("forward_ms", "forward_backward_ms", "copy_bandwidth_gbs",
        "forward_fraction_of_copy", "forward_backward_fraction_of_copy")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, bench_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(ours)
    if args.runs < 1:
        ap.error("--runs must be at least 1")

    runs, device, device_type = [], None, None
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            path = os.path.join(tmp, f"run{i}.json")
            cmd = [sys.executable, os.path.join(HERE, "bench_lif.py"), *bench_args, "--out", path]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.stderr.write(proc.stdout + proc.stderr)
                raise SystemExit(f"run {i} failed (exit {proc.returncode})")
            with open(path) as f:
                result = json.load(f)
            device, device_type = result["device"], result["device_type"]
            runs.append(result["rows"])
            print(f"run {i + 1}/{args.runs} done", flush=True)

    groups: dict = {}
    for rows in runs:
        for r in rows:
            groups.setdefault((r["dtype"], r["T"], r["neurons"], r["backend"]), []).append(r)
    summary = []
    print(f"device: {device}; {args.runs} runs; min / median / max")
    print(f"{'dtype':>8} {'T':>3} {'neurons':>9} {'backend':>14} {'f+b ms':>22} {'f+b %copy':>18} {'copy GB/s':>18}")
    for (dtype, T, N, backend), rows in groups.items():
        stats = {k: (min(r[k] for r in rows), statistics.median(r[k] for r in rows), max(r[k] for r in rows))
                 for k in KEYS}
        summary.append(dict(dtype=dtype, T=T, neurons=N, backend=backend, runs=len(rows),
                            **{k: dict(min=a, median=m, max=b) for k, (a, m, b) in stats.items()}))
        fb, frac, bw = stats["forward_backward_ms"], stats["forward_backward_fraction_of_copy"], stats["copy_bandwidth_gbs"]
        print(f"{dtype:>8} {T:>3} {N:>9} {backend:>14} "
              f"{fb[0]:>6.2f} {fb[1]:>6.2f} {fb[2]:>6.2f}   "
              f"{100 * frac[0]:>4.0f}% {100 * frac[1]:>4.0f}% {100 * frac[2]:>4.0f}%   "
              f"{bw[0]:>5.1f} {bw[1]:>5.1f} {bw[2]:>5.1f}")

    _common.write_json(args.out, f"lif_runs_{device_type}.json", dict(
        benchmark="lif_runs", device=device, runs=args.runs, date=_common.utc_now(),
        command=_common.command_line("bench_lif_runs.py", argv), summary=summary, rows_per_run=runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
