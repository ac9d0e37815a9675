#!/usr/bin/env python
"""Naive vs fused supervised-contrastive loss: time, peak extra memory, FLOP/s.

    python benchmarks/bench_supcon.py                 # full sweep on the default device
    python benchmarks/bench_supcon.py --quick         # a few sizes
    python benchmarks/bench_supcon.py --device cpu --sizes 1024 16384 --dims 128

Methods, all on the same inputs (labels drawn from 100 classes, temperature 0.1):

* ``naive``          - tcl_fast.ops.supcon_reference (builds the N x N matrices)
* ``naive_compiled`` - torch.compile of the same function
* ``fused``          - tcl_fast.supcon_loss, backend "auto" (Triton on CUDA,
                       row-blocked torch on CPU)
* ``matmul``         - one plain ``torch.matmul`` of [N, D] x [D, N], the FLOP/s
                       yardstick (in the dtype the fused path multiplies in:
                       the input dtype on CUDA, float32 on CPU where the blocked
                       path upcasts)

Every case runs in its own subprocess so one case's memory can't leak into the
next one's numbers, and an out-of-memory only loses that case.

Peak extra memory is measured around one call after warm-up, relative to what
was allocated just before it (inputs, and on CUDA the compiled kernels, are not
counted):

* CUDA: ``torch.cuda.max_memory_allocated()`` minus ``memory_allocated()``.
* CPU: the process's resident-set high-water mark (VmHWM in /proc/self/status),
  reset just before the call by writing 5 to /proc/self/clear_refs, minus VmRSS
  at that moment. The subprocess runs with MALLOC_MMAP_THRESHOLD_=131072 so every
  large buffer is its own mmap and is given back to the OS when freed; RSS then
  tracks live tensor memory instead of malloc's cached arenas.

FLOPs count the matrix products: 2*N^2*D for the forward and 6*N^2*D for
forward+backward (naive: x x^T, then G x and G^T x; fused: the tile product,
its recomputation in the backward and the weighted sum). The FLOP/s fraction
divides by the ``matmul`` rate measured in the same run.

Naive cases whose estimated memory (from the largest naive case measured at the
same D/dtype/mode, scaled by N^2) exceeds ``--naive-memory-budget`` are not
run; their memory appears in the table as an estimate, marked ``~``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import _common

FULL_SIZES = {"cpu": [512, 1024, 2048, 4096, 8192, 16384],
              "cuda": [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]}
QUICK_SIZES = {"cpu": [1024, 4096, 16384], "cuda": [1024, 16384, 65536]}
MODES = ("fwd", "fwd+bwd")
TEMPERATURE = 0.1
NUM_CLASSES = 100


def matmul_flops(n: int, d: int, mode: str) -> float:
    return 2.0 * n * n * d * (3 if mode == "fwd+bwd" else 1)


# --------------------------------------------------------------------------
# Worker: one case, in its own process
# --------------------------------------------------------------------------
def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def run_case(case: dict) -> dict:
    import torch

    from tcl_fast.ops.supcon import resolve_supcon_backend, supcon_loss
    from tcl_fast.ops.supcon_reference import supcon_loss_reference

    if case.get("threads"):
        torch.set_num_threads(case["threads"])
    if case.get("tf32"):
        torch.set_float32_matmul_precision("high")  # cuBLAS and the Triton kernels alike
    method, n, d, mode = case["method"], case["n"], case["d"], case["mode"]
    device = torch.device(case["device"])
    dtype = getattr(torch, case["dtype"])
    on_cuda = device.type == "cuda"

    generator = torch.Generator().manual_seed(0)
    z = torch.randn(n, d, generator=generator).to(device=device, dtype=dtype)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=generator).to(device)
    info: dict = {}

    if method == "matmul":
        matmul_dtype = dtype if on_cuda else torch.float32
        a = z.to(matmul_dtype)
        b = a.T.contiguous()
        info["matmul_dtype"] = str(matmul_dtype).replace("torch.", "")

        def step():
            return torch.matmul(a, b)
    else:
        if method == "naive":
            def loss_fn(x):
                return supcon_loss_reference(x, labels, TEMPERATURE)
        elif method == "naive_compiled":
            loss_fn = torch.compile(lambda x: supcon_loss_reference(x, labels, TEMPERATURE))
        elif method == "fused":
            info["backend"] = resolve_supcon_backend("auto", device, dtype)

            def loss_fn(x):
                return supcon_loss(x, labels, TEMPERATURE)
        else:
            raise ValueError(f"unknown method {method!r}")

        if mode == "fwd":
            def step():
                with torch.no_grad():
                    return loss_fn(z)
        else:
            z_leaf = z.clone().requires_grad_(True)

            def step():
                z_leaf.grad = None
                loss = loss_fn(z_leaf)
                loss.backward()
                return loss

    def sync():
        if on_cuda:
            torch.cuda.synchronize(device)

    # Warm-up: compilation, Triton autotuning, allocator growth.
    for _ in range(2 if on_cuda else 1):
        step()
    sync()
    if mode == "fwd+bwd" and method != "matmul":
        z_leaf.grad = None

    # One call for the memory high-water mark.
    if on_cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        out = step()
        sync()
        peak_extra = torch.cuda.max_memory_allocated(device) - before
    else:
        _reset_peak_rss()
        before = _proc_status_kib("VmRSS")
        out = step()
        peak_extra = (_proc_status_kib("VmHWM") - before) * 1024
    del out

    # Timing: repeat until the budget is spent (at least min_repeats calls).
    times = []
    budget_s = case["time_budget_s"]
    start = time.perf_counter()
    while len(times) < case["min_repeats"] or (time.perf_counter() - start < budget_s
                                              and len(times) < case["max_repeats"]):
        if on_cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            step()
            end.record()
            torch.cuda.synchronize(device)
            times.append(begin.elapsed_time(end) / 1000.0)
        else:
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)

    median = statistics.median(times)
    return dict(case, status="ok", time_s=median, repeats=len(times), min_time_s=min(times),
                peak_extra_bytes=int(peak_extra), flops=matmul_flops(n, d, mode),
                flops_per_s=matmul_flops(n, d, mode if method != "matmul" else "fwd") / median,
                **info)


def _worker_main(case_json: str) -> None:
    case = json.loads(case_json)
    try:
        result = run_case(case)
    except Exception as exc:  # reported, not fatal: e.g. an OOM on one size
        kind = "oom" if "out of memory" in str(exc).lower() else "error"
        result = dict(case, status=kind, error=f"{type(exc).__name__}: {str(exc)[:300]}")
    print("RESULT " + json.dumps(result), flush=True)


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------
def _device_info(device: str) -> dict:
    import torch

    info = {"device": device, "torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device == "cuda":
        info["device_name"] = torch.cuda.get_device_name()
        info["device_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
        info["tf32_matmul"] = None  # filled in from --tf32 by main()
    else:
        info["device_name"] = f"{_common.cpu_model()}, {os.cpu_count()} logical cores"
        info["torch_threads"] = torch.get_num_threads()
        with open("/proc/loadavg") as loadavg:
            info["load_average_at_start"] = loadavg.read().split()[:3]
        with open("/proc/meminfo") as meminfo:
            info["device_memory_bytes"] = int(meminfo.readline().split()[1]) * 1024
    return info


def _run_in_subprocess(case: dict, timeout_s: float) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    try:
        proc = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(case)],
            capture_output=True, text=True, timeout=timeout_s, env=env,
        )
    except subprocess.TimeoutExpired:
        return dict(case, status="timeout")
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (proc.stderr or proc.stdout)[-400:]
    status = "oom" if proc.returncode in (-9, 137) else "error"
    return dict(case, status=status, error=f"exit {proc.returncode}: {tail}")


def _fmt_bytes(value: float | None, estimated: bool = False) -> str:
    if value is None:
        return "-"
    text = f"{value / 2**20:.1f}M" if value < 2**30 else f"{value / 2**30:.2f}G"
    return ("~" + text) if estimated else text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--quick", action="store_true", help="a few sizes, D=128 only")
    parser.add_argument("--sizes", type=int, nargs="+", help="override the N sweep")
    parser.add_argument("--dims", type=int, nargs="+", help="override D (default 128 256)")
    parser.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16", "float16"),
                        default=["float32", "bfloat16"])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--methods", nargs="+",
                        choices=("naive", "naive_compiled", "fused", "matmul"),
                        default=["naive", "naive_compiled", "fused", "matmul"])
    parser.add_argument("--naive-memory-budget", type=float, default=None,
                        help="GiB; naive cases estimated above it are skipped "
                             "(default: 4 on CPU, 85%% of GPU memory on CUDA)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds of timed repeats per case (default 1 CPU, 0.5 CUDA)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads in each case (default: torch's choice); "
                             "1 gives stable CPU numbers on a machine shared with other jobs")
    parser.add_argument("--tf32", action="store_true",
                        help="allow TF32 for float32 matmuls (yardstick and fused alike)")
    parser.add_argument("--case-timeout", type=float, default=900.0)
    parser.add_argument("--out", help="JSON path (default benchmarks/results/local/supcon_<device>.json)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker is not None:
        _worker_main(args.worker)
        return 0

    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    info = _device_info(device)
    sizes = args.sizes or (QUICK_SIZES if args.quick else FULL_SIZES)[device]
    dims = args.dims or ([128] if args.quick else [128, 256])
    if args.naive_memory_budget is not None:
        naive_budget = args.naive_memory_budget * 2**30
    else:
        naive_budget = 4 * 2**30 if device == "cpu" else 0.85 * info["device_memory_bytes"]
    time_budget = args.time_budget if args.time_budget is not None else (
        1.0 if device == "cpu" else 0.5)
    base_case = dict(device=device, time_budget_s=time_budget, threads=args.threads,
                     tf32=args.tf32,
                     min_repeats=2 if device == "cpu" else 5,
                     max_repeats=20 if device == "cpu" else 100)

    if args.threads:
        info["torch_threads"] = args.threads
    if device == "cuda":
        info["tf32_matmul"] = args.tf32
    print(f"device: {info['device_name']} ({device}); torch {info['torch']}, "
          f"triton {info['triton']}", flush=True)
    results = []
    for d in dims:
        for dtype in args.dtypes:
            for n in sorted(sizes):
                if "matmul" in args.methods:
                    matmul_bytes = n * n * (4 if device == "cpu" or dtype == "float32" else 2)
                    if matmul_bytes <= naive_budget:
                        results.append(_run_in_subprocess(
                            dict(base_case, method="matmul", n=n, d=d, dtype=dtype, mode="fwd"),
                            args.case_timeout))
                    else:
                        results.append(dict(base_case, method="matmul", n=n, d=d, dtype=dtype,
                                            mode="fwd", status="skipped"))
                    _print_progress(results[-1])
                for mode in args.modes:
                    for method in ("naive", "naive_compiled", "fused"):
                        if method not in args.methods:
                            continue
                        case = dict(base_case, method=method, n=n, d=d, dtype=dtype, mode=mode)
                        estimate = _estimate_naive_bytes(results, case)
                        if method != "fused" and estimate is not None and estimate > naive_budget:
                            results.append(dict(case, status="skipped",
                                                estimated_peak_extra_bytes=estimate))
                        else:
                            results.append(_run_in_subprocess(case, args.case_timeout))
                        _print_progress(results[-1])

    if device == "cpu":
        with open("/proc/loadavg") as loadavg:
            info["load_average_at_end"] = loadavg.read().split()[:3]
    rows = _derive(results)
    _print_table(rows, info)
    targets = _check_targets(rows, device)
    for line in targets["lines"]:
        print(line)

    _common.write_json(args.out, f"supcon_{device}.json", {
            "benchmark": "supcon",
            "command": _common.command_line("bench_supcon.py", argv),
            "date_utc": _common.utc_now(),
            "env": info,
            "settings": {"sizes": sizes, "dims": dims, "dtypes": args.dtypes, "modes": args.modes,
                         "temperature": TEMPERATURE, "num_classes": NUM_CLASSES,
                         "naive_memory_budget_bytes": naive_budget, "quick": args.quick},
            "flop_model": "2*N^2*D forward, 6*N^2*D forward+backward, both methods",
            "memory_method": ("cuda max_memory_allocated - memory_allocated" if device == "cuda"
                              else "VmHWM (reset via /proc/self/clear_refs) - VmRSS, "
                                   "MALLOC_MMAP_THRESHOLD_=131072"),
            "results": rows,
            "targets": targets["checks"],
        })
    return 0


def _print_progress(result: dict) -> None:
    extra = ""
    if result.get("status") == "ok":
        extra = f"{result['time_s'] * 1e3:.2f} ms, {_fmt_bytes(result['peak_extra_bytes'])}"
    elif result.get("error"):
        extra = result["error"][:120]
    print(f"  {result['method']:>15} N={result['n']:<6} D={result['d']:<4} {result['dtype']:<9} "
          f"{result['mode']:<8} {result['status']:<8} {extra}", flush=True)


def _estimate_naive_bytes(results: list, case: dict) -> float | None:
    """Memory of a naive case from the largest one measured at the same D/dtype/mode."""
    measured = [r for r in results if r["method"] == case["method"] and r["d"] == case["d"]
                and r["dtype"] == case["dtype"] and r["mode"] == case["mode"]
                and r.get("status") == "ok"]
    if not measured:
        if case["method"] == "fused":
            return None
        # No measurement yet: a prior from the formula's ~8 live N x N float32 buffers.
        return 32.0 * case["n"] ** 2
    largest = max(measured, key=lambda r: r["n"])
    return largest["peak_extra_bytes"] * (case["n"] / largest["n"]) ** 2


def _derive(results: list) -> list:
    def find(method, n, d, dtype, mode):
        for r in results:
            if (r["method"], r["n"], r["d"], r["dtype"], r["mode"]) == (method, n, d, dtype, mode):
                return r
        return None

    for r in results:
        if r["method"] == "matmul" or r.get("status") != "ok":
            continue
        mm = find("matmul", r["n"], r["d"], r["dtype"], "fwd")
        if mm and mm.get("status") == "ok":
            r["fraction_of_matmul_flops"] = r["flops_per_s"] / mm["flops_per_s"]
        if r["method"] == "fused":
            naive = find("naive", r["n"], r["d"], r["dtype"], r["mode"])
            if naive and naive.get("status") == "ok":
                r["speedup_vs_naive"] = naive["time_s"] / r["time_s"]
                r["naive_memory_ratio"] = naive["peak_extra_bytes"] / max(1, r["peak_extra_bytes"])
            elif naive and naive.get("estimated_peak_extra_bytes"):
                r["naive_memory_ratio_estimated"] = (naive["estimated_peak_extra_bytes"]
                                                     / max(1, r["peak_extra_bytes"]))
            compiled = find("naive_compiled", r["n"], r["d"], r["dtype"], r["mode"])
            if compiled and compiled.get("status") == "ok":
                r["speedup_vs_naive_compiled"] = compiled["time_s"] / r["time_s"]
    return results


def _print_table(rows: list, info: dict) -> None:
    print(f"\nsupcon benchmark on {info['device_name']} ({info['device']})")
    header = (f"{'N':>6} {'D':>4} {'dtype':<9} {'mode':<8} {'method':<15} {'time ms':>10} "
              f"{'peak extra':>11} {'GFLOP/s':>9} {'of matmul':>9} {'speedup':>8} {'mem x':>8}")
    print(header)
    print("-" * len(header))
    for r in sorted(rows, key=lambda r: (r["d"], r["dtype"], r["mode"], r["n"], r["method"])):
        if r["method"] == "matmul":
            continue
        if r.get("status") == "ok":
            speed = f"{r['speedup_vs_naive']:.2f}x" if "speedup_vs_naive" in r else "-"
            if "naive_memory_ratio" in r:
                mem = f"{r['naive_memory_ratio']:.1f}x"
            elif "naive_memory_ratio_estimated" in r:
                mem = f"~{r['naive_memory_ratio_estimated']:.0f}x"
            else:
                mem = "-"
            frac = (f"{100 * r['fraction_of_matmul_flops']:.0f}%"
                    if "fraction_of_matmul_flops" in r else "-")
            print(f"{r['n']:>6} {r['d']:>4} {r['dtype']:<9} {r['mode']:<8} {r['method']:<15} "
                  f"{r['time_s'] * 1e3:>10.2f} {_fmt_bytes(r['peak_extra_bytes']):>11} "
                  f"{r['flops_per_s'] / 1e9:>9.1f} {frac:>9} {speed:>8} {mem:>8}")
        else:
            estimate = _fmt_bytes(r.get("estimated_peak_extra_bytes"), estimated=True)
            print(f"{r['n']:>6} {r['d']:>4} {r['dtype']:<9} {r['mode']:<8} {r['method']:<15} "
                  f"{r['status']:>10} {estimate:>11}")
    matmuls = [r for r in rows if r["method"] == "matmul" and r.get("status") == "ok"]
    if matmuls:
        print("\nmatmul yardstick ([N, D] x [D, N]):")
        for r in sorted(matmuls, key=lambda r: (r["d"], r["dtype"], r["n"])):
            print(f"{r['n']:>6} {r['d']:>4} {r['dtype']:<9} ({r['matmul_dtype']}) "
                  f"{r['time_s'] * 1e3:>10.2f} ms {r['flops_per_s'] / 1e9:>9.1f} GFLOP/s")


def _check_targets(rows: list, device: str) -> dict:
    checks, lines = [], ["\ntargets:"]

    def add(name, passed, detail):
        state = "NOT RUN" if passed is None else ("PASS" if passed else "FAIL")
        checks.append({"target": name, "status": state, "detail": detail})
        lines.append(f"  [{state}] {name}: {detail}")

    fused = [r for r in rows if r["method"] == "fused" and r.get("status") == "ok"]
    at_16k = [r for r in fused if r["n"] == 16384 and r["d"] == 128]
    if device == "cpu":
        if not at_16k:
            add("CPU fused peak extra memory < 1 GiB at N=16384, D=128", None, "case not run")
        for r in at_16k:
            naive = next((x for x in rows if x["method"] == "naive" and x["n"] == 16384
                          and x["d"] == 128 and x["dtype"] == r["dtype"]
                          and x["mode"] == r["mode"]), None)
            naive_text = "-"
            if naive and naive.get("status") == "ok":
                naive_text = _fmt_bytes(naive["peak_extra_bytes"])
            elif naive and naive.get("estimated_peak_extra_bytes"):
                naive_text = _fmt_bytes(naive["estimated_peak_extra_bytes"], True) + " (estimated)"
            add(f"CPU fused peak extra memory < 1 GiB at N=16384, D=128, {r['dtype']} {r['mode']}",
                r["peak_extra_bytes"] < 2**30,
                f"fused {_fmt_bytes(r['peak_extra_bytes'])}, naive {naive_text}")
        return {"checks": checks, "lines": lines}

    for r in [x for x in at_16k if x["mode"] == "fwd+bwd"]:
        tag = f"N=16384, D=128, {r['dtype']} fwd+bwd"
        if "speedup_vs_naive" in r:
            add(f"fused >= 3x faster than naive at {tag}", r["speedup_vs_naive"] >= 3,
                f"{r['speedup_vs_naive']:.2f}x")
        else:
            add(f"fused >= 3x faster than naive at {tag}", None, "naive not run")
        if "naive_memory_ratio" in r:
            add(f"fused peak extra memory <= 1/50 of naive at {tag}",
                r["naive_memory_ratio"] >= 50, f"naive/fused = {r['naive_memory_ratio']:.1f}")
        else:
            add(f"fused peak extra memory <= 1/50 of naive at {tag}", None, "naive not run")
    big = [r for r in fused if r["n"] == 65536]
    add("N=65536 runs", bool(big) if big else None,
        f"{len(big)} fused case(s) at N=65536 ran" if big else "no N=65536 case in this sweep")
    for r in [x for x in fused if x["n"] >= 16384]:
        tag = f"N={r['n']}, D={r['d']}, {r['dtype']} {r['mode']}"
        if "fraction_of_matmul_flops" in r:
            add(f">= 50% of matmul FLOP/s at {tag}", r["fraction_of_matmul_flops"] >= 0.5,
                f"{100 * r['fraction_of_matmul_flops']:.0f}%")
    return {"checks": checks, "lines": lines}


if __name__ == "__main__":
    sys.exit(main())
