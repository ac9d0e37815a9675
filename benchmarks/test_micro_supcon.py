"""pytest-benchmark micro-benchmarks: naive vs fused supcon_loss, forward+backward.

    pytest benchmarks/test_micro_supcon.py --benchmark-only

Skipped unless ``--benchmark-only`` is given, so a plain ``pytest`` run never
spends time here. Uses CUDA when available (fused = Triton), else CPU
(fused = row-blocked torch). Sizes are kept small enough for a laptop CPU; the
full sweep with memory and FLOP/s numbers is benchmarks/bench_supcon.py.
"""
from __future__ import annotations

import pytest
import torch

from tcl_fast.ops.supcon import supcon_loss
from tcl_fast.ops.supcon_reference import supcon_loss_reference

pytest.importorskip("pytest_benchmark")

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
SIZES = [1024, 4096] if DEVICE.type == "cpu" else [4096, 16384]


@pytest.fixture(autouse=True)
def _only_when_benchmarking(request):
    if not request.config.getoption("benchmark_only", default=False):
        pytest.skip("micro-benchmarks run only with --benchmark-only")


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def _fwd_bwd(loss_fn, n: int, d: int, dtype: torch.dtype):
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(n, d, generator=generator).to(DEVICE, dtype).requires_grad_(True)
    labels = torch.randint(0, 100, (n,), generator=generator).to(DEVICE)

    def step():
        z.grad = None
        loss = loss_fn(z, labels)
        loss.backward()
        _sync()  # the timer must see the kernels finish
        return loss

    return step


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("method", ["naive", "fused"])
def test_supcon_fwd_bwd(benchmark, method, n):
    d, dtype = 128, torch.float32
    if method == "naive":
        step = _fwd_bwd(lambda z, y: supcon_loss_reference(z, y, 0.1), n, d, dtype)
    else:
        step = _fwd_bwd(lambda z, y: supcon_loss(z, y, 0.1), n, d, dtype)
    benchmark.group = f"supcon fwd+bwd N={n} D={d} {DEVICE.type}"
    benchmark.extra_info.update(n=n, d=d, dtype=str(dtype), device=DEVICE.type)
    loss = benchmark.pedantic(step, rounds=5, warmup_rounds=1, iterations=1)
    assert torch.isfinite(loss)
