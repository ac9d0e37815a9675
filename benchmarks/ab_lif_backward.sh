#!/usr/bin/env bash
# A/B of the CPU LIF backward between this checkout and another one (e.g. an
# older commit in a git worktree), each built in place: alternating fresh
# processes of bench_lif_backward.py, then the median time per row and new/old.
#   git worktree add ../old <commit> && (cd ../old && python setup.py build_ext --inplace)
#   bash benchmarks/ab_lif_backward.sh ../old 3 [OUTDIR [BENCH ARGS...]]
# BENCH ARGS go to bench_lif_backward.py (e.g. --T 4 --neurons 1000000).
set -euo pipefail
old=$(cd "$1" && pwd); rounds=${2:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
out=${3:-$here/benchmarks/results/local/ab_lif_backward}
shift $(( $# < 3 ? $# : 3 ))
mkdir -p "$out"; out=$(cd "$out" && pwd)
for i in $(seq 1 "$rounds"); do
  (cd "$old" && python benchmarks/bench_lif_backward.py --dtypes float32 bfloat16 "$@" --out "$out/old_$i.json" > /dev/null)
  (cd "$here" && python benchmarks/bench_lif_backward.py --dtypes float32 bfloat16 "$@" --out "$out/new_$i.json" > /dev/null)
done
python - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(side):
    rows = {}
    for i in range(1, rounds + 1):
        for r in json.load(open(f"{out}/{side}_{i}.json"))["rows"]:
            rows.setdefault((r["dtype"], r["op"], r["surrogate"] or "-"), []).append(r["ms"])
    return rows
old, new = load("old"), load("new")
print(f"{'dtype':>9} {'op':>9} {'surrogate':>22} {'old ms':>7} {'new ms':>7} {'new/old':>7}")
for key in new:
    n = statistics.median(new[key])
    o = statistics.median(old[key]) if key in old else None
    print(f"{key[0]:>9} {key[1]:>9} {key[2]:>22} {'-' if o is None else format(o, '.2f'):>7} {n:7.2f} "
          f"{'-' if o is None else format(n / o, '.2f'):>7}")
json.dump({"old": {"|".join(k): v for k, v in old.items()}, "new": {"|".join(k): v for k, v in new.items()}},
          open(f"{out}/summary.json", "w"), indent=1)
print(f"wrote {out}/summary.json")
PY
