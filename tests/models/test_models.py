"""Every model: forward/backward for T=1 and T=4, shapes, T_eval < T, backends, errors."""
from __future__ import annotations

import pytest
import torch

from tcl_fast import LIFMultiStep
from tcl_fast.models import MODELS, SNNOutput, build_model
from tcl_fast.ops.lif import backend_available

# (in_channels, spatial size): resnets at a tiny size, vggsnn needs 16 for its four pools
SHAPES = {"small": (1, 8), "resnet18": (3, 8), "resnet19": (3, 8), "vggsnn": (2, 16)}
K, P = 7, 16


def _build(name, backend="torch", **kw):
    torch.manual_seed(0)
    return build_model(name, K, SHAPES[name][0], proj_dim=P, lif_backend=backend, **kw)


def test_registry_lists_every_model():
    assert set(MODELS) == set(SHAPES)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("T", [1, 4])
def test_forward_backward_static_input(name, T):
    c, s = SHAPES[name]
    model = _build(name)
    out = model(torch.randn(2, c, s, s), T=T)
    assert isinstance(out, SNNOutput)
    assert out.logits.shape == (T, 2, K) and out.features.shape == (T, 2, P)
    (out.logits.mean() + out.features.mean()).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


@pytest.mark.parametrize("name", MODELS)
def test_time_first_input_and_shorter_eval(name):
    c, s = SHAPES[name]
    model = _build(name).eval()
    x = torch.randn(4, 2, c, s, s)  # [T, B, C, H, W]
    with torch.no_grad():
        full = model(x)
        short = model(x, T=2)
        direct = model(x[:2])
    assert full.logits.shape == (4, 2, K) and short.logits.shape == (2, 2, K)
    torch.testing.assert_close(short.logits, direct.logits)
    # Causal in time: the first steps of a long run equal a short run (evaluate_latency relies on it).
    torch.testing.assert_close(full.logits[:2], short.logits)
    torch.testing.assert_close(full.features[:2], short.features)


def test_static_input_equals_repeated_time_first_input():
    model = _build("small").eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        a = model(x, T=3)
        b = model(x.unsqueeze(0).repeat(3, 1, 1, 1, 1))
    torch.testing.assert_close(a.logits, b.logits)


_BACKENDS = [b for b in ("torch", "cpp", "triton") if backend_available(b, torch.device("cpu"))]


def _logits_and_grads(model, x):
    out = model(x, T=3)
    weight = torch.randn(out.logits.shape, generator=torch.Generator().manual_seed(1))
    (out.logits * weight).sum().backward()
    return out.logits.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("backend", [b for b in _BACKENDS if b != "torch"])
def test_every_available_cpu_backend_runs_and_agrees(backend):
    ref = _build("small", "torch")
    model = _build("small", backend)
    model.load_state_dict(ref.state_dict())
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    logits, grads = _logits_and_grads(model, x)
    logits_ref, grads_ref = _logits_and_grads(ref, x)
    torch.testing.assert_close(logits, logits_ref, rtol=1e-4, atol=1e-4)
    assert grads.keys() == grads_ref.keys()
    for name, g_ref in grads_ref.items():
        g = grads[name]
        assert (g is None) == (g_ref is None), name
        if g_ref is not None:
            torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
    first_conv = next(n for n, p in ref.named_parameters() if p.dim() == 4)
    assert grads_ref[first_conv].abs().sum() > 0  # the gradient got through every LIF layer


def test_lif_kwargs_reach_every_neuron():
    model = _build("resnet19", tau=3.0, detach_reset=True)
    lifs = [m for m in model.modules() if isinstance(m, LIFMultiStep)]
    assert len(lifs) > 10
    assert all(m.tau == 3.0 and m.detach_reset and m.backend == "torch" for m in lifs)


def test_batch_of_one_with_one_step_trains():
    model = _build("small")
    out = model(torch.randn(1, 1, 8, 8), T=1)  # projection BN cannot use batch stats here
    (out.features.sum() + out.logits.sum()).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    missing = [n for n, g in grads.items() if g is None]
    assert not missing, f"no gradient for {missing}"
    bad = [n for n, g in grads.items() if not torch.isfinite(g).all()]
    assert not bad, f"non-finite gradient in {bad}"
    assert any(g.abs().sum() > 0 for g in grads.values())


def test_input_errors_are_clear():
    model = _build("small")
    with pytest.raises(ValueError, match="needs T"):
        model(torch.randn(2, 1, 8, 8))
    with pytest.raises(ValueError, match="only 2"):
        model(torch.randn(2, 2, 1, 8, 8), T=3)
    with pytest.raises(ValueError, match="positive int"):
        model(torch.randn(2, 1, 8, 8), T=0)
    with pytest.raises(ValueError, match="expected"):
        model(torch.randn(2, 64))
    with pytest.raises(ValueError, match="unknown model"):
        build_model("resnet50", 10, 3)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("small", 0, 1)
