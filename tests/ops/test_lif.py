"""Fused LIF (C++ on CPU, CUDA on GPU) against the pure-PyTorch reference."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

import tcl_fast
from tcl_fast import _extension
from tcl_fast.ops.lif_reference import SURROGATES, lif_multistep_reference

pytestmark = pytest.mark.skipif(not _extension.has_cpp(), reason="tcl_fast._C not built")

HAS_CUDA_KERNELS = torch.cuda.is_available() and _extension.has_cuda_kernels()
DEVICES = ["cpu"] + (["cuda"] if HAS_CUDA_KERNELS else [])
FUSED = {"cpu": "cpp", "cuda": "cuda"}
RESETS = {"hard": 0.0, "hard_neg": -0.5, "soft": None}


def _run(backend, x, v0=None, tau=2.0, grad_s=None, grad_v=None, **kw):
    """Forward + backward through ``backend``; returns outputs and input grads."""
    x = x.detach().clone().requires_grad_()
    v0 = None if v0 is None else v0.detach().clone().requires_grad_()
    tau = tau.detach().clone().requires_grad_() if isinstance(tau, torch.Tensor) else tau
    if backend == "reference":
        decay = 1.0 / tau
        spikes, v_last = lif_multistep_reference(x, v0, decay, kw.get("v_threshold", 1.0),
                                                 kw.get("v_reset", 0.0), kw.get("decay_input", True),
                                                 kw.get("detach_reset", False), kw.get("surrogate", "sigmoid"),
                                                 kw.get("alpha"))
    else:
        spikes, v_last = tcl_fast.lif_multistep(x, v0, tau=tau, return_v=True, backend=backend, **kw)
    grad_s = torch.randn_like(spikes) if grad_s is None else grad_s
    grad_v = torch.zeros_like(v_last) if grad_v is None else grad_v
    torch.autograd.backward([spikes, v_last], [grad_s, grad_v])
    return dict(spikes=spikes.detach(), v_last=v_last.detach(), gx=x.grad,
                gv0=None if v0 is None else v0.grad,
                gtau=tau.grad if isinstance(tau, torch.Tensor) else None)


def _inputs(shape, device, dtype=torch.float32, scale=1.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g) * scale + 0.4).to(device=device, dtype=dtype)
    return x


def _assert_close_to_reference(got, want, atol=1e-5, rtol=1e-5):
    assert torch.equal(got["spikes"], want["spikes"]), "spikes differ"
    torch.testing.assert_close(got["v_last"], want["v_last"], atol=atol, rtol=rtol)
    torch.testing.assert_close(got["gx"], want["gx"], atol=atol, rtol=rtol)
    if want["gv0"] is not None:
        torch.testing.assert_close(got["gv0"], want["gv0"], atol=atol, rtol=rtol)
    if want["gtau"] is not None:
        torch.testing.assert_close(got["gtau"], want["gtau"], atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------
# parity over every semantic switch
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("decay_input,reset,detach_reset",
                         list(itertools.product([True, False], RESETS, [False, True])))
def test_matches_reference_all_switches(device, surrogate, decay_input, reset, detach_reset):
    kw = dict(decay_input=decay_input, v_reset=RESETS[reset], detach_reset=detach_reset,
              surrogate=surrogate)
    x = _inputs((21, 3, 67), device)  # T crosses the 16-step backward chunk
    v0 = _inputs((3, 67), device, seed=1) * 0.3
    tau = torch.tensor(2.5, device=device)  # learnable: exercises the decay gradient
    grad_s = torch.randn(x.shape, device=device)
    grad_v = torch.randn(x.shape[1:], device=device)
    got = _run(FUSED[device], x, v0, tau, grad_s, grad_v, **kw)
    want = _run("reference", x, v0, tau, grad_s, grad_v, **kw)
    _assert_close_to_reference(got, want)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("reset", RESETS)
def test_matches_reference_aligned_rows(device, packed, surrogate, reset):
    # Neurons a multiple of 8 and a fixed tau: the CUDA launcher packs several
    # neurons per thread here (the cuda_packed knob off forces one per thread).
    if not packed and device != "cuda":
        pytest.skip("the packing switch is CUDA's")
    with tcl_fast.ops.tuning(cuda_packed=packed):
        for T, with_v0 in [(1, False), (21, True), (37, False)]:
            x = _inputs((T, 3, 64), device, seed=T)
            v0 = _inputs((3, 64), device, seed=2) * 0.3 if with_v0 else None
            grad_s = torch.randn(x.shape, device=device)
            grad_v = torch.randn(x.shape[1:], device=device)
            kw = dict(v_reset=RESETS[reset], surrogate=surrogate)
            got = _run(FUSED[device], x, v0, 2.5, grad_s, grad_v, **kw)
            want = _run("reference", x, v0, 2.5, grad_s, grad_v, **kw)
            _assert_close_to_reference(got, want)


@pytest.mark.skipif(not HAS_CUDA_KERNELS, reason="needs a GPU and the CUDA kernels")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_16bit_packed_rows_match_cpu_kernel(dtype):
    # 8 neurons per thread forward, 4 backward; the same float math as the CPU
    # kernel on the same 16-bit inputs, so results agree to rounding.
    x = _inputs((19, 2, 96), "cpu").to(dtype)
    grad_s = torch.randn(x.shape).to(dtype)
    got = _run("cuda", x.cuda(), grad_s=grad_s.cuda(), surrogate="sigmoid")
    want = _run("cpp", x, grad_s=grad_s, surrogate="sigmoid")
    assert torch.equal(got["spikes"].cpu(), want["spikes"])
    torch.testing.assert_close(got["gx"].cpu(), want["gx"])
    torch.testing.assert_close(got["v_last"].cpu(), want["v_last"])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(1, 1), (1, 5, 7), (37, 1), (37, 3, 11), (4, 5, 123, 123)])
def test_odd_shapes(device, shape):
    x = _inputs(shape, device)
    grad_s = torch.randn(shape, device=device)
    got = _run(FUSED[device], x, grad_s=grad_s, surrogate="atan")
    want = _run("reference", x, grad_s=grad_s, surrogate="atan")
    _assert_close_to_reference(got, want)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_and_channels_last(device):
    base = _inputs((6, 4, 3, 9, 10), device)
    grad_s = torch.randn(base.shape, device=device)
    want = _run("reference", base, grad_s=grad_s)
    # channels_last per time step: a [T, B, C, H, W] tensor whose B*C*H*W block is NHWC
    cl = base.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (6, 4))
    assert not cl.is_contiguous()
    got = _run(FUSED[device], cl, grad_s=grad_s)
    _assert_close_to_reference(got, want)
    assert got["spikes"].shape == base.shape
    # a transposed view
    t = base.transpose(3, 4).contiguous().transpose(3, 4)
    assert not t.is_contiguous()
    _assert_close_to_reference(_run(FUSED[device], t, grad_s=grad_s), want)


@pytest.mark.parametrize("device", DEVICES)
def test_streaming_over_chunks_of_time(device):
    """Running [0:T1] then [T1:T] with v0 = v_last equals one run, grads included."""
    x = _inputs((19, 2, 33), device).requires_grad_()
    s_full, v_full = tcl_fast.lif_multistep(x, return_v=True, backend=FUSED[device])
    (s_full.sum() + v_full.sum()).backward()
    g_full = x.grad.clone()
    x.grad = None
    s1, v1 = tcl_fast.lif_multistep(x[:7], return_v=True, backend=FUSED[device])
    s2, v2 = tcl_fast.lif_multistep(x[7:], v1, return_v=True, backend=FUSED[device])
    assert torch.equal(torch.cat([s1, s2]), s_full)
    torch.testing.assert_close(v2, v_full)
    (s1.sum() + s2.sum() + v2.sum()).backward()
    torch.testing.assert_close(x.grad, g_full)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_neurons(device):
    x = torch.empty(5, 0, 3, device=device, requires_grad=True)
    s, v = tcl_fast.lif_multistep(x, return_v=True, backend=FUSED[device])
    assert s.shape == (5, 0, 3) and v.shape == (0, 3)
    s.sum().backward()
    assert x.grad.shape == x.shape

CPU_ISAS = ["baseline", "avx2", "avx512"]


@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("reset", ["hard_neg", "soft"])
def test_every_cpu_isa_build_matches_reference(isa, surrogate, reset):
    # The CPU kernels are built per ISA; the baseline build's backward runs
    # unfused arithmetic, the others fused multiply-adds. The cpu_isa knob caps
    # the choice, so each build this CPU can run is checked here.
    with tcl_fast.ops.tuning(cpu_isa=isa):
        ran = torch.ops.tcl_fast._cpu_isa()
        assert ran.startswith(isa) or CPU_ISAS.index(ran.split("+")[0]) < CPU_ISAS.index(isa)
        kw = dict(v_reset=RESETS[reset], surrogate=surrogate)
        # 300 neurons: two full 128-lane groups and a ragged tail; T=21 crosses a chunk.
        x = _inputs((21, 300), "cpu", seed=7)
        v0 = _inputs((300,), "cpu", seed=8) * 0.3
        tau = torch.tensor(2.5)
        grad_s, grad_v = torch.randn(x.shape), torch.randn(300)
        got = _run("cpp", x, v0, tau, grad_s, grad_v, **kw)
    want = _run("reference", x, v0, tau, grad_s, grad_v, **kw)
    _assert_close_to_reference(got, want)


@pytest.mark.parametrize("isa", CPU_ISAS)
@pytest.mark.parametrize("groups", ["wide", "narrow", "wide-short-T"])
def test_wide_cpu_groups_match_reference(isa, groups, two_threads):
    # Large N runs wide groups (4096 neurons forward, 1024 backward in float32)
    # when T >= 8 and there are at least 4 per thread; the last group, cut short
    # by N, runs as 128-neuron groups and then one neuron at a time. N here:
    # enough wide groups for this machine's threads, plus 300 (two 128-groups
    # and 44 more).
    # wide-short-T: the cpu_groups knob "wide" forces wide groups at T < 8.
    knob = {"wide": "auto", "narrow": "narrow", "wide-short-T": "wide"}[groups]
    N = 4096 * 4 * torch.get_num_threads() + 300
    x = _inputs((5 if groups == "wide-short-T" else 9, N), "cpu", seed=11)
    v0 = _inputs((N,), "cpu", seed=12) * 0.3
    tau = torch.tensor(2.5)  # learnable: the backward's dh/dk buffer too
    grad_s, grad_v = torch.randn(x.shape), torch.randn(N)
    kw = dict(v_reset=-0.5, surrogate="sigmoid")
    with tcl_fast.ops.tuning(cpu_isa=isa, cpu_groups=knob):
        got = _run("cpp", x, v0, tau, grad_s, grad_v, **kw)
    want = _run("reference", x, v0, tau, grad_s, grad_v, **kw)
    _assert_close_to_reference(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_wide_and_narrow_cpu_groups_agree_bit_for_bit(dtype, two_threads):
    # Each neuron's arithmetic is the same whatever group it runs in (no sums
    # across neurons), so the two groupings must give identical bits, also in
    # 16-bit storage; the learnable tau's gradient is a sum, compared closely.
    N = 4096 * 4 * torch.get_num_threads() + 300
    x = _inputs((9, N), "cpu", dtype, seed=14)
    v0 = (_inputs((N,), "cpu", seed=15) * 0.3).to(dtype)
    g = torch.randn(x.shape).to(dtype)
    kw = dict(v_reset=None, surrogate="sigmoid")
    wide = _run("cpp", x, v0, torch.tensor(2.5), grad_s=g, **kw)
    with tcl_fast.ops.tuning(cpu_groups="narrow"):
        narrow = _run("cpp", x, v0, torch.tensor(2.5), grad_s=g, **kw)
    for key in ("spikes", "v_last", "gx", "gv0"):
        assert torch.equal(wide[key], narrow[key]), key
    torch.testing.assert_close(wide["gtau"], narrow["gtau"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("surrogate", ["sigmoid", "atan"])
@pytest.mark.parametrize("affine", [False, True])
def test_16bit_cpu_ops_equal_float32_ops_rounded(dtype, surrogate, affine):
    # A 16-bit CPU kernel computes in float32 and rounds once at each store, so it must
    # give the float32 kernel's outputs rounded to 16 bits, bit for bit. That is what lets
    # a call without 16-bit kernels (float16 on x86, bfloat16 on the baseline ISA) run the
    # float32 kernels on float32 copies instead (csrc/lif_cpu_kernels.h storage_build);
    # here the bfloat16 kernels, native on AVX2 / AVX-512, are held to it. Per-channel
    # decay and affine (BN in the kernel) with a residual addend run the Lanewise drivers.
    # 21 steps cross a 16-step chunk; 3 x 100 neurons end in a ragged 128-lane group.
    shape = (21, 3, 100)
    x = _inputs(shape, "cpu", dtype, seed=21)
    v0 = (_inputs(shape[1:], "cpu", seed=22) * 0.3).to(dtype)
    grad_s = torch.randn(shape, generator=torch.Generator().manual_seed(23)).to(dtype)
    grad_v = torch.randn(shape[1:], generator=torch.Generator().manual_seed(24)).to(dtype)
    decay = torch.rand(3, 1, generator=torch.Generator().manual_seed(25)) * 0.5 + 0.2
    scalars = (1.0, -0.3, True, True, False, SURROGATES.index(surrogate), 4.0, 0.1, False)
    ops = torch.ops.tcl_fast

    def run(x, v0, grad_s, grad_v, addend):
        if not affine:
            return (*ops.lif_forward(x, v0, decay, *scalars),
                    *ops.lif_backward(grad_s, grad_v, x, v0, decay, *scalars, True))
        scale, shift = torch.linspace(0.5, 1.5, 3).view(3, 1), torch.linspace(-0.1, 0.2, 3).view(3, 1)
        return (*ops.lif_affine_forward(x, v0, decay, scale, shift, addend, *scalars),
                *ops.lif_affine_backward(grad_s, grad_v, x, v0, decay, scale, shift, addend, *scalars,
                                         True, True, True))

    addend = (_inputs(shape, "cpu", seed=26) * 0.2).to(dtype) if affine else None
    got = run(x, v0, grad_s, grad_v, addend)
    want = run(*(t.float() if t is not None else None for t in (x, v0, grad_s, grad_v, addend)))
    names = ["spikes", "v_last", "grad_x", "grad_v0", "grad_decay", "grad_scale", "grad_shift", "grad_addend"]
    for name, g, w in zip(names, got, want):
        # x-shaped and neuron-shaped outputs are stored in x's dtype; the parameter
        # gradients (float32 sums) are float32 either way.
        assert g.dtype == (dtype if w.shape in (shape, shape[1:]) else torch.float32), name
        assert torch.equal(g, w.to(g.dtype)), name


def test_wide_cpu_groups_float64(two_threads):
    # float64 takes 512-neuron backward groups (its h chunk is twice the bytes).
    N = 4096 * 4 * torch.get_num_threads() + 300
    x = _inputs((8, N), "cpu", torch.float64, seed=13)
    g = torch.randn(x.shape, dtype=torch.float64)
    got = _run("cpp", x, grad_s=g, surrogate="atan")
    want = _run("reference", x, grad_s=g, surrogate="atan")
    assert torch.equal(got["spikes"], want["spikes"])
    torch.testing.assert_close(got["gx"], want["gx"], atol=1e-12, rtol=1e-10)


def test_cpu_isa_cap_is_checked():
    with tcl_fast.ops.tuning(cpu_isa="baseline"):
        assert torch.ops.tcl_fast._cpu_isa() in ("baseline", "baseline+fma")
    with pytest.raises(ValueError, match=r"cpu_isa \(TCL_FAST_CPU_ISA\) must be one of baseline, avx2, avx512"):
        with tcl_fast.ops.tuning(cpu_isa="sse9"):
            pass


# ---------------------------------------------------------------------------
# reduced precision: spikes exact vs an fp32 run, error within 2x plain PyTorch's
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_half_precision(device, dtype, reset):
    kw = dict(v_reset=RESETS[reset], surrogate="sigmoid")
    x = _inputs((12, 4, 257), device, dtype)
    grad_s = torch.randn(x.shape, device=device).to(dtype)
    got = _run(FUSED[device], x, grad_s=grad_s, **kw)
    # The kernel accumulates in float32, so it fires exactly like an fp32 run on the same values.
    fp32 = _run("reference", x.float(), grad_s=grad_s.float(), **kw)
    assert torch.equal(got["spikes"].float(), fp32["spikes"])
    oracle = _run("reference", x.double(), grad_s=grad_s.double(), **kw)
    plain = _run("reference", x, grad_s=grad_s, **kw)  # PyTorch computing at `dtype`
    for key in ("v_last", "gx"):
        err_kernel = (got[key].double() - oracle[key]).norm()
        err_plain = (plain[key].double() - oracle[key]).norm()
        assert err_kernel <= 2 * err_plain + 1e-6, (key, err_kernel.item(), err_plain.item())
    assert got["spikes"].dtype == dtype and got["gx"].dtype == dtype


# ---------------------------------------------------------------------------
# gradcheck, opcheck, torch.compile
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("reset", ["hard_neg", "soft"])
@pytest.mark.parametrize("decay_input", [True, False])
def test_gradcheck_smooth_mode(surrogate, reset, decay_input):
    """With spikes replaced by the surrogate's primitive the analytic backward is
    the exact derivative, so finite differences check the whole chain rule."""
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(18, 5, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    v0 = (0.2 * torch.randn(5, generator=g, dtype=torch.float64)).requires_grad_()
    decay = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    kw = dict(v_reset=RESETS[reset], decay_input=decay_input, surrogate=surrogate,
              alpha={"sigmoid": 2.0, "atan": 1.0, "triangle": 1.5, "rectangle": 2.0, "super_spike": 1.0,
                     "fast_sigmoid": 2.0, "erf": 1.0, "soft_sign": 2.0, "piecewise_leaky_relu": 2.0,
                     "piecewise_exp": 1.5}[surrogate])
    if surrogate == "piecewise_leaky_relu":
        kw["surrogate_beta"] = 0.05

    def fused(x, v0, decay):
        return tcl_fast.lif_multistep(x, v0, decay=decay, return_v=True, backend="cpp",
                                      _smooth=True, **kw)

    def reference(x, v0, decay):
        return tcl_fast.lif_multistep(x, v0, decay=decay, return_v=True, backend="torch",
                                      _smooth=True, **kw)

    # The kernel's smooth forward is the reference's (the gradchecks below check
    # each backward against its own forward only).
    for got, want in zip(fused(x, v0, decay), reference(x, v0, decay)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # The reference in fast mode (one random projection of its Jacobian: it is torch
    # autograd through plain ops, and its full check took ~1 s per case of the suite's
    # time); the kernel's own backward in full, entry by entry.
    assert torch.autograd.gradcheck(reference, (x, v0, decay), fast_mode=True)
    assert torch.autograd.gradcheck(fused, (x, v0, decay))


def _op_args(device, T=5, N=9, dtype=torch.float32, v0=True, requires_grad=True):
    x = _inputs((T, N), device, dtype).requires_grad_(requires_grad)
    v = (0.1 * torch.randn(N, device=device, dtype=dtype)).requires_grad_(requires_grad) if v0 else None
    decay = torch.tensor(0.5, device=device, dtype=torch.float32, requires_grad=requires_grad)
    return (x, v, decay, 1.0, 0.0, True, True, False, 0, 4.0, 0.0, False)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_v0", [True, False])
def test_opcheck_forward(device, with_v0):
    torch.library.opcheck(torch.ops.tcl_fast.lif_forward.default, _op_args(device, v0=with_v0))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_v0", [True, False])
@pytest.mark.parametrize("with_grad_v", [True, False])
@pytest.mark.parametrize("need_decay_grad", [True, False])
def test_opcheck_backward(device, with_v0, with_grad_v, need_decay_grad):
    x, v0, decay, *params = _op_args(device, v0=with_v0, requires_grad=False)
    grad_v = torch.randn_like(x[0]) if with_grad_v else None
    args = (torch.randn_like(x), grad_v, x, v0, decay, *params, need_decay_grad)
    torch.library.opcheck(torch.ops.tcl_fast.lif_backward.default, args)
    grad_decay = torch.ops.tcl_fast.lif_backward(*args)[2]
    # Not asked for: an empty tensor, not a zero somebody must fill.
    assert grad_decay.shape == (() if need_decay_grad else (0,))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_v0", [True, False])
def test_opcheck_neuron_dims(device, with_v0):
    # The op takes x as [T, *neurons]; v0, v_last and grad_v0 have the neuron dims' shape.
    x = _inputs((5, 3, 1, 7), device).requires_grad_()
    v0 = (0.1 * torch.randn(3, 1, 7, device=device)).requires_grad_() if with_v0 else None
    decay = torch.tensor(0.5, device=device, requires_grad=True)
    params = (1.0, 0.0, True, True, False, 0, 4.0, 0.0, False)
    torch.library.opcheck(torch.ops.tcl_fast.lif_forward.default, (x, v0, decay, *params))
    args = (torch.randn_like(x), torch.randn_like(x[0]), x.detach(),
            None if v0 is None else v0.detach(), decay.detach(), *params, True)
    torch.library.opcheck(torch.ops.tcl_fast.lif_backward.default, args)


@pytest.mark.parametrize("device", DEVICES)
def test_neuron_dims_run_as_one_flat_row(device):
    # [T, 2, 3, 4] gives, bit for bit, what [T, 24] gives, in the neuron dims' shape.
    ops = torch.ops.tcl_fast
    x = _inputs((6, 2, 3, 4), device)
    v0 = 0.2 * torch.randn(2, 3, 4, device=device)
    decay = torch.tensor(0.5, device=device)
    params = (1.0, 0.0, True, True, False, 1, 2.0, 0.0, False)
    spikes, v_last = ops.lif_forward(x, v0, decay, *params)
    flat_s, flat_v = ops.lif_forward(x.view(6, -1), v0.view(-1), decay, *params)
    assert spikes.shape == x.shape and v_last.shape == (2, 3, 4)
    assert torch.equal(spikes.view(6, -1), flat_s) and torch.equal(v_last.view(-1), flat_v)
    gs, gv = torch.randn_like(x), torch.randn_like(v0)
    got = ops.lif_backward(gs, gv, x, v0, decay, *params, True)
    want = ops.lif_backward(gs.view(6, -1), gv.view(-1), x.view(6, -1), v0.view(-1), decay, *params, True)
    assert got[0].shape == x.shape and got[1].shape == v0.shape
    for a, b in zip(got, want):
        assert torch.equal(a.reshape(b.shape), b)
    # A [N] v0 for [T, 2, 3, 4] is a caller's mistake, not a reshape to guess.
    with pytest.raises(RuntimeError, match="v0 must have the neuron dims' shape"):
        ops.lif_forward(x, v0.view(-1), decay, *params)
    with pytest.raises(RuntimeError, match="grad_v_last must be"):
        ops.lif_backward(gs, gv.view(-1), x, v0, decay, *params, True)


@pytest.mark.parametrize("device", DEVICES)
def test_eager_autograd_is_one_node(device):
    # lif_multistep's eager path records one autograd node straight onto x (no
    # view nodes, no torch.library wrapper) and computes what the op's own
    # registered autograd computes, bit for bit.
    x = _inputs((7, 3, 5), device).requires_grad_()
    v0 = (0.1 * torch.randn(3, 5, device=device)).requires_grad_()
    tau = torch.tensor(2.5, device=device, requires_grad=True)
    spikes, v_last = tcl_fast.lif_multistep(x, v0, tau=tau, return_v=True, backend=FUSED[device])
    node = spikes.grad_fn
    assert type(node).__name__ == "_LIFFunctionBackward" and v_last.grad_fn is node
    assert node.next_functions[0][0].variable is x and node.next_functions[1][0].variable is v0
    gs, gv = torch.randn_like(spikes), torch.randn_like(v_last)
    got = torch.autograd.grad([spikes, v_last], [x, v0, tau], [gs, gv])
    decay = 1.0 / tau
    s_op, v_op = torch.ops.tcl_fast.lif_forward(x, v0, decay, 1.0, 0.0, True, True, False, 0, 4.0, 0.0, False)
    assert "GeneratedBackwardFor_tcl_fast_lif_forward" in type(s_op.grad_fn).__name__
    want = torch.autograd.grad([s_op, v_op], [x, v0, tau], [gs, gv])
    assert torch.equal(spikes, s_op) and torch.equal(v_last, v_op)
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["cpp", "cpp-op", "triton"])
def test_second_order_gradient_is_refused_clearly(backend):
    # The surrogate gradient has no derivative of its own: create_graph works
    # for the first order, a second order raises (once_differentiable) instead
    # of torch's deprecated fallback warning and a gradient of nothing.
    if backend == "triton" and not tcl_fast.ops.lif.backend_available("triton", torch.device("cpu")):
        pytest.skip("triton backend not available here")
    x = _inputs((4, 6), "cpu").requires_grad_()
    if backend == "cpp-op":  # the op through torch.library's autograd
        decay = torch.tensor(0.5)
        spikes = torch.ops.tcl_fast.lif_forward(x, None, decay, 1.0, 0.0, True, True, False, 0, 4.0, 0.0, False)[0]
    else:
        spikes = tcl_fast.lif_multistep(x, backend=backend)
    # The spikes feed a weight that is itself learnt (as a layer after the LIF
    # does), so the incoming gradient requires grad and g is part of a graph:
    # a gradient penalty's backward must reach the kernel's backward and be
    # refused there, by name (not autograd's generic "does not require grad").
    w = torch.randn(spikes.shape, requires_grad=True)
    (g,) = torch.autograd.grad((spikes * w).sum(), x, create_graph=True)
    assert g.requires_grad
    with pytest.raises(RuntimeError, match="differentiate twice a function that was marked with @once_differentiable"):
        g.pow(2).sum().backward()


@pytest.mark.parametrize("device", DEVICES)
def test_backward_without_final_membrane_gradient(device):
    # grad_v_last=None means a zero gradient from the final membrane, without
    # reading zeros; without v0 the op returns an empty grad_v0 and writes none.
    x, v0, decay, *params = _op_args(device, T=21, N=300, v0=True, requires_grad=False)
    grad_s = torch.randn_like(x)
    ops = torch.ops.tcl_fast
    zeros = torch.zeros_like(v0)
    for init in (v0, None):
        want = ops.lif_backward(grad_s, zeros, x, init, decay, *params, True)
        got = ops.lif_backward(grad_s, None, x, init, decay, *params, True)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
        assert got[1].shape == ((300,) if init is not None else (0,))
    xg = x.clone().requires_grad_()
    tcl_fast.lif_multistep(xg, backend=FUSED[device]).backward(grad_s)
    xr = x.clone().requires_grad_()
    lif_multistep_reference(xr, None, 0.5, 1.0, 0.0, True, False, "sigmoid", None)[0].backward(grad_s)
    torch.testing.assert_close(xg.grad, xr.grad, atol=1e-5, rtol=1e-5)


def _backward_op_inputs(backward_op, run):
    """Input shapes the profiler saw for each call of ``backward_op`` during
    ``run()``, and the names of every aten op that filled memory with zeros."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        run()
    events = prof.events()
    calls = [e.input_shapes for e in events if e.name == backward_op]
    zero_fills = [(e.name, e.input_shapes) for e in events if e.name in ("aten::zeros", "aten::zeros_like")]
    return calls, zero_fills


