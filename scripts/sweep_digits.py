"""Hyper-parameter sweep for TCL on digits: lambda, temperature, CE form, projection size.

    python scripts/sweep_digits.py                 # one-factor-at-a-time, seeds 0 1
    python scripts/sweep_digits.py --grid full     # the full 4x3x2x2 grid (slow on a CPU)

Every run uses the default digits schedule (TrainConfig defaults, loss=tcl) and
changes only the swept settings. Finished runs under --runs-dir are reused, so
an interrupted sweep picks up where it stopped. Writes results/sweep_digits.{md,json}.
The ranking key is the accuracy averaged over seeds and over T' = 1..T (so low
latency counts as much as full-T accuracy); accuracy at T' = T is shown too.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

import torch

# Run from a source checkout without installing: put the repo root on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tcl_fast.ops.lif import resolve_backend
from tcl_fast.training.config import TrainConfig
from tcl_fast.training.experiments import aggregate, md_header, md_row, run_or_reuse

LAMBDAS = (0.1, 0.5, 1.0, 2.0)
TEMPERATURES = (0.05, 0.1, 0.5)
CE_MODES = ("mean", "tet")
PROJ_DIMS = (32, 128)


def settings(grid: str, base: TrainConfig) -> list[dict]:
    # λ=0 is plain CE (the head gets no gradient): the reference every TCL setting must beat.
    reference = dict(lam=0.0, temperature=0.1, ce_mode="mean", proj_dim=128)
    if grid == "full":
        return [reference] + [dict(lam=l, temperature=t, ce_mode=c, proj_dim=p)
                              for l, t, c, p in itertools.product(LAMBDAS, TEMPERATURES, CE_MODES, PROJ_DIMS)]
    centre = dict(lam=base.lam, temperature=base.temperature, ce_mode=base.ce_mode, proj_dim=base.proj_dim)
    out = [reference, centre]
    for key, values in (("lam", LAMBDAS), ("temperature", TEMPERATURES), ("ce_mode", CE_MODES),
                        ("proj_dim", PROJ_DIMS)):
        for v in values:
            s = dict(centre, **{key: v})
            if s not in out:
                out.append(s)
    return out


def name_of(s: dict) -> str:
    if s["lam"] == 0:
        return "λ=0 (CE only, reference)"
    return f"λ={s['lam']:g} τ={s['temperature']:g} ce={s['ce_mode']} proj={s['proj_dim']}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grid", choices=("ofat", "full"), default="ofat")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--runs-dir", default="runs/sweep_digits")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--backend", default="auto")
    p.add_argument("--epochs", type=int, default=None, help="override the default schedule (smoke tests)")
    p.add_argument("--limit-batches", type=int, default=None, help="smoke tests only")
    p.add_argument("--refine", type=int, default=0, metavar="K",
                   help="re-run the K best TCL settings and the CE reference with --refine-seeds too")
    p.add_argument("--refine-seeds", type=int, nargs="+", default=[2, 3])
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per run (1 is fastest for these tiny models, and robust on a busy machine)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python " + " ".join([f"scripts/{os.path.basename(__file__)}", *(sys.argv[1:] if argv is None else argv)])

    base = TrainConfig(loss="tcl", backend=args.backend, progress=False, limit_batches=args.limit_batches)
    if args.epochs:
        base.epochs = args.epochs
    t0 = time.time()

    def run_setting(s: dict, seeds: list[int]) -> dict:
        print(name_of(s), flush=True)
        runs = []
        for seed in seeds:
            tag = f"lam{s['lam']:g}_tau{s['temperature']:g}_{s['ce_mode']}_proj{s['proj_dim']}_seed{seed}"
            cfg = TrainConfig(**{**base.to_dict(), **s, "seed": seed, "out": os.path.join(args.runs_dir, tag)})
            runs.append(run_or_reuse(cfg))
        return aggregate(runs)

    def rank(rows):
        return sorted(rows, key=lambda r: (r[1]["mean_over_T"], r[1]["mean"][base.T]), reverse=True)

    ranked = rank([(s, run_setting(s, args.seeds)) for s in settings(args.grid, base)])
    best = next(s for s, _ in ranked if s["lam"] > 0)
    refined = []
    if args.refine:
        # Two seeds cannot separate settings 0.2 points apart: re-run the leaders with more seeds.
        top = [s for s, _ in ranked if s["lam"] > 0][:args.refine]
        ref = next(s for s, _ in ranked if s["lam"] == 0)
        all_seeds = list(dict.fromkeys(args.seeds + args.refine_seeds))
        refined = rank([(s, run_setting(s, all_seeds)) for s in [ref, *top]])
        best = next(s for s, _ in refined if s["lam"] > 0)

    os.makedirs(args.results_dir, exist_ok=True)
    lines = [
        "# TCL hyper-parameter sweep on digits",
        "",
        f"Command: `{command}`",
        f"(LIF backend `{args.backend}` -> `{resolve_backend(args.backend, torch.device('cpu'))}`, {len(ranked)} settings x {len(args.seeds)} seeds; "
        f"{args.threads} torch thread(s) per run).",
        f"Schedule: small SNN, T={base.T}, {base.epochs} epochs, batch {base.batch_size}, {base.optimizer} "
        f"lr {base.resolved_lr():g}, {base.scheduler}; test accuracy (%) mean ± std over seeds, "
        f"ranked by the mean over T' = 1..{base.T}. s/run: wall seconds of one run when it was trained "
        f"(2 shared CPU cores, so noisy).",
        "",
        md_header(base.T),
    ]
    lines += [md_row(name_of(s), agg) for s, agg in ranked]
    if refined:
        lines += ["", f"## Refinement: the {args.refine} best settings and the reference with seeds "
                      f"{' '.join(map(str, all_seeds))}", "", md_header(base.T)]
        lines += [md_row(name_of(s), agg) for s, agg in refined]
    lines += ["", f"Best TCL setting: {name_of(best)}."]
    with open(os.path.join(args.results_dir, "sweep_digits.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.results_dir, "sweep_digits.json"), "w") as f:
        json.dump({"grid": args.grid, "seeds": args.seeds, "schedule": base.to_dict(),
                   "results": [{"setting": s, **agg} for s, agg in ranked],
                   "refined": [{"setting": s, **agg} for s, agg in refined], "best": best}, f, indent=2,
                  ensure_ascii=False)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
