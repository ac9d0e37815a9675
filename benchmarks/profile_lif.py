"""Where the time of one LIF forward+backward goes: kernels vs the host.

    python benchmarks/profile_lif.py --device cuda --T 4 32 --dtypes float16 float32

bench_lif.py times whole calls. This script runs a few forward+backward calls
of each backend under torch.profiler and splits them into

* the time of every kernel the call launched (on CUDA: device time per call,
  by kernel name; on CPU, where there is no such split, the time inside the
  tcl_fast ops for the fused backends and inside ``aten::copy_`` for the copy,
  and none for backends made of many small ops), and
* the host's wall-clock time per call, with the device synchronised around
  the calls (launch overhead + kernels when they don't overlap).

Kernel bandwidth counts the bytes a fused forward+backward must move (5·T·N
elements: read x, write spikes; read x and grad_spikes, write grad_x) over
the summed kernel time, as a fraction of the bandwidth the copy kernel of
``x.clone()`` reaches in the same run. Table on stdout, JSON in
benchmarks/results/local/profile_lif_<device>.json unless --out names the file.

It is a GPU diagnostic (benchmarks/gpu_check.sh runs it). On the 2-core CPU
VM its numbers swing several-fold from run to run under the profiler; there,
use bench_lif.py's side-by-side medians. Its CPU mode exists so the tests
run it.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

import _common  # noqa: F401  (first: puts this checkout's tcl_fast on the path)
from bench_lif import (  # noqa: E402
    DTYPES, default_input_sets, device_name, make_backends, warm_heap, write_results)

# On CPU a fused backend's work happens inside these ops (their inclusive
# time); the rest of a call is dispatch, autograd and allocation.
CPU_FUSED_OPS = ("tcl_fast::lif_forward", "tcl_fast::lif_backward",
                 "tcl_fast::lif_forward_triton", "tcl_fast::lif_backward_triton")


def _device_us(event) -> float:
    for attr in ("device_time_total", "cuda_time_total"):  # renamed in torch 2.4
        value = getattr(event, attr, None)
        if value is not None:
            return float(value)
    return 0.0


def nan_to_none(value: float):
    """JSON has no NaN: a figure that could not be measured is null."""
    return None if value != value else value


def profile_calls(fn, device: torch.device, calls: int, cpu_work_ops=CPU_FUSED_OPS) -> dict:
    """Kernel time per call (by name) and host wall time per call of ``fn``.

    On CPU the "kernels" are the ops named in ``cpu_work_ops``."""
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            fn()
        sync()
    kernels = {}
    for event in prof.events():
        # On CUDA only the device's own events (kernels, memsets, copies): a host
        # op's device time is the sum of its kernels, which would count them twice.
        if device.type == "cuda":
            us = _device_us(event) if event.device_type == DeviceType.CUDA else 0.0
        else:
            us = float(event.cpu_time_total) if event.name in cpu_work_ops else 0.0
        if us > 0:
            kernels[event.name] = kernels.get(event.name, 0.0) + us / calls
    sync()  # wall clock without the profiler
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    host_us = (time.perf_counter() - t0) / calls * 1e6
    kernel_us = sum(kernels.values()) if kernels else float("nan")
    return dict(kernels_us=kernels, kernel_us=kernel_us, wall_us=host_us)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--T", type=int, nargs="+", default=[4, 32])
    ap.add_argument("--neurons", type=int, default=None, help="default: CUDA 64x65536, CPU 2^20")
    ap.add_argument("--dtypes", nargs="+", default=["float32"], choices=list(DTYPES))
    ap.add_argument("--calls", type=int, default=20)
    ap.add_argument("--backends", nargs="+", default=None, help="names as in bench_lif.py")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but no GPU is visible")
    N = args.neurons or (64 * 65536 if device.type == "cuda" else 1 << 20)
    if device.type == "cpu":
        warm_heap()  # as in bench_lif: reuse memory instead of page-faulting fresh tensors
    name = device_name(device)
    print(f"device: {name}; torch {torch.__version__}; {args.calls} calls profiled per row")
    header = (f"{'dtype':>8} {'T':>3} {'backend':>20} {'kernel us':>10} {'kernel GB/s':>11} "
              f"{'% copy krn':>10} {'wall us':>9}  kernels (us per call)")
    print(header)
    print("-" * len(header))
    with profile(activities=[ProfilerActivity.CPU]):  # the profiler's own first-use cost
        torch.ones(1, device=device).add_(1)
    rows = []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        for T in args.T:
            torch.manual_seed(0)
            # As in bench_lif: calls cycle through input sets spanning 4x the L2.
            sets = default_input_sets(device, T * N * torch.empty((), dtype=dtype).element_size())
            xs = [(torch.randn(T, N, device=device) * 1.5 + 0.4).to(dtype) for _ in range(sets)]
            grads = [torch.randn_like(xs[0]) for _ in range(sets)]
            xgs = [x_.detach().clone().requires_grad_() for x_ in xs]
            x = xs[0]
            moved = 5 * x.numel() * x.element_size()
            nxt = itertools.cycle(range(sets)).__next__
            copy = profile_calls(lambda: xs[nxt()].clone(), device, args.calls, cpu_work_ops=("aten::copy_",))
            copy_bw = 2 * x.numel() * x.element_size() / (copy["kernel_us"] * 1e-6)
            print(f"{dtype_name:>8} {T:>3} {'(copy)':>20} {copy['kernel_us']:>10.1f} {copy_bw / 1e9:>11.0f} "
                  f"{'100%':>10} {copy['wall_us']:>9.1f}")
            backends = make_backends(device, dtype, use_compile=False)
            if args.backends:
                backends = {k: v for k, v in backends.items() if k in args.backends}
            for bname, fn in backends.items():
                def forward_backward(fn=fn, nxt=itertools.cycle(range(sets)).__next__):
                    i = nxt()
                    xgs[i].grad = None
                    fn(xgs[i]).backward(grads[i])

                try:
                    r = profile_calls(forward_backward, device, args.calls)
                except Exception as exc:  # noqa: BLE001 - report, keep the other rows
                    print(f"{dtype_name:>8} {T:>3} {bname:>20}  failed: {type(exc).__name__}: {exc}")
                    continue
                bw = moved / (r["kernel_us"] * 1e-6)  # nan: no kernel time to split out (CPU)
                detail = ", ".join(f"{k[:48]}: {v:.1f}" for k, v in
                                   sorted(r["kernels_us"].items(), key=lambda kv: -kv[1]))
                print(f"{dtype_name:>8} {T:>3} {bname:>20} {r['kernel_us']:>10.1f} {bw / 1e9:>11.0f} "
                      f"{100 * bw / copy_bw:>9.0f}% {r['wall_us']:>9.1f}  {detail}")
                rows.append(dict(dtype=dtype_name, T=T, neurons=N, backend=bname, mode="forward_backward",
                                 kernel_us=nan_to_none(r["kernel_us"]), kernels_us=r["kernels_us"],
                                 wall_us=r["wall_us"], kernel_bandwidth_gbs=nan_to_none(bw / 1e9),
                                 copy_kernel_us=copy["kernel_us"], copy_kernel_bandwidth_gbs=copy_bw / 1e9,
                                 kernel_fraction_of_copy=nan_to_none(bw / copy_bw)))
    write_results(args.out, "profile_lif.py", argv, device, name,
                  bytes_model="forward+backward 5*T*N*elem over the summed kernel time", rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
