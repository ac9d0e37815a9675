#!/usr/bin/env bash
# What a new user waits for: from a fresh clone in a fresh venv (torch downloaded,
# pip's cache off), the wall time of the README's command 1 (install, build,
# `tcl-fast train`), then command 2 run right after it (test extras, the whole
# suite), then the suite alone (command 2's `python -m pytest ...` once more). The two
# commands are read out of README.md's first two ```bash blocks under "Install
# and quick start", so the numbers are for the commands as written.
#   bash scripts/measure_quickstart.sh [OUTDIR] [REPO]
# OUTDIR: default benchmarks/results/local/quickstart_<date>; REPO: what to clone
# (default this checkout; its committed HEAD is what gets measured).
# Writes OUTDIR/quickstart.json (seconds per step, exit codes, machine, commit)
# and one log per step. Run it on an otherwise idle machine: it takes the two
# cores for ~10 minutes and downloads torch (several GB for the CUDA wheel).
set -uo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$here/benchmarks/results/local/quickstart_$(date -u +%Y-%m-%d)}
repo=${2:-$here}
mkdir -p "$out"; out=$(cd "$out" && pwd)
work=$(mktemp -d /tmp/tcl_fast_quickstart.XXXXXX)
trap 'rm -rf "$work"' EXIT
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 MPLBACKEND=Agg
# A newcomer has no compiled Triton kernels or inductor code cached either (the suite's
# ahead-of-time sm_90 compile took 21 s cold and 5 s from ~/.triton's cache).
export TRITON_CACHE_DIR=$work/triton_cache TORCHINDUCTOR_CACHE_DIR=$work/inductor_cache
unset PIP_FIND_LINKS MAX_JOBS TCL_FAST_CUDA TORCH_CUDA_ARCH_LIST

git clone -q "$repo" "$work/tcl_fast" || exit 1
cd "$work/tcl_fast"
commit=$(git rev-parse HEAD)
# The README's two commands: the first two ```bash blocks after the quick-start heading.
mapfile -t commands < <(python3 - <<'PY'
import re
text = open("README.md").read().split("## Install and quick start", 1)[1]
blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
for block in blocks[:2]:
    print(" ".join(line.strip() for line in block.strip().splitlines()))
PY
)
[ "${#commands[@]}" -eq 2 ] || { echo "could not find the README's two commands" >&2; exit 1; }

python3 -m venv "$work/venv" || exit 1
# shellcheck disable=SC1091
source "$work/venv/bin/activate"

step() {  # name, command: runs it in the fresh clone, logs it, records seconds and exit code
  local name=$1 cmd=$2 t0 ms rc
  echo "== $name: $cmd"
  t0=$(date +%s%N)
  bash -c "$cmd" > "$out/$name.log" 2>&1; rc=$?
  ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '%s\t%s\t%d.%03d\t%s\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000)) "$cmd" >> "$work/steps.tsv"
  tail -n 3 "$out/$name.log"
  echo "== $name: exit $rc, $((ms / 1000)) s"
}
step command1 "${commands[0]}"
step command2 "${commands[1]}"
step suite "python -m pytest${commands[1]##*python -m pytest}"  # command 2's test run, alone

python3 - "$work/steps.tsv" "$out/quickstart.json" "$commit" <<'PY'
import json, os, platform, subprocess, sys, time
steps = {}
for line in open(sys.argv[1]):
    name, rc, seconds, cmd = line.rstrip("\n").split("\t", 3)
    steps[name] = {"seconds": float(seconds), "exit_code": int(rc), "command": cmd}
cpu = next((l.split(":", 1)[1].strip() for l in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if l.startswith("Model name")), platform.processor())
json.dump({"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "commit": sys.argv[3],
           "machine": f"{os.cpu_count()}-core {cpu}, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
           "python": platform.python_version(), "pip_cache": "off", "steps": steps},
          open(sys.argv[2], "w"), indent=1)
for name, s in steps.items():
    print(f"{name:>9}: {s['seconds']:7.1f} s  exit {s['exit_code']}")
print(f"wrote {sys.argv[2]} and {os.path.dirname(sys.argv[2])}/{{command1,command2,suite}}.log")
PY
