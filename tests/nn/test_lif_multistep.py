"""LIFMultiStep as a module, and as a drop-in for SpikingJelly's LIFNode."""
from __future__ import annotations

import itertools
import math
import warnings

import pytest
import torch
from optional_deps import require

import tcl_fast
from tcl_fast import _extension
from tcl_fast.ops.lif_reference import lif_multistep_reference

BACKENDS = [b for b in ("torch", "cpp", "triton") if tcl_fast.ops.lif.backend_available(b, torch.device("cpu"))]


FUSED_BACKENDS = [b for b in BACKENDS if b != "torch"]


def _plif_output_and_tau_grad(backend):
    m = tcl_fast.LIFMultiStep(tau=3.0, surrogate="triangle", learnable_tau=True, v_reset=None,
                              backend=backend)
    x = torch.randn(8, 2, 16, generator=torch.Generator().manual_seed(0)) * 1.5 + 0.4
    grad_out = torch.randn(8, 2, 16, generator=torch.Generator().manual_seed(1))
    out = m(x)
    (out * grad_out).sum().backward()
    return x, out, m.w.grad


def test_reference_plif_tau_gradient_matches_finite_differences():
    # The torch backend's tau gradient (the baseline the fused ones are held to)
    # against a finite difference of the loss in w, in float64.
    m = tcl_fast.LIFMultiStep(tau=3.0, surrogate="triangle", learnable_tau=True, v_reset=None,
                              backend="torch").double()
    x = (torch.randn(8, 2, 16, generator=torch.Generator().manual_seed(0)) * 1.5 + 0.4).double()
    from tcl_fast.ops.lif import lif_multistep
    # smooth mode: the spike is the surrogate's integral, so a finite difference sees the gradient
    assert torch.autograd.gradcheck(
        lambda w: lif_multistep(x, decay=torch.sigmoid(w), v_reset=None, surrogate="triangle",
                                backend="torch", _smooth=True),
        (m.w.detach().clone().requires_grad_(),))


@pytest.mark.parametrize("backend", FUSED_BACKENDS)
def test_module_matches_functional_and_learns_tau(backend):
    x, out, w_grad = _plif_output_and_tau_grad(backend)
    w = torch.tensor(-math.log(3.0 - 1.0))
    ref, _ = lif_multistep_reference(x, None, torch.sigmoid(w), 1.0, None, True, False, "triangle", None)
    assert torch.equal(out, ref)
    assert 0 < out.sum() < out.numel()  # some spikes, not all: the surrogate sees both sides
    # The tau gradient equals the reference backend's (a sum over every neuron and step).
    _, _, w_grad_ref = _plif_output_and_tau_grad("torch")
    assert w_grad_ref.abs() > 1e-3
    torch.testing.assert_close(w_grad, w_grad_ref, rtol=1e-5, atol=1e-6)


def test_repr_names_every_setting():
    text = repr(tcl_fast.LIFMultiStep(tau=3.0, learnable_tau=True, v_reset=None, surrogate="atan",
                                      detach_reset=True, backend="torch"))
    for part in ("tau=3.0 (learnable)", "reset=soft", "atan(alpha=2.0)", "detach_reset=True", "backend=torch"):
        assert part in text, (part, text)


@pytest.mark.skipif(not _extension.has_cpp(), reason="tcl_fast._C not built")
def test_auto_backend_uses_cpp_without_warning(monkeypatch):
    from tcl_fast.ops import lif as lif_ops

    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        assert lif_ops.resolve_backend("auto", torch.device("cpu"), dtype) == "cpp"
    # The fallback warning is given once per process: forget earlier ones, so
    # that a fallback here warns (and fails) whatever ran before this test.
    monkeypatch.setattr(lif_ops, "_warned_fallback", set())
    calls = []
    kernel = lif_ops._lif_op
    monkeypatch.setattr(lif_ops, "_lif_op", lambda *a: calls.append(a[0].device) or kernel(*a))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tcl_fast.LIFMultiStep()(torch.randn(3, 4))
    assert calls == [torch.device("cpu")]  # the module ran the C++ op, once


def test_explicit_unavailable_backend_raises():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="'cuda' is not available"):
        tcl_fast.LIFMultiStep(backend="cuda")(torch.randn(3, 4))


