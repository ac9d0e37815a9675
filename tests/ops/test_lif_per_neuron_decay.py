"""A decay per neuron (PLIF with one learnt tau per channel) through every LIF backend.

The kernels take the decay as one value or as a tensor of the neuron dims'
shape; ``lif_multistep`` expands a broadcastable one (e.g. ``[C, 1, 1]``) and
autograd sums its gradient back. Checked against the pure-PyTorch reference,
which broadcasts the decay as written.
"""
from __future__ import annotations

import itertools

import pytest
import torch
from optional_deps import require

import tcl_fast
from tcl_fast import _extension
from tcl_fast.nn import LIFMultiStep, ParametricLIFNode
from tcl_fast.ops import tuning
from tcl_fast.ops.lif_reference import SURROGATES
from tcl_fast.ops.lif_triton import lif_triton_available

needs_cpp = pytest.mark.skipif(not _extension.has_cpp(), reason="tcl_fast._C not built")

BACKENDS = (["cpp"] if _extension.has_cpp() else []) + (
    ["cuda"] if torch.cuda.is_available() and _extension.has_cuda_kernels() else [])
RESETS = {"hard": -0.25, "soft": None}


def _device(backend):
    return "cuda" if backend in ("cuda",) or (backend == "triton" and torch.cuda.is_available()) else "cpu"


