"""Helpers for the results scripts: run (or reuse) a batch of seeded runs and aggregate them."""
from __future__ import annotations

import contextlib
import io
import json
import os
import statistics
import time

from tcl_fast.training.config import TrainConfig
from tcl_fast.training.trainer import LATENCY_JSON, train

# Fields that do not change what a run computes (so a finished run can be reused).
_IGNORED = {"out", "progress", "workers", "device"}


def _same(a: dict, b: dict) -> bool:
    keys = (set(a) | set(b)) - _IGNORED
    return all(a.get(k) == b.get(k) for k in keys)


def run_or_reuse(cfg: TrainConfig, log=print) -> dict:
    """Train ``cfg`` unless its folder already holds a finished run with the same config.

    Returns ``{"accuracy": {T': acc}, "seconds": wall time or None, "history": [...]}``.
    """
    out = cfg.resolved_out()
    lat_path = os.path.join(out, LATENCY_JSON)
    if os.path.isfile(lat_path):
        with open(lat_path) as f:
            lat = json.load(f)
        if _same(lat.get("config", {}), cfg.to_dict()):
            log(f"  reuse {out}")
            return {"accuracy": {int(k): v for k, v in lat["accuracy"].items()},
                    "seconds": lat.get("wall_seconds")}
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        result = train(cfg, overwrite=True)
    seconds = time.perf_counter() - t0
    if result.interrupted:
        raise KeyboardInterrupt
    # Keep the wall time with the run so a reused run still reports it.
    lat = dict(result.latency, wall_seconds=seconds)
    with open(lat_path, "w") as f:
        json.dump(lat, f, indent=2, ensure_ascii=False)
    acc = {int(k): v for k, v in result.latency["accuracy"].items()}
    log(f"  {out}: " + " ".join(f"T'={t}:{a:.2f}" for t, a in acc.items()) + f"  ({seconds:.0f}s)")
    return {"accuracy": acc, "seconds": seconds}


def aggregate(runs: list[dict]) -> dict:
    """Mean and sample std over seeds for every T', plus the mean over T' and the wall time."""
    Ts = sorted(runs[0]["accuracy"])
    mean = {t: statistics.fmean(r["accuracy"][t] for r in runs) for t in Ts}
    std = {t: statistics.stdev([r["accuracy"][t] for r in runs]) if len(runs) > 1 else 0.0 for t in Ts}
    secs = [r["seconds"] for r in runs if r.get("seconds") is not None]
    return {"mean": mean, "std": std, "mean_over_T": statistics.fmean(mean.values()),
            "seeds": len(runs), "seconds": statistics.fmean(secs) if secs else None,
            "per_seed": [r["accuracy"] for r in runs]}


def md_row(name: str, agg: dict) -> str:
    cells = [f"{agg['mean'][t]:.2f} ± {agg['std'][t]:.2f}" for t in sorted(agg["mean"])]
    secs = f"{agg['seconds']:.0f}" if agg.get("seconds") is not None else "-"
    return f"| {name} | " + " | ".join(cells) + f" | {agg['mean_over_T']:.2f} | {secs} |"


def md_header(T: int, first: str = "setting") -> str:
    cols = " | ".join(f"T'={t}" for t in range(1, T + 1))
    return (f"| {first} | {cols} | mean over T' | s/run |\n"
            f"|---|" + "---|" * T + "---|---|")
