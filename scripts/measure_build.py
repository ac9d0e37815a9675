"""Where a cold build of tcl_fast._C spends its time, and what a reinstall costs.

    python scripts/measure_build.py [--repo PATH] [--out FILE] [--per-file] [--reinstall]

From a fresh clone of --repo (default: this checkout's committed HEAD) in a
temporary folder:
  1. a cold `pip wheel --no-build-isolation --no-deps .` (the build the README's
     `pip install -e` runs), CPU kernels only: its wall time, the CPU time of all
     its processes (user + system), and the size of _C.so;
  2. with --per-file, every compile command of that build run again one at a
     time: each file's CPU time, which, unlike wall time, barely moves when
     other jobs share the machine;
  3. with --reinstall, `pip wheel` of the same clone again: what a second install
     costs once build/ holds the objects (ninja's incremental build).
Writes JSON (default benchmarks/results/local/build_<date>.json) and prints a table.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def timed(cmd, cwd, env, log):
    """(wall s, CPU s of the command's processes) of running cmd; raises if it fails."""
    cpu0, t0 = children_cpu(), time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT,
                              shell=isinstance(cmd, str))
    wall, cpu = time.perf_counter() - t0, children_cpu() - cpu0
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {cmd}; see {log}")
    return wall, cpu


def machine() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")),
                 platform.processor())
    return f"{os.cpu_count()}-core {model}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repo", default=HERE)
    ap.add_argument("--out", default=None)
    ap.add_argument("--per-file", action="store_true")
    ap.add_argument("--reinstall", action="store_true")
    args = ap.parse_args()
    out = args.out or os.path.join(HERE, "benchmarks", "results", "local",
                                   f"build_{time.strftime('%Y-%m-%d')}.json")
    env = dict(os.environ, TCL_FAST_CPU_ONLY="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("MAX_JOBS", None)
    with tempfile.TemporaryDirectory(prefix="tcl_fast_build_") as tmp:
        src = os.path.join(tmp, "src")
        subprocess.run(["git", "clone", "-q", args.repo, src], check=True)
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True).stdout.strip()
        wheel_cmd = [sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "-w",
                     os.path.join(tmp, "wheel"), "."]
        result = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "commit": commit,
                  "machine": machine(), "command": " ".join(wheel_cmd[1:]), "loadavg_before": os.getloadavg()}
        wall, cpu = timed(wheel_cmd, src, env, os.path.join(tmp, "cold.log"))
        (so,) = glob.glob(os.path.join(src, "build", "lib*", "tcl_fast", "_C*.so"))
        result["cold"] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "so_bytes": os.path.getsize(so),
                          "loadavg_after": os.getloadavg()}
        print(f"cold build: {wall:.1f} s wall, {cpu:.1f} s CPU, _C.so {os.path.getsize(so) / 1e6:.1f} MB")
        (temp,) = glob.glob(os.path.join(src, "build", "temp*"))
        if args.reinstall:
            wall, cpu = timed(wheel_cmd, src, env, os.path.join(tmp, "again.log"))
            result["reinstall"] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}
            print(f"second pip wheel of the same clone: {wall:.1f} s wall, {cpu:.1f} s CPU")
        if args.per_file:
            commands = subprocess.run(["ninja", "-C", temp, "-t", "commands"], capture_output=True, text=True,
                                      check=True).stdout.splitlines()
            rows = {}
            for cmd in commands:
                parts = shlex.split(cmd)
                obj = parts[parts.index("-o") + 1]
                os.remove(obj)
                wall, cpu = timed(cmd, temp, env, os.path.join(tmp, "file.log"))
                name = os.path.basename(parts[parts.index("-c") + 1]) if "-c" in parts else obj
                name = next((p for p in parts if p.endswith((".cpp", ".cu"))), name)
                rows[os.path.basename(name)] = {"cpu_s": round(cpu, 1), "wall_s": round(wall, 1)}
                print(f"  {os.path.basename(name):<36} {cpu:7.1f} s CPU  {wall:7.1f} s wall")
            result["per_file"] = rows
            result["per_file_cpu_total_s"] = round(sum(r["cpu_s"] for r in rows.values()), 1)
            print(f"  {'total':<36} {result['per_file_cpu_total_s']:7.1f} s CPU")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