BACKWARD_OPS = {"cpp": "tcl_fast::lif_backward", "cuda": "tcl_fast::lif_backward",
                "triton": "tcl_fast::lif_backward_triton"}


@pytest.mark.parametrize("backend", ["cpp", "cuda", "triton"])
def test_unused_final_membrane_reaches_the_op_as_none(backend):
    # Autograd would otherwise build (and the kernel read) a [N] tensor of zeros
    # for the unused final membrane's gradient: the op must get None. Likewise
    # spikes nobody used reach it as zeros only when the membrane was used.
    device = "cuda" if backend == "cuda" else "cpu"
    if (backend == "cuda" and not HAS_CUDA_KERNELS) or not tcl_fast.ops.lif.backend_available(
            backend, torch.device(device)):
        pytest.skip(f"{backend} backend not available here")
    N = 37
    x = _inputs((6, N), device).requires_grad_()
    grad_s = torch.randn_like(x)

    def spikes_only():
        x.grad = None
        tcl_fast.lif_multistep(x, backend=backend).backward(grad_s)

    calls, zero_fills = _backward_op_inputs(BACKWARD_OPS[backend], spikes_only)
    assert len(calls) == 1
    assert calls[0][:3] == [[6, N], [], [6, N]], calls[0]  # grad_v_last: None
    assert not [z for z in zero_fills if [N] in z[1] or [6, N] in z[1]], zero_fills

    def membrane_only():
        x.grad = None
        tcl_fast.lif_multistep(x, backend=backend, return_v=True)[1].sum().backward()

    calls, _ = _backward_op_inputs(BACKWARD_OPS[backend], membrane_only)
    assert len(calls) == 1 and calls[0][:3] == [[6, N], [N], [6, N]], calls
    xr = x.detach().clone().requires_grad_()
    lif_multistep_reference(xr, None, 0.5, 1.0, 0.0, True, False, "sigmoid", None)[1].sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, atol=1e-5, rtol=1e-5)


