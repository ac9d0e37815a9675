"""CE vs TET vs TCL vs STCL on digits with the default schedule, several seeds each.

    python scripts/compare_objectives.py            # seeds 0 1 2

Writes results/digits_objectives.{md,json,png}: test accuracy (%) at every
T' = 1..T as mean ± std over seeds, and one plot of accuracy vs T'. Finished
runs under --runs-dir are reused.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

# Run from a source checkout without installing: put the repo root on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tcl_fast.ops.lif import resolve_backend
from tcl_fast.training.config import TrainConfig
from tcl_fast.training.evaluation import plot_latency
from tcl_fast.training.experiments import aggregate, md_header, md_row, run_or_reuse

LOSSES = ("ce", "tet", "tcl", "stcl")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSSES)
    p.add_argument("--runs-dir", default="runs/digits_objectives")
    p.add_argument("--results-dir", default="results")
    p.add_argument("--backend", default="auto")
    p.add_argument("--epochs", type=int, default=None, help="override the default schedule (smoke tests)")
    p.add_argument("--limit-batches", type=int, default=None, help="smoke tests only")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per run (1 is fastest for these tiny models, and robust on a busy machine)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python " + " ".join([f"scripts/{os.path.basename(__file__)}", *(sys.argv[1:] if argv is None else argv)])

    base = TrainConfig(backend=args.backend, progress=False, limit_batches=args.limit_batches)
    if args.epochs:
        base.epochs = args.epochs
    t0 = time.time()
    results = {}
    for loss in args.losses:
        print(loss, flush=True)
        runs = [run_or_reuse(TrainConfig(**{**base.to_dict(), "loss": loss, "seed": seed,
                                            "out": os.path.join(args.runs_dir, f"{loss}_seed{seed}")}))
                for seed in args.seeds]
        results[loss] = aggregate(runs)
        results[loss]["label"] = TrainConfig(**{**base.to_dict(), "loss": loss}).label()

    os.makedirs(args.results_dir, exist_ok=True)
    T = base.T
    lines = [
        "# Objectives on digits: accuracy at every inference length T'",
        "",
        f"Command: `{command}` "
        f"(LIF backend `{args.backend}` -> `{resolve_backend(args.backend, torch.device('cpu'))}`, {args.threads} torch thread(s) per run; "
        f"s/run is the wall time of one run on 2 shared CPU cores).",
        f"Schedule (TrainConfig defaults): small SNN, T={T}, {base.epochs} epochs, batch {base.batch_size}, "
        f"{base.optimizer} lr {base.resolved_lr():g}, {base.scheduler}; tcl/stcl use λ={base.lam:g}, "
        f"τ={base.temperature:g}, ce-mode {base.ce_mode}, proj {base.proj_dim}. "
        f"Test accuracy (%) on the 450 test digits, mean ± std over {len(args.seeds)} seeds.",
        "",
        md_header(T, "objective"),
    ]
    lines += [md_row(results[l]["label"], results[l]) for l in args.losses]
    with open(os.path.join(args.results_dir, "digits_objectives.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.results_dir, "digits_objectives.json"), "w") as f:
        json.dump({"seeds": args.seeds, "schedule": base.to_dict(), "results": results}, f, indent=2,
                  ensure_ascii=False)
    plot_latency([(results[l]["label"], results[l]["mean"]) for l in args.losses],
                 os.path.join(args.results_dir, "digits_objectives.png"),
                 title=f"digits, small SNN, trained with T={T} (mean ± std, {len(args.seeds)} seeds)",
                 errors={results[l]["label"]: results[l]["std"] for l in args.losses})
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