def _case(shape, dtype, device, seed=0):
    """x: [T, B, C, ...] around the threshold, v0, a decay per channel [C, 1, ...] in (0.2, 0.9)."""
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 1.3 + 0.5).to(device=device, dtype=dtype)
    v0 = (torch.rand(shape[1:], generator=g, dtype=torch.float64) * 0.5).to(device=device, dtype=dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    decay = (0.2 + 0.7 * torch.rand(shape[2], *[1] * (len(shape) - 3), generator=g, dtype=torch.float64))
    grad_s = torch.randn(shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    grad_v = torch.randn(shape[1:], generator=g, dtype=torch.float64).to(device=device, dtype=dtype)
    return x, v0, decay.to(device=device, dtype=acc), grad_s, grad_v


def _run(backend, x, v0, decay, grad_s, grad_v, **kw):
    x = x.detach().clone().requires_grad_()
    v0 = v0.detach().clone().requires_grad_()
    decay = decay.detach().clone().requires_grad_()
    spikes, v_last = tcl_fast.lif_multistep(x, v0, decay=decay, return_v=True, backend=backend, **kw)
    torch.autograd.backward([spikes, v_last], [grad_s, grad_v])
    return [spikes.detach(), v_last.detach(), x.grad, v0.grad, decay.grad]


NAMES = ("spikes", "v_last", "grad_x", "grad_v0", "grad_decay")


def _assert_matches(got, want, atol, rtol):
    assert torch.equal(got[0], want[0]), "spikes differ"
    assert got[4].shape == want[4].shape  # the decay's own shape: autograd summed the expand back
    for name, a, b in zip(NAMES[1:], got[1:], want[1:]):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("surrogate", ["sigmoid", "atan", "piecewise_leaky_relu"])
@pytest.mark.parametrize("decay_input,reset,detach_reset",
                         list(itertools.product([True, False], RESETS, [False, True])))
def test_matches_reference_every_switch(backend, surrogate, decay_input, reset, detach_reset):
    # sigmoid runs the CPU's inline driver, the others its row-function driver.
    # T = 37 spans three 16-step chunks of the backward (the last one ragged).
    device = _device(backend)
    kw = dict(surrogate=surrogate, decay_input=decay_input, v_reset=RESETS[reset], detach_reset=detach_reset)
    case = _case((37, 3, 5, 7), torch.float32, device, seed=len(surrogate))
    _assert_matches(_run(backend, *case, **kw), _run("torch", *case, **kw), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 2, 3), (16, 1, 5, 3), (5, 2, 130, 3), (9, 3, 4, 5, 7)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_odd_shapes_and_dtypes(backend, shape, dtype):
    # N = 6 .. 780: a lone ragged group, 128-lane groups plus a tail of one lane.
    if backend == "cuda" and dtype == torch.float64:
        pytest.skip("the CUDA kernels have no float64")
    device = _device(backend)
    case = _case(shape, dtype, device, seed=sum(shape))
    got, want = _run(backend, *case), _run("torch", *case)
    tol = {torch.float64: 1e-12, torch.float32: 2e-5}.get(dtype, 2e-2)
    if dtype in (torch.float16, torch.bfloat16):
        # The project's rule for 16 bits (test_lif.py::test_half_precision): the
        # kernels accumulate in float32, so they fire exactly like a float32 run
        # on the same values; every other output is at most 2x as far from a
        # float64 run as plain PyTorch computing at `dtype` (decay included) is.
        x, v0, decay, grad_s, grad_v = case
        fp32 = _run("torch", *[t.float() for t in case])
        assert torch.equal(got[0].float(), fp32[0]), "spikes differ from a float32 run"
        oracle = _run("torch", *[t.double() for t in case])
        plain = _run("torch", x, v0, decay.to(dtype), grad_s, grad_v)
        for name, a, b, p in zip(NAMES[1:], got[1:], oracle[1:], plain[1:]):
            assert a.dtype == p.dtype or name == "grad_decay", name
            err_kernel = (a.double() - b).norm().item()
            err_plain = (p.double() - b).norm().item()
            assert err_kernel <= 2 * err_plain + 1e-6, (name, err_kernel, err_plain)
        return
    _assert_matches(got, want, atol=tol, rtol=tol)


@needs_cpp
def test_wide_cpu_groups_per_neuron_decay():
    # Wide groups (4096 forward / 1024 backward neurons) read the decay per lane too.
    case = _case((8, 2, 64, 48), torch.float32, "cpu", seed=5)  # N = 6144: wide groups plus a narrow tail
    want = _run("torch", *case)
    for groups in ("wide", "narrow"):
        with tuning(cpu_groups=groups):
            _assert_matches(_run("cpp", *case), want, atol=2e-5, rtol=2e-5)


@needs_cpp
def test_same_value_per_neuron_equals_one_decay():
    # A per-neuron decay holding one value gives, bit for bit, the scalar decay's
    # spikes and input gradients; its gradient summed is the scalar's gradient.
    x, v0, _, grad_s, grad_v = _case((21, 4, 6, 5), torch.float32, "cpu", seed=2)
    one = torch.tensor(0.37)
    got = _run("cpp", x, v0, one.expand(6, 1).clone(), grad_s, grad_v)
    want = _run("cpp", x, v0, one, grad_s, grad_v)
    for a, b in zip(got[:4], want[:4]):
        assert torch.equal(a, b)
    torch.testing.assert_close(got[4].sum(), want[4], rtol=1e-5, atol=1e-5)


@needs_cpp
@pytest.mark.parametrize("decay_shape", [(3,), (2, 3)])  # per channel, per neuron
@pytest.mark.parametrize("reset,decay_input", [("hard", True), ("soft", False)])
def test_gradcheck_smooth_mode(decay_shape, reset, decay_input):
    # Smooth mode fires the surrogate's primitive, so finite differences check
    # the whole backward, including each channel's decay gradient. The
    # per-channel kernels build smooth mode for sigmoid only.
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(18, 2, 3, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    v0 = (0.2 * torch.randn(2, 3, generator=g, dtype=torch.float64)).requires_grad_()
    decay = (0.3 + 0.5 * torch.rand(decay_shape, generator=g, dtype=torch.float64)).requires_grad_()
    kw = dict(v_reset=RESETS[reset], decay_input=decay_input, alpha=2.0, return_v=True, _smooth=True)
    # The kernel's smooth forward is the reference's; then each backward is
    # checked against its own forward.
    for got, want in zip(tcl_fast.lif_multistep(x, v0, decay=decay, backend="cpp", **kw),
                         tcl_fast.lif_multistep(x, v0, decay=decay, backend="torch", **kw)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    for backend in ("torch", "cpp"):
        assert torch.autograd.gradcheck(
            lambda x, v0, d, b=backend: tcl_fast.lif_multistep(x, v0, decay=d, backend=b, **kw), (x, v0, decay))


@needs_cpp
def test_smooth_mode_per_channel_other_surrogate_is_refused():
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="built for the sigmoid surrogate only"):
        tcl_fast.lif_multistep(x, decay=torch.full((3,), 0.5, dtype=torch.float64), surrogate="atan",
                               backend="cpp", _smooth=True)


@needs_cpp
@pytest.mark.parametrize("need_decay_grad", [True, False])
def test_opcheck(need_decay_grad):
    x = torch.randn(5, 3, 4) * 1.5 + 0.4
    v0 = 0.1 * torch.randn(3, 4)
    decay = (0.2 + 0.6 * torch.rand(3, 4))
    params = (1.0, 0.0, True, True, False, SURROGATES.index("atan"), 2.0, 0.0, False)
    torch.library.opcheck(torch.ops.tcl_fast.lif_forward.default,
                          (x.requires_grad_(), v0.requires_grad_(), decay.requires_grad_(), *params))
    args = (torch.randn_like(x), torch.randn_like(v0), x.detach(), v0.detach(), decay.detach(), *params,
            need_decay_grad)
    torch.library.opcheck(torch.ops.tcl_fast.lif_backward.default, args)
    grad_decay = torch.ops.tcl_fast.lif_backward(*args)[2]
    assert grad_decay.shape == ((3, 4) if need_decay_grad else (0,))


@needs_cpp
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_gpu_thread_mapping_per_neuron_decay(dtype):
    # The CUDA threads' code run on the CPU (csrc/lif_threads.h): packed and
    # one-lane threads read their neurons' decays like the CPU kernel does.
    testing, ops = torch.ops.tcl_fast_testing, torch.ops.tcl_fast
    params = (1.0, -0.25, True, True, False, 0, 4.0, 0.0, False)
    for T, N, need in [(17, 64, False), (17, 64, True), (5, 37, True), (21, 40, False)]:
        g = torch.Generator().manual_seed(T + N)
        x = (torch.randn(T, N, generator=g) * 1.5 + 0.4).to(dtype)
        decay = 0.2 + 0.7 * torch.rand(N, generator=g)
        gs, gv = torch.randn(T, N, generator=g).to(dtype), torch.randn(N, generator=g).to(dtype)
        got = testing.lif_forward_thread_mapping(x, None, decay, *params) + \
            testing.lif_backward_thread_mapping(gs, gv, x, None, decay, *params, need)
        want = ops.lif_forward(x, None, decay, *params) + ops.lif_backward(gs, gv, x, None, decay, *params, need)
        for name, a, b in zip(("spikes", "v_last", "grad_x", "grad_v0", "grad_decay"), got, want):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.skipif(not lif_triton_available("cuda" if torch.cuda.is_available() else "cpu"),
                    reason="Triton cannot run here")
@pytest.mark.parametrize("decay_input,reset", [(True, "hard"), (False, "soft")])
def test_triton_per_neuron_decay(decay_input, reset):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    kw = dict(decay_input=decay_input, v_reset=RESETS[reset], surrogate="atan")
    case = _case((19, 2, 3, 5), torch.float32, device, seed=11)
    _assert_matches(_run("triton", *case, **kw), _run("torch", *case, **kw), atol=2e-5, rtol=2e-5)


# ----------------------------------------------------------------- refusals ----
def test_decay_that_does_not_broadcast_is_refused():
    x = torch.randn(4, 2, 3, 5)
    with pytest.raises(ValueError, match=r"broadcast to the neuron dims x.shape\[1:\] = \(2, 3, 5\)"):
        tcl_fast.lif_multistep(x, decay=torch.full((4, 1), 0.5))


@pytest.mark.parametrize("bad,match", [(1.5, "decay must be in"), (float("nan"), "decay must be in"),
                                       (0.0, "decay_input=False")])
def test_bad_value_among_many_is_refused(bad, match):
    decay = torch.full((3, 1), 0.5)
    decay[1, 0] = bad
    with pytest.raises(ValueError, match=match):
        tcl_fast.lif_multistep(torch.randn(4, 2, 3, 5), decay=decay)
    tau = torch.full((3, 1), 2.0)
    tau[2, 0] = 0.5
    with pytest.raises(ValueError, match="tau must be in"):
        tcl_fast.lif_multistep(torch.randn(4, 2, 3, 5), tau=tau)


@needs_cpp
@pytest.mark.parametrize("shape", [(5, 1, 1), (1, 5, 1, 1), (4, 5, 6, 7), (7,), (6, 1), (4, 1, 1, 1)])
def test_op_takes_a_per_channel_or_per_neuron_decay_as_it_is(shape):
    # x: [T, 4, 5, 6, 7]; each layout equals the decay expanded to every neuron.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 4, 5, 6, 7, generator=g) * 1.5 + 0.4
    decay = 0.2 + 0.7 * torch.rand(shape, generator=g)
    full = decay.expand(4, 5, 6, 7).contiguous()
    params = (1.0, 0.0, True, True, False, 0, 4.0, 0.0, False)
    ops = torch.ops.tcl_fast
    got = ops.lif_forward(x, None, decay, *params)
    want = ops.lif_forward(x, None, full, *params)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    gs = torch.randn(x.shape, generator=g)
    got = ops.lif_backward(gs, None, x, None, decay, *params, True)
    want = ops.lif_backward(gs, None, x, None, full, *params, True)
    assert torch.equal(got[0], want[0])
    assert got[2].shape == decay.shape
    torch.testing.assert_close(got[2], want[2].sum_to_size(decay.shape), rtol=1e-5, atol=1e-5)


@needs_cpp
def test_op_refuses_a_decay_of_another_shape():
    x = torch.randn(4, 6)
    params = (1.0, 0.0, True, True, False, 0, 4.0, 0.0, False)
    with pytest.raises(RuntimeError, match="decay must be"):
        torch.ops.tcl_fast.lif_forward(x, None, torch.full((5,), 0.5), *params)
    with pytest.raises(RuntimeError, match="decay must be"):  # a view that is not contiguous
        torch.ops.tcl_fast.lif_forward(x.view(4, 3, 2), None, torch.full((2, 3), 0.5).t(), *params)
    with pytest.raises(RuntimeError, match="decay must be"):  # two dims not 1, not the full shape
        torch.ops.tcl_fast.lif_forward(x.view(4, 1, 3, 2), None, torch.full((3, 2), 0.5), *params)


# ------------------------------------------------------------------ modules ----
@pytest.mark.parametrize("backend", ["torch"] + BACKENDS)
def test_plif_per_channel_equals_one_plif_per_channel(backend):
    # ParametricLIFNode(channels=C) on [T, B, C, H] is C scalar PLIFs, channel c
    # with w[c]: same spikes, and w.grad[c] is that scalar PLIF's w.grad.
    device = _device(backend)
    torch.manual_seed(0)
    x = (torch.randn(6, 2, 3, 4, device=device) * 1.5 + 0.5)
    node = ParametricLIFNode(init_tau=2.0, channels=3, step_mode="m", backend=backend).to(device)
    with torch.no_grad():
        node.w.copy_(torch.tensor([-1.0, 0.0, 1.5]))
    out = node(x)
    out.backward(torch.ones_like(out))
    for c in range(3):
        one = ParametricLIFNode(step_mode="m", backend=backend).to(device)
        with torch.no_grad():
            one.w.fill_(node.w[c].item())
        oc = one(x[:, :, c])
        oc.backward(torch.ones_like(oc))
        assert torch.equal(oc, out[:, :, c])
        torch.testing.assert_close(one.w.grad, node.w.grad[c], rtol=1e-5, atol=1e-5)


def test_plif_per_channel_single_step_equals_multi_step():
    torch.manual_seed(1)
    x = torch.randn(5, 2, 4, 3, 3) + 0.5
    node = ParametricLIFNode(channels=4, step_mode="m")
    with torch.no_grad():
        node.w.copy_(torch.linspace(-1, 1, 4))
    multi = node(x)
    node.reset()
    node.step_mode = "s"
    single = torch.stack([node(xt) for xt in x])
    assert torch.equal(multi, single)


def test_per_channel_modules_refuse_bad_use():
    with pytest.raises(ValueError, match="takes x: \\[T, B, 4, ...\\]"):
        LIFMultiStep(learnable_tau=True, channels=4)(torch.randn(3, 2, 5, 6))
    with pytest.raises(ValueError, match="needs learnable_tau=True"):
        LIFMultiStep(channels=4)
    with pytest.raises(ValueError, match="positive int"):
        ParametricLIFNode(channels=0)
    node = ParametricLIFNode(channels=3, step_mode="m")
    with pytest.raises(ValueError, match="takes x"):
        node(torch.randn(3, 2))  # [T, B]: no channel dim


def test_per_channel_state_dict_and_repr():
    m = LIFMultiStep(tau=3.0, learnable_tau=True, channels=5)
    assert m.w.shape == (5,) and torch.allclose(1 / m.w.sigmoid(), torch.full((5,), 3.0))
    assert "per channel, channels=5" in repr(m)
    node = ParametricLIFNode(init_tau=3.0, channels=5)
    node.load_state_dict({"w": torch.zeros(5)})
    assert "channels=5" in repr(node)


def test_inverse_conversion_refuses_per_channel_plif():
    require("spikingjelly")
    net = torch.nn.Sequential(ParametricLIFNode(channels=3))
    with pytest.raises(tcl_fast.ConversionError, match=r"0: a tau per channel \(channels=3\)"):
        tcl_fast.convert_spikingjelly(net, inverse=True)
