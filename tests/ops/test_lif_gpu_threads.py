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
# The thread mapping is the same for every surrogate: the switch grid runs
# these two; test_every_surrogate_inline_gpu_backward runs all ten.
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


def test_gpu_thread_ops_refuse_an_unknown_surrogate():
    x = torch.randn(3, 4)
    decay = torch.tensor(0.5)
    args = list(_args("atan", True, True, False))
    args[5] = len(SURROGATES)
    with pytest.raises(RuntimeError, match="surrogate id out of range"):
        torch.ops.tcl_fast_testing.lif_backward_thread_mapping(torch.ones_like(x), None, x, None, decay,
                                                               *args, False)


# ------------------------------------------------ every surrogate's inline GPU backward ----
@pytest.mark.parametrize("surrogate", SURROGATES)
def test_every_surrogate_inline_gpu_backward(surrogate):
    # The GPU threads compute the surrogate inline (fused multiply-adds); the
    # CPU kernel through its row function (or inline, sigmoid). 4, 2 and 1
    # lanes (N = 64, 38, 37; the last with the decay gradient).
    decay = torch.tensor(1 / 2.5)
    for T, N, need_decay_grad, hard in [(19, 64, False, True), (18, 38, False, False), (7, 37, True, True)]:
        args = _args(surrogate, N % 2 == 0, hard, False)
        g = torch.Generator().manual_seed(N)
        x = torch.randn(T, N, generator=g) * 1.5 + 0.4
        v0 = torch.randn(N, generator=g) * 0.5
        got, want = _both(x, v0, decay, args, need_decay_grad)
        for name, a, b in zip(("spikes", "v_last", "grad_x", "grad_v0", "grad_decay"), got, want):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5,
                                       msg=lambda m, name=name, N=N: f"{surrogate} {name} (N={N}): {m}")


# ------------------------------------------------------------------- the launch plan ----
def _plan(x, backward=False, lanewise=False, need_decay_grad=False, sm_count=132):
    lanes, blocks, decay_grad = torch.ops.tcl_fast_testing.lif_launch_plan(x, backward, lanewise,
                                                                          need_decay_grad, sm_count)
    return lanes, blocks, bool(decay_grad)


@pytest.fixture
def emulated_sm_count():
    """Sets the SM count the thread-mapping ops plan for; 0 (the default: grid
    size ignored) again after."""
    yield torch.ops.tcl_fast_testing._set_emulated_sm_count
    torch.ops.tcl_fast_testing._set_emulated_sm_count(0)


def test_lane_count_comes_from_n_and_the_sm_count():
    x = torch.empty(4, 65536)
    # 65,536 float32 neurons in 4 lanes: 64 blocks of 256 threads, too few for
    # 132 SMs; one lane gives 256 blocks. Without the SM count: packed.
    assert _plan(x, sm_count=132) == (1, 256, False)
    assert _plan(x, sm_count=64) == (4, 64, False)
    assert _plan(x, sm_count=0) == (4, 64, False)
    assert _plan(x, backward=True, sm_count=132) == (1, 256, False)
    assert _plan(x, backward=True, sm_count=100) == (2, 128, False)  # 4 lanes: 64 blocks
    assert _plan(torch.empty(4, 1 << 22), backward=True) == (4, 4096, False)
    assert _plan(torch.empty(4, 1 << 22)) == (4, 4096, False)
    # 16-bit rows pack 8 neurons forward (16 bytes): 4M neurons still fill 132 SMs
    assert _plan(torch.empty(4, 1 << 22, dtype=torch.float16)) == (8, 2048, False)
    assert _plan(torch.empty(4, 65536, dtype=torch.bfloat16)) == (1, 256, False)
    # the learnable-tau gradient and per-channel parameters: one lane
    assert _plan(x, backward=True, need_decay_grad=True, sm_count=0) == (1, 256, True)
    assert _plan(x, backward=True, lanewise=True, sm_count=0) == (1, 256, False)
    assert _plan(x, lanewise=True, sm_count=0) == (1, 256, False)
    with tcl_fast.ops.tuning(cuda_packed=False):
        assert _plan(x, sm_count=0) == (1, 256, False)
    with tcl_fast.ops.tuning(cuda_bwd_lanes=2):
        assert _plan(x, backward=True, sm_count=0) == (2, 128, False)


