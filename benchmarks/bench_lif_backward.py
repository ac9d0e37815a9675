"""Time the LIF backward op alone, per surrogate and dtype, on the CPU.

    python benchmarks/bench_lif_backward.py            # T=8, 2^20 neurons
    python benchmarks/bench_lif_backward.py --T 32

Shows what the backward's compute costs beside its memory traffic: the
sigmoid surrogate (an exp and a divide per element) against the cheaper ones.
Calls torch.ops.tcl_fast.lif_forward / lif_backward directly (no autograd),
median of repeated calls after a warm-up. Freed outputs stay in the heap (the
warm state a training loop sees; bench_lif.warm_heap), else each fresh 32 MiB
output pays its page faults on this kind of VM; --cold-heap turns that off.
Each dtype's rows start with a plain copy of x (ms and GB/s), the yardstick
that makes runs on different days comparable. Prints a table and writes JSON
(default benchmarks/results/local/lif_backward_cpu.json).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import _common  # noqa: F401  (first: puts this checkout's tcl_fast on the path)
from bench_lif import device_name, warm_heap, write_results  # noqa: E402  (this script's folder is on sys.path)
from tcl_fast import _extension  # noqa: E402
from tcl_fast.ops.lif_reference import DEFAULT_ALPHA, DEFAULT_BETA, SURROGATES  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def median_ms(fn, repeats: int) -> float:
    fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--T", type=int, default=8)
    ap.add_argument("--neurons", type=int, default=1 << 20)
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--cold-heap", action="store_true", help="leave glibc's allocator at its defaults")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if not _extension.has_cpp():
        ap.error(f"tcl_fast._C is not built: {_extension.load_error()}")

    device = torch.device("cpu")
    heap_warm = not args.cold_heap and warm_heap()
    name = device_name(device)
    print(f"device: {name}; torch {torch.__version__}; T={args.T}, neurons={args.neurons}; "
          f"warm heap: {heap_warm}")
    ops = torch.ops.tcl_fast
    decay = torch.tensor(0.5)
    rows = []
    print(f"{'dtype':>9} {'op':>9} {'surrogate':>10} {'ms':>8}")
    for dname in args.dtypes:
        dtype = DTYPES[dname]
        g = torch.Generator().manual_seed(0)
        x = (torch.randn(args.T, args.neurons, generator=g) * 1.5 + 0.4).to(dtype)
        grad_s = torch.randn(args.T, args.neurons, generator=g).to(dtype)
        # The VM's memory bandwidth moves from day to day (and with its
        # neighbours' load), and these times with it: a plain copy of x, timed
        # in the same run, is the yardstick that makes two runs comparable.
        ms = median_ms(lambda: x.clone(), args.repeats)
        copy_gbs = 2 * x.numel() * x.element_size() / (ms * 1e-3) / 1e9
        rows.append(dict(dtype=dname, op="copy", surrogate=None, ms=ms, copy_bandwidth_gbs=copy_gbs))
        print(f"{dname:>9} {'copy':>9} {'-':>10} {ms:>8.2f}   ({copy_gbs:.1f} GB/s)")
        ms = median_ms(lambda: ops.lif_forward(x, None, decay, 1.0, 0.0, True, True, False, 0, 4.0, 0.0, False),
                       args.repeats)
        rows.append(dict(dtype=dname, op="forward", surrogate=None, ms=ms))
        print(f"{dname:>9} {'forward':>9} {'-':>10} {ms:>8.2f}")
        for sid, sname in enumerate(SURROGATES):
            alpha, beta = DEFAULT_ALPHA[sname], DEFAULT_BETA.get(sname, 0.0)
            ms = median_ms(lambda: ops.lif_backward(grad_s, None, x, None, decay, 1.0, 0.0, True, True,
                                                    False, sid, alpha, beta, False, False), args.repeats)
            rows.append(dict(dtype=dname, op="backward", surrogate=sname, ms=ms))
            print(f"{dname:>9} {'backward':>9} {sname:>10} {ms:>8.2f}")
    write_results(args.out, "bench_lif_backward.py", argv, device, name, T=args.T,
                  neurons=args.neurons, warm_heap=heap_warm, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
