"""Triton LIF backend vs the pure-PyTorch reference.

Without a GPU, tests/conftest.py turns on TRITON_INTERPRET=1 and the kernels
run in Triton's interpreter on CPU tensors (slow: shapes stay small).
"""
from __future__ import annotations

import pytest
import torch

import tcl_fast
from tcl_fast.ops.lif_reference import SURROGATES
from tcl_fast.ops.lif_triton import lif_triton_available

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

pytestmark = pytest.mark.skipif(
    not lif_triton_available(DEVICE), reason="Triton cannot run here (no triton, or no GPU "
    "and TRITON_INTERPRET unset)")


def _inputs(shape, dtype=torch.float32, seed=0):
    """Drive x around the threshold so that neurons both fire and stay silent."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 1.2 + 0.6).to(dtype)
    v0 = (torch.rand(shape[1:], generator=gen, dtype=torch.float64) * 0.6).to(dtype)
    w_spikes = torch.randn(shape, generator=gen, dtype=torch.float64)
    w_v = torch.randn(shape[1:], generator=gen, dtype=torch.float64)
    return [t.to(DEVICE) for t in (x, v0, w_spikes, w_v)]


def _run(backend, x, v0, decay, w_spikes, w_v, **kw):
    """Forward + backward of a loss using both outputs; returns values and grads."""
    x = x.detach().clone().requires_grad_()
    v0 = None if v0 is None else v0.detach().clone().requires_grad_()
    decay = decay.detach().clone().requires_grad_()
    spikes, v_last = tcl_fast.lif_multistep(x, v0, decay=decay, return_v=True,
                                            backend=backend, **kw)
    loss = (spikes * w_spikes.to(spikes.dtype)).sum() + (v_last * w_v.to(v_last.dtype)).sum()
    loss.backward()
    grad_v0 = torch.zeros(0) if v0 is None else v0.grad
    return spikes.detach(), v_last.detach(), x.grad, grad_v0, decay.grad


def _decay(dtype=torch.float32, tau=2.5):
    return torch.tensor(1.0 / tau, dtype=dtype, device=DEVICE)


def _assert_matches_reference(x, v0, decay, w_s, w_v, rtol=1e-5, atol=1e-5, **kw):
    got = _run("triton", x, v0, decay, w_s, w_v, **kw)
    want = _run("torch", x, v0, decay, w_s, w_v, **kw)
    spikes, want_spikes = got[0], want[0]
    if not kw.get("_smooth", False):
        assert torch.equal(spikes, want_spikes)
        frac = spikes.float().mean().item()
        assert 0.0 < frac < 1.0, f"degenerate test input: spike rate {frac}"
    for name, a, b in zip(("spikes", "v_last", "grad_x", "grad_v0", "grad_decay"), got, want):
        assert a.dtype == b.dtype, name
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")
    return got


@pytest.mark.parametrize("surrogate", SURROGATES)
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("v_reset", [0.0, None], ids=["hard", "soft"])
@pytest.mark.parametrize("decay_input", [True, False])
def test_matches_reference_every_setting(decay_input, v_reset, detach_reset, surrogate):
    x, v0, w_s, w_v = _inputs((6, 40), seed=1)
    got = _assert_matches_reference(
        x, v0, _decay(), w_s, w_v, v_reset=v_reset, decay_input=decay_input,
        detach_reset=detach_reset, surrogate=surrogate)
    assert got[2].abs().sum() > 0 and got[4] != 0  # the surrogate window was hit


@pytest.mark.parametrize("shape", [(1, 64), (37, 3, 7), (5, 1030)],
                         ids=["T1", "T37", "N_not_multiple_of_block"])
@pytest.mark.parametrize("v_reset", [0.0, None], ids=["hard", "soft"])
def test_odd_shapes(shape, v_reset):
    x, v0, w_s, w_v = _inputs(shape, seed=2)
    _assert_matches_reference(x, v0, _decay(), w_s, w_v, v_reset=v_reset, surrogate="atan")


@pytest.mark.parametrize("decay_input", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_non_default_parameters(dtype, decay_input):
    # v_threshold = 0.3 is not exact in binary: float64 must not see it rounded to fp32
    x, v0, w_s, w_v = _inputs((7, 33), dtype=dtype, seed=3)
    _assert_matches_reference(
        x * 0.5 - 0.1, v0 * 0.5 - 0.2, _decay(dtype, tau=1.7), w_s, w_v,
        v_threshold=0.3, v_reset=-0.2, decay_input=decay_input, surrogate="triangle", alpha=0.7,
        rtol=1e-12 if dtype == torch.float64 else 1e-5,
        atol=1e-12 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("v_reset", [-0.2, None], ids=["hard", "soft"])
def test_without_v0_starts_at_v_reset(v_reset):
    x, _, w_s, w_v = _inputs((6, 40), seed=10)
    got = _assert_matches_reference(x, None, _decay(), w_s, w_v, v_reset=v_reset,
                                    decay_input=False, surrogate="sigmoid")
    assert got[3].numel() == 0  # no v0, no gradient for it


@pytest.mark.parametrize("v_reset", [-0.2, None], ids=["hard", "soft"])
def test_op_without_v0_equals_v0_filled_with_v_reset(v_reset):
    """The op itself accepts v0=None (no v0 buffer read, no grad_v0 written)."""
    from tcl_fast.ops.lif_triton import lif_forward_triton

    x, _, w_s, w_v = _inputs((6, 40), seed=11)
    v_r = 0.0 if v_reset is None else v_reset
    outs = []
    for v0 in (None, torch.full((40,), v_r, device=DEVICE)):
        xi, decay = x.clone().requires_grad_(), _decay().requires_grad_()
        spikes, v_last = lif_forward_triton(xi, v0, decay, 1.0, v_r, v_reset is not None,
                                            True, False, 1, 2.0, 0.0, False)
        ((spikes * w_s.float()).sum() + (v_last * w_v.float()).sum()).backward()
        outs.append((spikes, v_last, xi.grad, decay.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_learnable_tau_gradient():
    x, v0, _, _ = _inputs((6, 24), seed=4)
    grads = []
    for backend in ("triton", "torch"):
        tau = torch.tensor(2.5, requires_grad=True, device=DEVICE)
        spikes, v_last = tcl_fast.lif_multistep(x, v0, tau=tau, return_v=True,
                                                surrogate="sigmoid", backend=backend)
        (spikes.sum() + v_last.square().sum()).backward()
        grads.append(tau.grad)
    assert grads[0] != 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_within_twice_reference_error(dtype):
    x32, v0_32, w_s, w_v = _inputs((8, 64), seed=5)
    x, v0 = x32.to(dtype), v0_32.to(dtype)
    decay = _decay()
    # spikes: the kernel accumulates in float32, so it must fire exactly like
    # the reference run on the same (rounded) input upcast to float32
    spikes = tcl_fast.lif_multistep(x, v0, decay=decay, backend="triton")
    assert spikes.dtype == dtype
    assert torch.equal(spikes.float(), tcl_fast.lif_multistep(x.float(), v0.float(),
                                                              decay=decay, backend="torch"))
    # upstream gradients arrive in the half dtype: give the oracle the same ones
    w_s, w_v = w_s.to(dtype), w_v.to(dtype)
    oracle = _run("torch", x.double(), v0.double(), decay.double(), w_s.double(), w_v.double())
    got = _run("triton", x, v0, decay, w_s, w_v)
    ref = _run("torch", x, v0, decay, w_s, w_v)
    for name, g, r, o in zip(("v_last", "grad_x", "grad_v0", "grad_decay"),
                             got[1:], ref[1:], oracle[1:]):
        assert g.dtype == r.dtype, name
        err = (g.double() - o).abs().max().item()
        ref_err = (r.double() - o).abs().max().item()
        scale = o.abs().max().item()
        assert err <= 2 * ref_err + 1e-6 * scale, f"{name}: {err} vs reference {ref_err}"


def test_grad_of_v_last_only_and_streaming():
    """Two chunks fed v_last -> v0 must equal one pass, values and grads."""
    x, v0, w_s, w_v = _inputs((10, 30), seed=6)
    kw = dict(v_reset=None, surrogate="rectangle", return_v=True, backend="triton")

    # a loss of v_last alone: grad_spikes is absent, the gradient enters via v_last
    xa = x.clone().requires_grad_()
    xb = x.clone().requires_grad_()
    (tcl_fast.lif_multistep(xa, v0, **kw)[1] * w_v).sum().backward()
    s_ref, v_ref = tcl_fast.lif_multistep(xb, v0, **{**kw, "backend": "torch"})
    (v_ref * w_v).sum().backward()
    assert xa.grad.abs().sum() > 0
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-6)

    whole = x.clone().requires_grad_()
    s_all, v_all = tcl_fast.lif_multistep(whole, v0, **kw)
    ((s_all * w_s).sum() + (v_all * w_v).sum()).backward()
    chunked = x.clone().requires_grad_()
    s1, v1 = tcl_fast.lif_multistep(chunked[:4], v0, **kw)
    s2, v2 = tcl_fast.lif_multistep(chunked[4:], v1, **kw)
    ((torch.cat([s1, s2]) * w_s).sum() + (v2 * w_v).sum()).backward()
    assert torch.equal(torch.cat([s1, s2]), s_all)
    torch.testing.assert_close(v2, v_all, rtol=0, atol=0)
    torch.testing.assert_close(chunked.grad, whole.grad, rtol=1e-5, atol=1e-6)


def test_zero_neurons():
    x = torch.randn(4, 0, device=DEVICE, requires_grad=True)
    spikes, v_last = tcl_fast.lif_multistep(x, return_v=True, backend="triton")
    assert spikes.shape == (4, 0) and v_last.shape == (0,)
    (spikes.sum() + v_last.sum()).backward()
    assert x.grad.shape == (4, 0)


@pytest.mark.parametrize("v_reset", [0.0, None], ids=["hard", "soft"])
@pytest.mark.parametrize("surrogate", SURROGATES)
def test_smooth_mode_gradcheck(surrogate, v_reset):
    """Firing G(u) makes the analytic backward the exact derivative: gradcheck it."""
    # 3 steps of 2 neurons: each gradcheck probe is an interpreted kernel launch.
    x, v0, _, _ = _inputs((3, 2), dtype=torch.float64, seed=7)
    decay_input = surrogate in ("sigmoid", "triangle")
    kw = dict(v_reset=v_reset, decay_input=decay_input, surrogate=surrogate, _smooth=True,
              return_v=True)
    decay = _decay(torch.float64).requires_grad_()
    x.requires_grad_()
    v0.requires_grad_()

    def run(x, v0, decay):
        return tcl_fast.lif_multistep(x, v0, decay=decay, backend="triton", **kw)

    for got, want in zip(run(x, v0, decay),
                         tcl_fast.lif_multistep(x, v0, decay=decay, backend="torch", **kw)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(run, (x, v0, decay))


def test_opcheck():
    x, v0, w_s, w_v = _inputs((3, 8), seed=8)
    decay = _decay().requires_grad_()
    params = (1.0, 0.0, True, True, False, 0, 4.0, 0.0, False)
    torch.library.opcheck(torch.ops.tcl_fast.lif_forward_triton.default,
                          (x.requires_grad_(), v0.requires_grad_(), decay, *params))
    torch.library.opcheck(torch.ops.tcl_fast.lif_backward_triton.default,
                          (w_s.float(), w_v.float(), x.detach(), v0.detach(), decay.detach(),
                           *params, True))
    torch.library.opcheck(torch.ops.tcl_fast.lif_forward_triton.default,
                          (x, None, decay, *params))


def test_torch_compile_fullgraph():
    x, v0, _, _ = _inputs((5, 16), seed=9)
    decay = _decay()

    def step(x, v0, decay):
        spikes, v_last = tcl_fast.lif_multistep(x, v0, decay=decay, return_v=True,
                                                surrogate="atan", backend="triton")
        return spikes.sum() + v_last.square().sum()

    # inductor compiles user Triton kernels only for GPUs; on CPU check the trace
    compiled = torch.compile(step, fullgraph=True,
                             backend="inductor" if DEVICE == "cuda" else "aot_eager")
    grads = []
    for fn in (compiled, step):
        xi, di = x.clone().requires_grad_(), decay.clone().requires_grad_()
        loss = fn(xi, v0, di)
        loss.backward()
        grads.append((loss.detach(), xi.grad, di.grad))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