def test_streaming_with_v0_and_return_v():
    m = tcl_fast.LIFMultiStep(backend="torch")
    x = torch.randn(10, 3, 5) * 2
    full, v_full = m(x, return_v=True)
    first, v1 = m(x[:4], return_v=True)
    second, v2 = m(x[4:], v1, return_v=True)
    assert torch.equal(torch.cat([first, second]), full)
    assert torch.equal(v2, v_full)


# ---------------------------------------------------------------------------
# SpikingJelly parity (runs where spikingjelly is installed, as in CI)
# ---------------------------------------------------------------------------
SJ_SURROGATES = {  # ours -> SpikingJelly's surrogate with the same ds/du
    "sigmoid": ("Sigmoid", 4.0, 4.0),
    "atan": ("ATan", 2.0, 2.0),
    "triangle": ("PiecewiseQuadratic", 1.0, 1.0),  # alpha - alpha^2 |u| == triangle with gamma = 1/alpha
}


@pytest.mark.parametrize("surrogate", list(SJ_SURROGATES))
@pytest.mark.parametrize("decay_input,v_reset,detach_reset",
                         list(itertools.product([True, False], [0.0, None, -0.25], [False, True])))
def test_matches_spikingjelly_lifnode(surrogate, decay_input, v_reset, detach_reset):
    sj = require("spikingjelly.activation_based.neuron")
    from spikingjelly.activation_based import surrogate as sj_surrogate

    sj_name, sj_alpha, our_alpha = SJ_SURROGATES[surrogate]
    tau = 4.0  # 1/tau exact in binary, so SpikingJelly's division equals our multiply
    node = sj.LIFNode(tau=tau, decay_input=decay_input, v_threshold=1.0, v_reset=v_reset,
                      surrogate_function=getattr(sj_surrogate, sj_name)(alpha=sj_alpha),
                      detach_reset=detach_reset, step_mode="m")
    ours = tcl_fast.LIFMultiStep(tau=tau, decay_input=decay_input, v_threshold=1.0, v_reset=v_reset,
                                 surrogate=surrogate, alpha=our_alpha, detach_reset=detach_reset)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 4, 37, generator=g) * 1.5 + 0.6
    grad = torch.randn(x.shape, generator=g)
    x_sj = x.clone().requires_grad_()
    x_ours = x.clone().requires_grad_()
    s_sj = node(x_sj)
    s_ours = ours(x_ours)
    assert torch.equal(s_ours, s_sj)
    assert 0.02 < s_sj.mean() < 0.9  # the comparison exercises both firing and silence
    s_sj.backward(grad)
    s_ours.backward(grad)
    torch.testing.assert_close(x_ours.grad, x_sj.grad, atol=1e-5, rtol=1e-5)


def test_firing_parameters_live_in_one_validated_spec():
    # The module's attributes read its NeuronSpec; assigning one builds a new spec,
    # so a bad value raises at the assignment instead of at some later forward.
    m = tcl_fast.LIFMultiStep(surrogate="atan", backend="torch")
    spec = m.spec
    assert (m.v_threshold, m.v_reset, m.surrogate, m.alpha) == (1.0, 0.0, "atan", 2.0)
    m.v_threshold = 0.5
    assert m.spec is not spec and m.spec.v_threshold == 0.5 and m.spec.kernel_args[0] == 0.5
    with pytest.raises(ValueError, match="v_threshold"):
        m.v_threshold = -1.0  # below v_reset
    assert m.v_threshold == 0.5  # unchanged by the refused assignment
    x = torch.randn(6, 3, 5) * 2
    want, _ = lif_multistep_reference(x, None, 0.5, 0.5, 0.0, True, False, "atan", 2.0)
    assert torch.equal(m(x), want)
    with pytest.raises(ValueError, match="not both"):
        tcl_fast.lif_multistep(x, spec=m.spec, v_threshold=0.7)


def test_functional_firing_defaults_are_the_specs():
    # lif_multistep(spec=...) refuses firing keywords changed from their defaults,
    # so those defaults must be NeuronSpec's, field for field.
    import inspect
    from dataclasses import fields

    keywords = inspect.signature(tcl_fast.lif_multistep).parameters
    for f in fields(tcl_fast.NeuronSpec):
        if f.init:
            name = "surrogate_beta" if f.name == "beta" else f.name
            assert keywords[name].default == f.default, name
