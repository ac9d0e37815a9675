"""pytest-benchmark micro-benchmarks of the LIF op (not part of the test suite):

    python -m pytest benchmarks/test_micro_lif.py --benchmark-only

The side-by-side table with bandwidth fractions is benchmarks/bench_lif.py.
"""
import pytest
import torch

import tcl_fast
from tcl_fast.ops.lif import backend_available

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BACKENDS = [b for b in ("torch", "cpp", "cuda", "triton") if backend_available(b, DEVICE)]


def _sync():
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("T", [4, 16])
def test_lif_forward_backward(benchmark, backend, T):
    x = torch.randn(T, 1 << 18, device=DEVICE, requires_grad=True)
    grad = torch.randn_like(x)

    def step():
        x.grad = None
        tcl_fast.lif_multistep(x, backend=backend).backward(grad)
        _sync()

    benchmark(step)
    assert x.grad is not None and x.grad.shape == x.shape
