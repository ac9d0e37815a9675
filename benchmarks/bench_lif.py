"""Compare the multi-step LIF backends side by side.

    python benchmarks/bench_lif.py                 # this machine's default device
    python benchmarks/bench_lif.py --quick         # a smaller grid
    python benchmarks/bench_lif.py --device cuda --neurons 4194304 --dtypes float16

For every (T, neurons, dtype) it times forward (no grad) and forward+backward
of each available backend: the PyTorch reference, torch.compile of it, the
fused C++ (CPU) or CUDA kernel, Triton, and SpikingJelly's LIFNode when it is
installed. Each row reports the speed-up over the reference measured in the
same run and the effective bandwidth (the bytes a fused kernel must move:
forward reads x and writes spikes; backward reads x and grad_spikes and writes
grad_x) as a fraction of a plain tensor copy measured in the same run. On
CUDA each function cycles through enough input sets to span 4x the L2 cache
(--input-sets), and each timed sample is 10 back-to-back calls
(--calls-per-sample).
Results: a table on stdout, and JSON in benchmarks/results/local/ (git-ignored)
unless --out names the file.
"""
from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import random
import statistics
import sys
import time

import torch

import _common  # first: puts this checkout's tcl_fast on the path
import tcl_fast  # noqa: E402
from tcl_fast import _extension  # noqa: E402
from tcl_fast.ops.lif import backend_available  # noqa: E402
from tcl_fast.ops.lif_reference import lif_multistep_reference  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def warm_heap() -> bool:
    """Keep freed large blocks in the process heap (glibc), as a training loop's
    steady state does, so that every timed call, the copy baseline's included,
    reuses memory instead of mapping fresh pages. With glibc's defaults a fresh
    32 MiB tensor page-faults on every page, at random depending on what the
    heap holds (`--cold-heap` shows it in the copy row): that noise swamped the
    kernels being compared. Returns whether it took effect.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc: leave the allocator alone
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    big = 2**31 - 1
    return bool(mallopt(M_MMAP_THRESHOLD, big)) and bool(mallopt(M_TRIM_THRESHOLD, big))


def default_input_sets(device: torch.device, x_bytes: int) -> int:
    """Input sets to cycle through: on CUDA enough that they span 4x the L2
    cache (at most 8), so repeated calls don't time a cache-resident input; on
    CPU one (its table's small sizes are meant to show the in-cache case)."""
    if device.type != "cuda":
        return 1
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 50 << 20
    return max(1, min(8, -(-4 * l2 // x_bytes)))


def write_results(out: str | None, script: str, argv, device: torch.device, name: str, **fields) -> str:
    """Write a benchmark's JSON (``--out``, else ``<script>_<device>.json``, e.g.
    lif_cpu.json for bench_lif.py, where ``_common.output_path`` puts it) with
    the device, torch, date and the command that made it; returns the path."""
    stem = os.path.splitext(script)[0].removeprefix("bench_")
    return _common.write_json(out, f"{stem}_{device.type}.json", dict(
        benchmark=stem, device=name, device_type=device.type, torch=torch.__version__,
        date=_common.utc_now(), command=_common.command_line(script, argv), **fields))


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = _common.cpu_model()
    # Which build of the C++ kernels runs (avx512, avx2 or baseline; the cpu_isa tuning knob caps it).
    isa = f", {torch.ops.tcl_fast._cpu_isa()} kernels" if _extension.has_cpp() else ""
    return f"{model} ({torch.get_num_threads()} threads{isa})"


def interleaved_medians(fns: dict, device: torch.device, rounds: int, min_time: float = 0.5,
                        calls: int = 1) -> tuple[dict, dict]:
    """Median seconds per call of every function, measured round-robin.

    Returns ``(per_call, latency)``. A sample of ``per_call`` times ``calls``
    back-to-back calls between two synchronisations, divided by ``calls``: on
    a GPU the host queues the next call's kernels while the current ones run,
    so this is the rate a training loop sustains (the kernels' time, or the
    host's when launching takes longer than the kernels run). ``latency`` times
    one call with a synchronisation on either side: kernel time plus the
    host's time to launch it, not overlapped. With ``calls=1`` (the default on
    CPU, where every call is synchronous anyway) the two are the same samples.

    Each round samples every function once, so a change in what the rest of
    the machine is doing (shared cores, CPU quota) hits all of them alike and
    the ratios between them stay meaningful. The order is shuffled every round:
    a call pays for what the call before it left in the caches and the heap
    (on the 2-core CPU VM, the same kernel timed right after the torch
    reference took 1.04-1.6x as long as when timed after another fused call),
    so no function may keep one place. The device is synchronised before every
    clock read.
    """
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in fns.values():  # warm-up (and compilation)
        fn()
    sync()
    samples = {name: [] for name in fns}
    lone = {name: [] for name in fns}
    order = list(fns)
    shuffle = random.Random(0).shuffle
    start = time.perf_counter()
    while True:
        shuffle(order)
        for name in order:
            fn = fns[name]
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            t1 = time.perf_counter()
            lone[name].append(t1 - t0)
            if calls == 1:
                samples[name].append(t1 - t0)
                continue
            for _ in range(calls):
                fn()
            sync()
            samples[name].append((time.perf_counter() - t1) / calls)
        done = len(samples[next(iter(fns))])
        if done >= rounds and (time.perf_counter() - start >= min_time or done >= 4 * rounds):
            break
    med = statistics.median
    return ({name: med(v) for name, v in samples.items()}, {name: med(v) for name, v in lone.items()})


def spikingjelly_backends(device: torch.device, dtype: torch.dtype) -> dict:
    """SpikingJelly 2.x's multi-step LIF, each implementation it can run here.

    Called through ``functional.lif_multi_step`` with a float32 membrane: that is
    the route to SpikingJelly's kernels for every input dtype (its ``LIFNode``
    keeps the membrane in the input dtype, and a 16-bit membrane falls back to
    its Python reference). On CUDA, SpikingJelly picks one implementation per
    process (env SJ_LIF_CUDA_IMPLEMENTATION: native ``cuda`` when its extension
    was built from source, else ``triton``, else ``torch``); to time each one
    side by side we select each once and swap the cached selection in before
    every call (a private detail of SpikingJelly 2.0, so any failure just skips
    that implementation, with the reason printed once).
    """
    try:
        from spikingjelly.activation_based import functional as sjf
    except ImportError:
        return {}
    if not hasattr(sjf, "lif_multi_step"):
        print("spikingjelly: no functional.lif_multi_step (need SpikingJelly 2.x); skipped")
        return {}

    def make_run(before=None):
        def run(x):
            if before is not None:
                before()
            v = torch.zeros(x.shape[1:], dtype=torch.float32, device=x.device)
            return sjf.lif_multi_step(x, v, 2.0, True, 1.0, 0.0, None, False, False)[0]
        return run

    if device.type != "cuda":
        return {"spikingjelly": make_run()}
    try:
        from spikingjelly._ops.lif import _selection as selection
        index = device.index if device.index is not None else torch.cuda.current_device()
        requested = selection._requested
    except Exception as exc:  # noqa: BLE001 - a different SpikingJelly layout
        print(f"spikingjelly: cannot select implementations ({exc!r}); timing its default")
        return {"spikingjelly": make_run()}
    out = {}
    for name in ("cuda", "triton", "torch"):
        try:
            selection._requested = name
            selection._selections.pop(index, None)
            chosen = selection._get_cuda_selection(device)
            if chosen.name != name:
                raise RuntimeError(f"selected {chosen.name}")

            def swap_in(chosen=chosen):
                selection._selections[index] = chosen

            run = make_run(swap_in)
            run(torch.zeros(2, 4, device=device, dtype=dtype))
            out[f"spikingjelly-{name}"] = run
        except Exception as exc:  # noqa: BLE001 - report and carry on
            if name not in _SJ_REPORTED:
                _SJ_REPORTED.add(name)
                print(f"spikingjelly-{name}: unavailable here ({str(exc).splitlines()[0][:160]})")
        finally:
            selection._requested = requested
            selection._selections.pop(index, None)
    return out


_SJ_REPORTED: set = set()


# The same kernels under other settings, timed side by side: tcl_fast.ops.tuning
# knobs set around the whole call (forward and backward). CUDA with one neuron
# per thread, or at most 2 per backward thread; C++ with 128-neuron groups only
# (no wide groups for large N), or wide groups at any T.
BACKEND_TUNING = {"cuda-unpacked": ("cuda", {"cuda_packed": False}),
                  "cuda-bwd2": ("cuda", {"cuda_bwd_lanes": 2}),
                  "cpp-narrow": ("cpp", {"cpu_groups": "narrow"}),
                  "cpp-wide": ("cpp", {"cpu_groups": "wide"})}
OPT_IN = {"cpp-wide"}  # timed only when --backends names them


def backend_tuning(name: str):
    """The knobs of row `name` set for a with-block (none for the other rows)."""
    knobs = BACKEND_TUNING.get(name, (None, {}))[1]
    return tcl_fast.ops.tuning(**knobs) if knobs else contextlib.nullcontext()


def make_backends(device: torch.device, dtype: torch.dtype, use_compile: bool, plif: bool = False,
                  op_path: bool = False):
    """name -> callable(x) returning spikes; only those that run here.

    plif: also each fused backend with a learnable tau (`<name>-plif`), whose
    backward computes the tau gradient (on CUDA, one neuron per thread).
    op_path: also the C++/CUDA op called through the dispatcher (`<name>-op`),
    whose autograd is torch.library's generic wrapper, where
    ``tcl_fast.lif_multistep`` takes a leaner Function in eager mode: the same
    kernels, more host time per call."""
    backends = {"torch": lambda x: lif_multistep_reference(x)[0]}
    if use_compile:
        backends["torch.compile"] = torch.compile(lambda x: lif_multistep_reference(x)[0], dynamic=False)
    for name in ("cpp", "cuda", "triton"):
        if backend_available(name, device, dtype):
            backends[name] = (lambda b: lambda x: tcl_fast.lif_multistep(x, backend=b))(name)
            if plif:
                tau = torch.tensor(2.0, device=device, requires_grad=True)
                backends[name + "-plif"] = (
                    lambda b, tau: lambda x: tcl_fast.lif_multistep(x, tau=tau, backend=b))(name, tau)
    if op_path:
        decay = torch.tensor(0.5, device=device)  # tau = 2, as the other rows
        for name in ("cpp", "cuda"):
            if name in backends:
                backends[name + "-op"] = lambda x: torch.ops.tcl_fast.lif_forward(
                    x, None, decay, 1.0, 0.0, True, True, False, 0, 4.0, 0.0, False)[0]
    for name, (base, _) in BACKEND_TUNING.items():  # the same kernels, other settings
        if base in backends:
            backends[name] = backends[base]
    backends.update(spikingjelly_backends(device, dtype))
    return backends


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--T", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--neurons", type=int, nargs="+", default=None,
                    help="neurons per time step (default: CPU 2^16 2^20; CUDA 2^20 and SpikingJelly's 64x65536)")
    ap.add_argument("--dtypes", nargs="+", default=None, choices=list(DTYPES))
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--calls-per-sample", type=int, default=None,
                    help="back-to-back calls per timed sample (default: 1 on CPU, 10 on CUDA, where "
                         "the host then launches ahead of the GPU as in training; the JSON also "
                         "keeps each call's latency, timed alone between two synchronisations)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile of the reference")
    ap.add_argument("--quick", action="store_true", help="T in {4, 8}, one size")
    ap.add_argument("--plif", action="store_true",
                    help="also time each fused backend with a learnable tau (<name>-plif)")
    ap.add_argument("--input-sets", type=int, default=None,
                    help="inputs each function cycles through (default: CUDA enough to span 4x the "
                         "L2 cache, at most 8; CPU 1)")
    ap.add_argument("--op-path", action="store_true",
                    help="also each C++/CUDA kernel called as the op through the dispatcher "
                         "(<name>-op: torch.library's autograd wrapper instead of lif_multistep's)")
    ap.add_argument("--backends", nargs="+", default=None,
                    help="time only these (names as in the table; torch always runs)")
    ap.add_argument("--cold-heap", action="store_true",
                    help="CPU: leave glibc's allocator at its defaults (large tensors freshly mapped, page faults)")
    ap.add_argument("--out", default=None, help="JSON path (default benchmarks/results/local/lif_<device>.json)")
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but no GPU is visible")
    if args.neurons is None:
        args.neurons = [1 << 16, 1 << 20] if device.type == "cpu" else [1 << 20, 64 * 65536]
    if args.dtypes is None:
        args.dtypes = ["float32", "bfloat16"] if device.type == "cpu" else ["float32", "float16", "bfloat16"]
    if args.calls_per_sample is None:
        args.calls_per_sample = 1 if device.type == "cpu" else 10
    if args.calls_per_sample < 1:
        ap.error("--calls-per-sample must be >= 1")
    if args.quick:
        args.T = [t for t in args.T if t <= 8] or args.T[:1]
        args.neurons = args.neurons[-1:]
    heap_warm = device.type == "cpu" and not args.cold_heap and warm_heap()
    name = device_name(device)
    print(f"device: {name}; torch {torch.__version__}" + ("; warm heap" if heap_warm else "")
          + (f"; {args.calls_per_sample} back-to-back calls per sample" if args.calls_per_sample > 1 else ""))

    rows = []
    header = (f"{'dtype':>8} {'T':>3} {'neurons':>9} {'backend':>22} {'fwd ms':>9} {'fwd x':>7} "
              f"{'fwd %copy':>9} {'f+b ms':>9} {'f+b x':>7} {'f+b %copy':>9}")
    print(header)
    print("-" * len(header))
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        for T in args.T:
            for N in args.neurons:
                torch._dynamo.reset()  # one fresh compile per shape, not a recompile chain
                backends = make_backends(device, dtype, not args.no_compile, args.plif, args.op_path)
                if args.backends:  # the torch reference stays: it is the speed-up baseline
                    backends = {k: v for k, v in backends.items()
                                if k == "torch" or k in args.backends}
                else:
                    backends = {k: v for k, v in backends.items() if k not in OPT_IN}
                torch.manual_seed(0)
                esize = torch.empty((), dtype=dtype).element_size()
                sets = args.input_sets or default_input_sets(device, T * N * esize)
                # Calls cycle through `sets` inputs (each with its grad), so a call
                # never finds its input still in a cache the previous one filled.
                xs = [(torch.randn(T, N, device=device) * 1.5 + 0.4).to(dtype) for _ in range(sets)]
                grads = [torch.randn_like(xs[0]) for _ in range(sets)]
                xgs = [x_.detach().clone().requires_grad_() for x_ in xs]
                x = xs[0]

                def cycler():
                    return itertools.cycle(range(sets)).__next__

                # clone, not copy_ into a kept buffer: every backend allocates its
                # outputs per call, so the copy baseline pays for allocation too.
                fns = {"copy": lambda nxt=cycler(): xs[nxt()].clone()}
                for bname, fn in backends.items():
                    def forward(fn=fn, bname=bname, nxt=cycler()):
                        with torch.no_grad(), backend_tuning(bname):
                            fn(xs[nxt()])

                    def forward_backward(fn=fn, bname=bname, nxt=cycler()):
                        i = nxt()
                        xgs[i].grad = None
                        with backend_tuning(bname):
                            fn(xgs[i]).backward(grads[i])

                    fns[(bname, "fwd")] = forward
                    fns[(bname, "fb")] = forward_backward
                try:
                    medians, latency = interleaved_medians(fns, device, args.repeats,
                                                           calls=args.calls_per_sample)
                except Exception as exc:  # report, don't abort the whole table
                    print(f"{dtype_name:>8} {T:>3} {N:>9}  failed: {type(exc).__name__}: {exc}")
                    continue
                copy_s = medians["copy"]
                copy_bw = 2 * x.numel() * esize / copy_s
                results = {b: (medians[(b, "fwd")], medians[(b, "fb")]) for b in backends}
                base_fwd, base_fb = results.get("torch", (float("nan"), float("nan")))
                for bname, (fwd_s, fb_s) in results.items():
                    fwd_bw = 2 * x.numel() * esize / fwd_s
                    fb_bw = 5 * x.numel() * esize / fb_s
                    row = dict(dtype=dtype_name, T=T, neurons=N, backend=bname, input_sets=sets,
                               forward_ms=fwd_s * 1e3, forward_backward_ms=fb_s * 1e3,
                               forward_latency_ms=latency[(bname, "fwd")] * 1e3,
                               forward_backward_latency_ms=latency[(bname, "fb")] * 1e3,
                               forward_speedup_vs_torch=base_fwd / fwd_s,
                               forward_backward_speedup_vs_torch=base_fb / fb_s,
                               forward_bandwidth_gbs=fwd_bw / 1e9, forward_backward_bandwidth_gbs=fb_bw / 1e9,
                               copy_bandwidth_gbs=copy_bw / 1e9,
                               forward_fraction_of_copy=fwd_bw / copy_bw,
                               forward_backward_fraction_of_copy=fb_bw / copy_bw)
                    rows.append(row)
                    print(f"{dtype_name:>8} {T:>3} {N:>9} {bname:>22} {fwd_s * 1e3:>9.3f} "
                          f"{row['forward_speedup_vs_torch']:>6.1f}x {100 * row['forward_fraction_of_copy']:>8.0f}% "
                          f"{fb_s * 1e3:>9.3f} {row['forward_backward_speedup_vs_torch']:>6.1f}x "
                          f"{100 * row['forward_backward_fraction_of_copy']:>8.0f}%")
                print(f"{'':>8} {'':>3} {'':>9} {'(copy)':>22} {copy_s * 1e3:>9.3f}   copy {copy_bw / 1e9:.1f} GB/s"
                      + (f"; one call alone {latency['copy'] * 1e3:.3f} ms" if args.calls_per_sample > 1 else ""))

    write_results(args.out, "bench_lif.py", argv, device, name,
                  bytes_model="forward 2*T*N*elem (read x, write spikes); forward+backward 5*T*N*elem",
                  warm_heap=heap_warm, calls_per_sample=args.calls_per_sample, rows=rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