class _TinySNN(torch.nn.Module):
    def __init__(self, backend):
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 4, 3, padding=1)
        self.lif1 = tcl_fast.LIFMultiStep(backend=backend)
        self.lif2 = tcl_fast.LIFMultiStep(backend=backend, learnable_tau=True, surrogate="atan")
        self.fc = torch.nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):  # x: [T, B, 2, 6, 6]
        T, B = x.shape[:2]
        y = self.conv(x.flatten(0, 1)).unflatten(0, (T, B))
        y = self.lif1(y)
        y = self.lif2(y)
        return self.fc(y.flatten(2)).mean(0)


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph(compiler):
    torch.manual_seed(0)
    net = _TinySNN("cpp")
    x = torch.randn(4, 2, 2, 6, 6) * 2
    eager_out = net(x)
    eager_out.sum().backward()
    eager_grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    torch._dynamo.reset()
    compiled = torch.compile(net, fullgraph=True, backend=compiler)
    out = compiled(x)
    out.sum().backward()
    torch.testing.assert_close(out, eager_out, atol=1e-5, rtol=1e-5)
    for p, g in zip(net.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("call,error,match", [
    (lambda: tcl_fast.lif_multistep([1.0, 2.0]), TypeError, "x must be a torch.Tensor"),
    (lambda: tcl_fast.lif_multistep(torch.tensor(1.0)), ValueError, "at least 1 dim"),
    (lambda: tcl_fast.lif_multistep(torch.empty(0, 3)), ValueError, "T = 0"),
    (lambda: tcl_fast.lif_multistep(torch.ones(3, 4, dtype=torch.int32)), TypeError, "x must be float"),
    (lambda: tcl_fast.lif_multistep(torch.ones(3, 4, dtype=torch.complex64)), TypeError, "x must be float"),
    (lambda: tcl_fast.lif_multistep(torch.ones(3, 4), tau=0.0), ValueError, "tau must be positive"),
    (lambda: tcl_fast.lif_multistep(torch.ones(3, 4), tau=-2.0), ValueError, "tau must be positive"),
    (lambda: tcl_fast.lif_multistep(torch.ones(3, 4), tau=0.5), ValueError, "tau must be >= 1"),
    (lambda: tcl_fast.lif_multistep(torch.ones(3, 4), v_threshold=0.0), ValueError, "v_threshold"),
    (lambda: tcl_fast.lif_multistep(torch.ones(3, 4), v_threshold=-1.0, v_reset=None), ValueError, "v_threshold"),
    (lambda: tcl_fast.lif_multistep(torch.ones(3, 4), surrogate="relu"), ValueError, "unknown surrogate"),
    (lambda: tcl_fast.lif_multistep(torch.ones(3, 4), alpha=0.0), ValueError, "alpha"),
    (lambda: tcl_fast.lif_multistep(torch.ones(3, 4), torch.ones(5)), ValueError, "v0 must have shape"),
    (lambda: tcl_fast.lif_multistep(torch.ones(3, 4), torch.ones(4, dtype=torch.float64)), TypeError, "v0 must have x's dtype"),
    (lambda: tcl_fast.lif_multistep(torch.ones(3, 4), torch.ones(4, device="meta")), ValueError, "v0 is on"),
    (lambda: tcl_fast.lif_multistep(torch.ones(3, 4), backend="gpu"), ValueError, "backend must be one of"),
    (lambda: tcl_fast.LIFMultiStep(tau=0.5), ValueError, "tau must be >= 1"),
    (lambda: tcl_fast.LIFMultiStep(tau=1.0, learnable_tau=True), ValueError, "learnable_tau needs tau > 1"),
    (lambda: tcl_fast.LIFMultiStep(v_threshold=0.0), ValueError, "v_threshold"),
    (lambda: tcl_fast.LIFMultiStep(surrogate="gaussian"), ValueError, "unknown surrogate"),
    (lambda: tcl_fast.LIFMultiStep(backend="fast"), ValueError, "backend must be one of"),
])
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_mixed_devices_raise():
    with pytest.raises(ValueError, match="v0 is on"):
        tcl_fast.lif_multistep(torch.ones(3, 4, device="cuda"), torch.ones(4))


def test_decay_tensor_on_another_device_is_refused_or_read_once():
    # A CPU tau for CUDA x was copied to the GPU (pageable, blocking) at every
    # call. The check takes the devices, so it runs here without a GPU.
    from tcl_fast.ops.lif import _decay_on_device
    gpu = torch.device("cuda", 0)
    assert _decay_on_device(torch.tensor(0.25), gpu) == 0.25  # a value: cached on the GPU once
    assert type(_decay_on_device(torch.tensor([0.25]), gpu)) is float
    for bad in (torch.tensor(0.25, requires_grad=True), torch.full((3, 1), 0.25),
                torch.tensor(0.25, device="meta")):
        with pytest.raises(ValueError, match=r"tau/decay tensor is on (cpu|meta) but x is on cuda:0: move it"):
            _decay_on_device(bad, gpu)
    k = torch.full((3, 1), 0.25)
    assert _decay_on_device(k, torch.device("cpu")) is k  # same device: as it is
    with pytest.raises(ValueError, match="tau/decay tensor is on meta but x is on cpu"):
        tcl_fast.lif_multistep(torch.ones(3, 4), decay=torch.tensor(0.5, device="meta"))


@pytest.mark.skipif(not HAS_CUDA_KERNELS, reason="needs a GPU and the CUDA kernels")
def test_cpu_tau_with_cuda_x():
    x = torch.randn(4, 3, 10, device="cuda")
    want = tcl_fast.lif_multistep(x, tau=3.0)
    tcl_fast.lif_multistep(x, tau=torch.tensor(3.0))  # the cached constant, built once
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        assert torch.equal(tcl_fast.lif_multistep(x, tau=torch.tensor(3.0)), want)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    with pytest.raises(ValueError, match="tau/decay tensor is on cpu but x is on cuda"):
        tcl_fast.lif_multistep(x, tau=torch.full((3, 1), 3.0))
    with pytest.raises(ValueError, match="tau/decay tensor is on cpu but x is on cuda"):
        tcl_fast.lif_multistep(x, tau=torch.tensor(3.0, requires_grad=True))


@pytest.mark.parametrize("device", DEVICES)
def test_constant_tau_is_cached_per_value(device):
    # A constant tau becomes a cached 0-dim tensor (no host-to-device copy per
    # call on CUDA); the cache must key on the value, device and dtype.
    from tcl_fast.ops.lif import _constant_decay
    assert _constant_decay(0.5, torch.device(device), torch.float32) is \
        _constant_decay(0.5, torch.device(device), torch.float32)
    assert _constant_decay(0.5, torch.device(device), torch.float64).dtype == torch.float64
    x = _inputs((6, 50), device)
    for tau in (2.0, 3.0, 2.0):
        got = tcl_fast.lif_multistep(x, tau=tau, backend=FUSED[device], return_v=True)[1]
        want = lif_multistep_reference(x, None, 1.0 / tau)[1]
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("decay", [1.0, 0.5, 1.0 / 3.0])
def test_cpu_16bit_conversions_every_value(dtype, decay):
    # The CPU kernel converts bfloat16 with its own integer arithmetic
    # (BFloat16Bits in lif_cpu_kernels.h), float16 through c10::Half. With T = 1, no v0, a
    # soft reset, decay_input and a threshold nothing reaches, v_last is
    # x * decay rounded back to the dtype: compare that, for all 65536 bit
    # patterns, with torch's conversions.
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    x = bits.view(dtype).reshape(1, -1)
    _, v_last = torch.ops.tcl_fast.lif_forward(
        x, None, torch.tensor(decay), 1e38, 0.0, False, True, False, 0, 4.0, 0.0, False)
    want = (x[0].float() * torch.tensor(decay, dtype=torch.float32)).to(dtype)
    got_f, want_f = v_last.float(), want.float()
    nan = want_f.isnan()
    assert torch.equal(got_f.isnan(), nan)
    # bfloat16 reaches past any float32 threshold: values from 1e38 up fire
    kept = ~nan & (x[0].float().abs() < 1e38)
    assert kept.sum() > 60000  # all but NaNs (and, for bfloat16, the largest values)
    # bitwise, except that the kernel's 0 + x turns -0 into +0
    assert torch.equal(got_f[kept], want_f[kept])
    nonzero = kept & (want_f != 0)
    assert torch.equal(v_last.view(torch.int16)[nonzero], want.view(torch.int16)[nonzero])


# ---------------------------------------------------------------------------
# tau / decay: tensors validated like floats; the IF neuron (no leak)
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("kw, match", [
    (dict(tau=torch.tensor(0.0)), "tau must be in"),
    (dict(tau=torch.tensor(0.5)), "tau must be in"),
    (dict(tau=torch.tensor(-1.0)), "tau must be in"),
    (dict(tau=torch.tensor(float("nan"))), "tau must be in"),
    (dict(tau=torch.tensor(float("inf"))), "tau=inf: no leak .* needs decay_input=False"),
    (dict(tau=float("inf")), "tau=inf: no leak .* needs decay_input=False"),
    (dict(tau=float("nan")), "tau must not be NaN"),
    (dict(decay=torch.tensor(2.0)), "decay must be in"),
    (dict(decay=torch.tensor(-0.5)), "decay must be in"),
    (dict(decay=torch.tensor(float("nan"))), "decay must be in"),
    (dict(decay=-0.5), r"decay must be in \(0, 1\].*-0.5"),
    (dict(decay=1.5), r"decay must be in \(0, 1\]"),
    (dict(decay=0.0), "decay=0.0: no leak"),
    (dict(decay=torch.tensor(0.0)), "decay=0.0: no leak"),
])
@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_bad_tau_or_decay_is_refused_naming_the_argument(kw, match, backend):
    x = torch.ones(3, 4, requires_grad=True)
    with pytest.raises(ValueError, match=match):
        tcl_fast.lif_multistep(x, backend=backend, **kw)


def test_learnable_tau_that_went_nan_is_refused():
    lif = tcl_fast.LIFMultiStep(tau=2.0, learnable_tau=True, backend="cpp")
    with torch.no_grad():
        lif.w.fill_(float("nan"))
    with pytest.raises(ValueError, match="decay must be in"):
        lif(torch.ones(3, 4))


def _if_reference(x, v_threshold=1.0, v_reset=0.0):
    """The IF neuron written out: h = v + x, fire at h >= v_threshold, hard reset."""
    v, spikes = torch.full_like(x[0], v_reset), []
    for t in range(x.shape[0]):
        h = v + x[t]
        s = (h >= v_threshold).to(x.dtype)
        v = torch.where(s.bool(), torch.full_like(h, v_reset), h)
        spikes.append(s)
    return torch.stack(spikes), v


IF_BACKENDS = ["torch", "cpp", pytest.param("triton", marks=pytest.mark.skipif(
    not (_extension.has_triton() and not torch.cuda.is_available()), reason="Triton cannot run on CPU here"))]


@pytest.mark.parametrize("backend", IF_BACKENDS)
@pytest.mark.parametrize("kw", [dict(tau=math.inf), dict(decay=0.0), dict(tau=torch.tensor(math.inf))],
                         ids=["tau=inf", "decay=0", "tensor tau=inf"])
def test_if_neuron_is_tau_inf_without_decay_input(backend, kw):
    x = _inputs((13, 2, 9), "cpu", scale=0.6)
    spikes, v = tcl_fast.lif_multistep(x, decay_input=False, return_v=True, backend=backend, **kw)
    want_s, want_v = _if_reference(x)
    assert torch.equal(spikes, want_s)
    assert 0 < want_s.mean() < 1
    torch.testing.assert_close(v, want_v, rtol=1e-6, atol=1e-6)


def test_if_module_needs_decay_input_false():
    with pytest.raises(ValueError, match="needs decay_input=False"):
        tcl_fast.LIFMultiStep(tau=math.inf)
    with pytest.raises(ValueError, match="learnable_tau needs a finite tau"):
        tcl_fast.LIFMultiStep(tau=math.inf, decay_input=False, learnable_tau=True)
    x = _inputs((5, 7), "cpu")
    torch.testing.assert_close(tcl_fast.LIFMultiStep(tau=math.inf, decay_input=False, backend="cpp")(x),
                               _if_reference(x)[0])


@pytest.mark.parametrize("alpha", [1e-7, 1e-23])
def test_alpha_below_the_floor_is_refused(alpha):
    # Triangle's 1/alpha^2 leaves float32 near 1e-23: NaN gradients. The floor is 1e-6.
    with pytest.raises(ValueError, match="at least 1e-06"):
        tcl_fast.lif_multistep(torch.ones(3, 4), surrogate="triangle", alpha=alpha)
    tcl_fast.lif_multistep(torch.ones(3, 4), surrogate="triangle", alpha=1e-6)


@pytest.mark.skipif(not HAS_CUDA_KERNELS, reason="needs a GPU and the CUDA kernels")
def test_tensor_tau_is_checked_without_a_host_sync():
    x = torch.randn(4, 1000, device="cuda")
    lif = tcl_fast.LIFMultiStep(tau=2.0, learnable_tau=True, backend="cuda").cuda()
    tau = torch.tensor(3.0, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        tcl_fast.lif_multistep(x, tau=tau, backend="cuda")
        lif(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_float_decay_reaches_the_kernel_unchanged():
    # decay= is the single source of truth: no decay -> tau -> decay round trip
    # (which used to change the last bit of ~17 % of values). Python side: 100k
    # random decays come back from validation bit for bit.
    from tcl_fast.ops.lif import validate_decay

    rng = torch.Generator().manual_seed(0)
    decays = torch.rand(100_000, generator=rng, dtype=torch.float64).clamp_min(1e-12).tolist()
    assert all(validate_decay(decay=k) == k for k in decays)
    # Kernel side: with x = 0, v0 = 1 and no spike, v_last = 1 - (1 - 0) * k,
    # which equals 1 - k computed in the accumulation dtype only if the kernel
    # holds k exactly (float64 for float64 x; float32(k) for float32 x).
    backend = "cpp" if _extension.has_cpp() else "torch"
    for k in decays[:500]:
        for dtype in (torch.float64, torch.float32):
            x = torch.zeros(1, 1, dtype=dtype)
            v0 = torch.ones(1, dtype=dtype)
            _, v_last = tcl_fast.lif_multistep(x, v0, decay=k, decay_input=False, v_threshold=10.0,
                                               return_v=True, backend=backend)
            one = torch.ones((), dtype=dtype)
            assert v_last.item() == (one - one * torch.tensor(k, dtype=dtype)).item(), (k, dtype)
