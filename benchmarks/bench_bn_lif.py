"""What BN fused into the LIF (tcl_fast.nn.bn_lif) saves and costs, per statistics layout.

    python benchmarks/bench_bn_lif.py                          # [T=4, B=8, C=64, 32x32], CPU
    python benchmarks/bench_bn_lif.py --shape 4 8 64 32 32 --layouts step-shared step-bntt

For each layout it runs the unfused block (BN, then tcl_fast.LIFMultiStep) and
``bn_lif`` with each ``impl`` that applies (``recompute``; ``kernel``, BN inside
the LIF kernel, for ``tb``) on the same input ``y: [T, B, C, H, W]`` (the conv
output), in training mode, and reports

* the bytes autograd holds for backward after the forward (SavedTensorCounter,
  BN parameters excluded, each storage once);
* the median forward+backward time (gradients of y and the BN parameters),
  every variant timed round-robin in the same run;

each also as a ratio to the unfused block.

Layouts: ``tb`` (one BatchNorm2d over T*B), ``step-shared`` (one BatchNorm2d
applied at every step, per-step statistics), ``step-bntt`` (T BatchNorm2d
modules, one a step). Writes JSON to --out, else benchmarks/results/local/
bn_lif_<device>.json (git-ignored).
"""
from __future__ import annotations

import argparse
import copy

import torch
from torch import nn

import _common  # noqa: F401  (first: puts this checkout's tcl_fast on the path)
from bench_lif import device_name, interleaved_medians, write_results  # noqa: E402

import tcl_fast  # noqa: E402
from tcl_fast.nn.bnlif import bn_lif  # noqa: E402

LAYOUTS = ("tb", "step-shared", "step-bntt")


def _modules(layout: str, T: int, C: int, device):
    bn = nn.ModuleList(nn.BatchNorm2d(C) for _ in range(T)) if layout == "step-bntt" else nn.BatchNorm2d(C)
    return bn.to(device).train(), tcl_fast.LIFMultiStep().to(device)


def _unfused(layout: str, bn, lif, y):
    if layout == "tb":
        z = bn(y.flatten(0, 1)).view_as(y)
    else:
        mods = list(bn) if isinstance(bn, nn.ModuleList) else [bn] * y.shape[0]
        z = torch.stack([m(y[t]) for t, m in enumerate(mods)])
    return lif(z)


def _fused(impl: str):
    def run(layout: str, bn, lif, y):
        return bn_lif(y, bn, lif, stats="tb" if layout == "tb" else "step", impl=impl)
    return run


def measure(layout: str, shape, device, rounds: int, min_time: float) -> list[dict]:
    """Rows for the unfused block and each bn_lif impl that applies (kernel: T*B only)."""
    T, B, C, H, W = shape
    g = torch.Generator().manual_seed(0)
    y = (torch.randn(shape, generator=g) * 1.5 + 0.3).to(device).requires_grad_()
    w = torch.randn(shape, generator=g).to(device)
    bn, lif = _modules(layout, T, C, device)
    impls = ["recompute"] + (["kernel"] if layout == "tb" else [])
    runs = {"unfused": (_unfused, copy.deepcopy(bn), copy.deepcopy(lif))}
    runs.update({impl: (_fused(impl), copy.deepcopy(bn), copy.deepcopy(lif)) for impl in impls})
    saved = {}
    for name, (fn, b, li) in runs.items():
        with tcl_fast.SavedTensorCounter(exclude=list(b.parameters())) as cnt:
            fn(layout, b, li, y)
        saved[name] = cnt.nbytes

    def step(fn, b, li):
        params = list(b.parameters())

        def run():
            s = fn(layout, b, li, y)
            torch.autograd.grad((s * w).sum(), [y, *params])
        return run

    times, _ = interleaved_medians({name: step(*r) for name, r in runs.items()}, device, rounds, min_time)
    return [{"layout": layout, "impl": name, "shape": list(shape), "saved_bytes": saved[name],
             "fwd_bwd_ms": times[name] * 1e3, "saved_ratio": saved[name] / saved["unfused"],
             "time_ratio": times[name] / times["unfused"]} for name in runs]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=5, default=[4, 8, 64, 32, 32], metavar=("T", "B", "C", "H", "W"))
    ap.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=15, help="timed samples per function (at least)")
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds to keep sampling per layout (at least)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/local/bn_lif_<device>.json)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = device_name(device)
    print(f"{name}, torch {torch.__version__}, y = {args.shape} float32, training mode")
    print(f"{'layout':<12} {'impl':<10} {'saved':>10} {'ratio':>6} {'fwd+bwd':>11} {'ratio':>6}")
    rows = []
    for layout in args.layouts:
        for r in measure(layout, tuple(args.shape), device, args.rounds, args.min_time):
            rows.append(r)
            print(f"{layout:<12} {r['impl']:<10} {r['saved_bytes'] / 2 ** 20:>6.2f} MiB {r['saved_ratio']:>6.3f} "
                  f"{r['fwd_bwd_ms']:>8.2f} ms {r['time_ratio']:>6.3f}")
    write_results(args.out, "bench_bn_lif.py", argv, device, name, rows=rows)


if __name__ == "__main__":
    main()
