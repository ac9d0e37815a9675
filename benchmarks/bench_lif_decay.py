"""What a learnt tau per channel (PLIF, ``channels=C``) costs against one per layer.

    python benchmarks/bench_lif_decay.py                         # x = [4, 8, 64, 32, 32], CPU
    python benchmarks/bench_lif_decay.py --shape 8 32 128 16 16 --dtypes float32 bfloat16

Per dtype, timed round-robin in one run (median of interleaved samples):

* ``copy``          x.clone() + the gradient's clone: the memory-traffic floor
* ``fixed``         LIFMultiStep(tau=2): scalar decay, no decay gradient
* ``shared``        LIFMultiStep(learnable_tau=True): one w, its gradient
* ``per-channel``   LIFMultiStep(learnable_tau=True, channels=C): w of [C]

each as forward and as forward + backward (x and w gradients), with the
ratio to ``shared``. The per-channel decay runs the kernels' Lanewise drivers
(csrc/lif_math.h), the others the scalar ones. On a GPU the same rows report
GB/s against the device's peak (--peak-gbs). JSON to --out, else
benchmarks/results/local/lif_decay_<device>.json (git-ignored).
"""
from __future__ import annotations

import argparse

import torch

import _common  # noqa: F401  (first: puts this checkout's tcl_fast on the path)
from bench_lif import device_name, interleaved_medians, write_results  # noqa: E402

import tcl_fast  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# HBM peaks (GB/s, vendor data sheets) of the GPUs this project is lent; --peak-gbs overrides.
PEAK_GBS = {"H200": 4800.0, "H100 80GB HBM3": 3350.0, "H100 PCIe": 2000.0}


def peak_gbs(name: str) -> float | None:
    return next((v for k, v in PEAK_GBS.items() if k in name), None)


def _cases(x, C):
    mods = {"fixed": tcl_fast.LIFMultiStep(),
            "shared": tcl_fast.LIFMultiStep(learnable_tau=True),
            "per-channel": tcl_fast.LIFMultiStep(learnable_tau=True, channels=C)}
    mods = {k: m.to(x.device) for k, m in mods.items()}
    g = torch.randn_like(x)
    xr = x.detach().clone().requires_grad_()

    def fwd(m):
        def run():
            with torch.no_grad():
                m(x)
        return run

    def fwd_bwd(m):
        params = list(m.parameters())

        def run():
            s = m(xr)
            torch.autograd.grad(s, [xr, *params], g)
        return run

    def copy_fwd():
        x.clone()

    def copy_fwd_bwd():
        x.clone(), g.clone()

    fwds = {"copy": copy_fwd, **{k: fwd(m) for k, m in mods.items()}}
    fwd_bwds = {"copy": copy_fwd_bwd, **{k: fwd_bwd(m) for k, m in mods.items()}}
    return fwds, fwd_bwds


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs="+", default=[4, 8, 64, 32, 32], help="T B C [H W]")
    ap.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["float32", "bfloat16"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--min-time", type=float, default=3.0)
    ap.add_argument("--peak-gbs", type=float, default=None, help="device memory bandwidth peak, GB/s (GPU)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if len(args.shape) < 3:
        ap.error("--shape needs at least T B C")
    device = torch.device(args.device)
    name = device_name(device)
    if args.peak_gbs is None and device.type == "cuda":
        args.peak_gbs = peak_gbs(name)
    print(f"{name}, torch {torch.__version__}, x = {args.shape}"
          + (f", peak {args.peak_gbs:.0f} GB/s" if args.peak_gbs else ""))
    print(f"{'dtype':<9} {'variant':<12} {'fwd ms':>8} {'vs shared':>9} {'fwd+bwd ms':>11} {'vs shared':>9}"
          + (f" {'fwd GB/s':>9}" if device.type == "cuda" else ""))
    rows = []
    for dname in args.dtypes:
        g = torch.Generator().manual_seed(0)
        x = (torch.randn(args.shape, generator=g) * 1.5 + 0.4).to(device=device, dtype=DTYPES[dname])
        fwds, fwd_bwds = _cases(x, args.shape[2])
        f, _ = interleaved_medians(fwds, device, args.rounds, args.min_time)
        fb, _ = interleaved_medians(fwd_bwds, device, args.rounds, args.min_time)
        for variant in fwds:
            row = dict(dtype=dname, variant=variant, shape=args.shape, fwd_ms=f[variant] * 1e3,
                       fwd_bwd_ms=fb[variant] * 1e3, fwd_vs_shared=f[variant] / f["shared"],
                       fwd_bwd_vs_shared=fb[variant] / fb["shared"])
            # forward reads x and writes the spikes: 2 tensors of x's size
            row["fwd_gbs"] = 2 * x.numel() * x.element_size() / f[variant] / 1e9
            if args.peak_gbs:
                row["fwd_frac_of_peak"] = row["fwd_gbs"] / args.peak_gbs
            rows.append(row)
            print(f"{dname:<9} {variant:<12} {row['fwd_ms']:>8.3f} {row['fwd_vs_shared']:>9.2f} "
                  f"{row['fwd_bwd_ms']:>11.3f} {row['fwd_bwd_vs_shared']:>9.2f}"
                  + (f" {row['fwd_gbs']:>9.1f}" if device.type == "cuda" else ""))
    write_results(args.out, "bench_lif_decay.py", argv, device, name, rows=rows)


if __name__ == "__main__":
    main()
