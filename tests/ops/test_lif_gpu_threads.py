"""The CUDA kernels' per-thread code and thread mapping, run on the CPU.

The test-only ops ``torch.ops.tcl_fast_testing.lif_*_thread_mapping`` loop over
the grid lif_cuda.cu would launch and run each thread's body (csrc/lif_threads.h)
with the lanes the launcher picks: 4 float32 or 8 16-bit neurons per thread
forward (4, else 2, backward) with one packed row access per step when the rows
are aligned, else one. Without a GPU these tests are what covers the packed
access and the neuron-to-thread mapping; the math itself is shared with the CPU
kernel, which tests/ops/test_lif.py checks against the reference.
"""
from __future__ import annotations

import itertools

import pytest
import torch

import tcl_fast.ops
from tcl_fast import _extension
from tcl_fast.ops.lif_reference import DEFAULT_ALPHA, DEFAULT_BETA, SURROGATES

pytestmark = pytest.mark.skipif(not _extension.has_cpp(), reason="tcl_fast._C not built")

SURROGATE_IDS = {name: i for i, name in enumerate(SURROGATES)}
# The test op is built for these two (csrc/lif_thread_mapping_test_ops.cpp): the thread
# mapping is the same for every surrogate, whose math test_lif.py checks.
THREAD_SURROGATES = ("sigmoid", "piecewise_leaky_relu")


def _args(surrogate, decay_input, hard_reset, detach_reset):
    v_reset = -0.25 if hard_reset else 0.0
    return (1.0, v_reset, hard_reset, decay_input, detach_reset, SURROGATE_IDS[surrogate],
            DEFAULT_ALPHA[surrogate], DEFAULT_BETA.get(surrogate, 0.0), False)


def _both(x, v0, decay, args, need_decay_grad, seed=1, with_grad_v=True):
    """(kernel under test, CPU kernel) outputs of forward and backward."""
    g = torch.Generator().manual_seed(seed)
    grad_s = torch.randn(x.shape, generator=g).to(x.dtype)
    grad_v = torch.randn(x.shape[1:], generator=g).to(x.dtype) if with_grad_v else None
    testing, ops = torch.ops.tcl_fast_testing, torch.ops.tcl_fast
    out = []
    for fwd, bwd in ((testing.lif_forward_thread_mapping, testing.lif_backward_thread_mapping),
                     (ops.lif_forward, ops.lif_backward)):
        spikes, v_last = fwd(x, v0, decay, *args)
        grads = bwd(grad_s, grad_v, x, v0, decay, *args, need_decay_grad)
        out.append((spikes, v_last) + tuple(grads))
    return out


@pytest.mark.parametrize("surrogate,decay_input,hard_reset,detach_reset",
                         list(itertools.product(THREAD_SURROGATES, [True, False], [True, False], [False, True])))
def test_gpu_thread_mapping_matches_cpu_kernel(surrogate, decay_input, hard_reset, detach_reset):
    args = _args(surrogate, decay_input, hard_reset, detach_reset)
    decay = torch.tensor(1 / 2.5)
    # N multiple of 4: packed (4 neurons per thread); N = 38: 2 per thread
    # backward; N = 37: one per thread. T spans the backward's 16-step chunks
    # (1, 16: one full, 37: two + a ragged one) and the threads' batches of
    # 4 or 8 steps with their remainders.
    for T, N, with_v0, need_decay_grad in [(1, 8, False, False), (16, 36, True, False),
                                           (37, 64, False, False), (37, 64, True, True),
                                           (17, 37, True, False), (5, 4, False, True),
                                           (23, 38, True, False), (9, 37, False, False)]:
        g = torch.Generator().manual_seed(T * 100 + N)
        x = torch.randn(T, N, generator=g) * 1.5 + 0.4
        v0 = torch.randn(N, generator=g) * 0.5 if with_v0 else None
        # grad_v_last None (no gradient from the final membrane) on the odd T.
        got, want = _both(x, v0, decay, args, need_decay_grad, with_grad_v=T % 2 == 0)
        names = ("spikes", "v_last", "grad_x", "grad_v0", "grad_decay")
        assert got[3].shape == ((N,) if v0 is not None else (0,))  # grad_v0 empty without v0
        for name, a, b in zip(names, got, want):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6,
                                       msg=lambda m, name=name, T=T, N=N: f"{name} (T={T}, N={N}): {m}")


def test_misaligned_rows_fall_back_to_one_neuron_per_thread():
    # x starting one float into its storage is not 16-byte aligned: the launcher
    # must not use packed rows (which would read across the row boundary).
    args = _args("sigmoid", True, True, False)
    decay = torch.tensor(0.5)
    buf = torch.randn(1 + 9 * 12) * 1.5 + 0.4
    x = buf[1:].view(9, 12)
    assert x.data_ptr() % 16 != 0
    got, want = _both(x, None, decay, args, False)
    for a, b in zip(got[:3], want[:3]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("surrogate", THREAD_SURROGATES)
def test_gpu_thread_mapping_16bit(dtype, surrogate):
    # 16-bit rows: 8 neurons per thread forward (16 bytes), 4 backward; N = 36
    # packs backward only, N = 37 packs neither. The math is the CPU kernel's,
    # on the same 16-bit values, so results agree exactly.
    args = _args(surrogate, True, True, False)
    decay = torch.tensor(1 / 2.5)
    for T, N, with_v0 in [(3, 64, False), (21, 40, True), (17, 36, False), (5, 37, True)]:
        g = torch.Generator().manual_seed(T + N)
        x = (torch.randn(T, N, generator=g) * 1.5 + 0.4).to(dtype)
        v0 = (torch.randn(N, generator=g) * 0.5).to(dtype) if with_v0 else None
        got, want = _both(x, v0, decay, args, False)
        for name, a, b in zip(("spikes", "v_last", "grad_x", "grad_v0"), got, want):
            if name == "grad_v0" and v0 is None:
                continue
            assert a.dtype == dtype
            torch.testing.assert_close(a, b, atol=0, rtol=0,
                                       msg=lambda m, name=name, T=T, N=N: f"{name} (T={T}, N={N}): {m}")


def test_gpu_thread_ops_reject_other_dtypes():
    x = torch.randn(3, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="float32, float16 or bfloat16 only"):
        torch.ops.tcl_fast_testing.lif_forward_thread_mapping(
            x, None, torch.tensor(0.5, dtype=torch.float64), *_args("sigmoid", True, True, False))


@pytest.mark.parametrize("lanes", [2, 1])
def test_backward_lanes_cap(lanes):
    # The cuda_bwd_lanes knob narrows the backward's packed width (bench_lif.py
    # times the widths side by side); every width must compute the same result.
    args = _args("piecewise_leaky_relu", True, False, False)
    decay = torch.tensor(0.4)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(21, 64, generator=g) * 1.5 + 0.4
    v0 = torch.randn(64, generator=g) * 0.5
    with tcl_fast.ops.tuning(cuda_bwd_lanes=lanes):
        got, want = _both(x, v0, decay, args, False)
    for a, b in zip(got[:4], want[:4]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_gpu_thread_ops_refuse_surrogates_they_are_not_built_for():
    x = torch.randn(3, 4)
    decay = torch.tensor(0.5)
    args = _args("atan", True, True, False)
    spikes, _ = torch.ops.tcl_fast_testing.lif_forward_thread_mapping(x, None, decay, *args)
    with pytest.raises(RuntimeError, match="sigmoid and piecewise_leaky_relu only"):
        torch.ops.tcl_fast_testing.lif_backward_thread_mapping(torch.ones_like(x), None, x, None, decay,
                                                               *args, False)