@pytest.mark.parametrize("sm_count", [0, 132, 100000])
def test_emulated_launch_follows_the_plan_for_any_sm_count(sm_count, emulated_sm_count):
    # sm_count 0: packed wherever aligned; 100000: one lane everywhere.
    emulated_sm_count(sm_count)
    args = _args("sigmoid", True, True, False)
    decay = torch.tensor(0.4)
    for dtype in (torch.float32, torch.bfloat16):
        g = torch.Generator().manual_seed(5)
        x = (torch.randn(9, 2048, generator=g) * 1.5 + 0.4).to(dtype)
        want_lanes = {0: 16 // x.element_size(), 132: 1, 100000: 1}[sm_count]
        assert _plan(x, sm_count=sm_count)[0] == want_lanes
        got, want = _both(x, None, decay, args, False)
        for a, b in zip(got[:3], want[:3]):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_two_lane_16bit_backward(dtype, emulated_sm_count):
    # N = 38: rows of 16-bit values align to 2 neurons (4 bytes), not 4: the
    # backward packs 2 lanes; so does the cuda_bwd_lanes=2 cap at N = 64.
    emulated_sm_count(0)
    decay = torch.tensor(1 / 2.5)
    for surrogate in ("sigmoid", "atan"):
        args = _args(surrogate, True, True, False)
        for T, N, cap in [(21, 38, 4), (18, 64, 2)]:
            g = torch.Generator().manual_seed(N)
            x = (torch.randn(T, N, generator=g) * 1.5 + 0.4).to(dtype)
            v0 = (torch.randn(N, generator=g) * 0.5).to(dtype)
            with tcl_fast.ops.tuning(cuda_bwd_lanes=cap):
                assert _plan(x, backward=True, sm_count=0)[0] == 2
                got, want = _both(x, v0, decay, args, False)
            for name, a, b in zip(("spikes", "v_last", "grad_x", "grad_v0"), got, want):
                torch.testing.assert_close(a, b, atol=0, rtol=0, msg=lambda m, name=name: f"{name} N={N}: {m}")


# ---------------------------------------------------------------- misaligned rows ----
def _offset(t, elements):
    """t's values in a tensor whose storage starts `elements` before it: the
    data pointer moves by elements * itemsize bytes, breaking packed alignment."""
    buf = torch.empty(t.numel() + elements, dtype=t.dtype, device=t.device)
    out = buf[elements:].view(t.shape)
    out.copy_(t)
    return out


# (dtype, offset in elements, the backward's lanes at N = 64): float32 one
# element off is 4-byte aligned (one lane); 16-bit one element off is 2 bytes
# (one lane), two elements off 4 bytes (2 lanes, not 4 or 8).
MISALIGNED = [(torch.float32, 1, 1), (torch.float32, 2, 2), (torch.float16, 1, 1), (torch.bfloat16, 2, 2)]


@pytest.mark.parametrize("dtype,offset,bwd_lanes", MISALIGNED)
def test_misaligned_inputs_emulated(dtype, offset, bwd_lanes, emulated_sm_count):
    emulated_sm_count(0)
    args = _args("sigmoid", True, True, False)
    decay = torch.tensor(0.45)
    g = torch.Generator().manual_seed(offset)
    x = _offset((torch.randn(18, 64, generator=g) * 1.5 + 0.4).to(dtype), offset)
    assert _plan(x, sm_count=0)[0] == 1
    assert _plan(x, backward=True, sm_count=0)[0] == bwd_lanes
    # x misaligned; the outputs (fresh) are aligned: the plan looks at every row pointer
    got, want = _both(x, None, decay, args, False)
    for a, b in zip(got[:3], want[:3]):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    # grad_spikes misaligned alone (x aligned)
    x_aligned = x.clone()
    gs = _offset(torch.randn(x.shape, generator=g).to(dtype), offset)
    testing, ops = torch.ops.tcl_fast_testing, torch.ops.tcl_fast
    a = testing.lif_backward_thread_mapping(gs, None, x_aligned, None, decay, *args, False)
    b = ops.lif_backward(gs, None, x_aligned, None, decay, *args, False)
    torch.testing.assert_close(a[0], b[0], atol=0, rtol=0)


needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and _extension.has_cuda_kernels()),
                                reason="no CUDA kernels / GPU")


@needs_cuda
@pytest.mark.parametrize("dtype,offset,bwd_lanes", MISALIGNED)
def test_misaligned_inputs_cuda(dtype, offset, bwd_lanes):
    # Storage offsets that break the packed loads' alignment (x, grad_spikes,
    # an affine addend): the launcher must fall back to narrower rows.
    args = _args("sigmoid", True, True, False)
    g = torch.Generator().manual_seed(offset)
    for N in (64, 4096 * 33):
        x = (torch.randn(18, N, generator=g) * 1.5 + 0.4).to(dtype)
        gs = torch.randn(x.shape, generator=g).to(dtype)
        decay = torch.tensor(0.45)
        want = torch.ops.tcl_fast.lif_forward(x, None, decay, *args) + \
            torch.ops.tcl_fast.lif_backward(gs, None, x, None, decay, *args, False)
        xc, gc = _offset(x.cuda(), offset), _offset(gs.cuda(), offset)
        got = torch.ops.tcl_fast.lif_forward(xc, None, decay.cuda(), *args) + \
            torch.ops.tcl_fast.lif_backward(gc, None, xc, None, decay.cuda(), *args, False)
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        for a, b in zip(got[:3], want[:3]):
            torch.testing.assert_close(a.cpu(), b, atol=tol, rtol=tol)
        # per-channel (Lanewise) with a misaligned addend
        C = 4
        x4 = x.view(18, N // C, C)
        scale, shift = torch.rand(C) + 0.5, torch.randn(C) * 0.3
        add = (torch.rand(x4.shape, generator=g) < 0.3).to(dtype)
        want = torch.ops.tcl_fast.lif_affine_forward(x4, None, decay, scale, shift, add, *args)
        got = torch.ops.tcl_fast.lif_affine_forward(_offset(x4.cuda(), offset), None, decay.cuda(), scale.cuda(),
                                                    shift.cuda(), _offset(add.cuda(), offset), *args)
        torch.testing.assert_close(got[1].cpu(), want[1], atol=tol, rtol=tol)
