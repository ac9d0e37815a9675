"""TCL / STCL losses: which representations are anchors and positives, modules, input checks."""
from __future__ import annotations

import pytest
import torch

from tcl_fast.losses import STCLLoss, SupConLoss, TCLLoss, stcl_loss, tcl_loss
from tcl_fast.ops import supcon as supcon_module
from tcl_fast.ops.supcon import supcon_loss
from tcl_fast.ops.supcon_reference import supcon_loss_reference

# CUDA tensors on a GPU machine; CPU tensors through the Triton interpreter otherwise.
TRITON_DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
needs_triton = pytest.mark.skipif(
    not supcon_module.supcon_backend_available("triton", TRITON_DEVICE),
    reason="Triton backend needs a CUDA device, or TRITON_INTERPRET=1 for CPU tensors",
)


def _features(t, b, d, seed, dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(t, b, d, generator=generator, dtype=dtype)


def _flatten_by_hand(views, labels):
    """Rows and labels of every (view, step, sample) built one by one, no reshape."""
    rows, row_labels = [], []
    for view in views:
        for step in range(view.shape[0]):
            for sample in range(view.shape[1]):
                rows.append(view[step, sample])
                row_labels.append(int(labels[sample]))
    return torch.stack(rows), torch.tensor(row_labels)


@pytest.mark.parametrize("t,b,d", [(1, 6, 5), (4, 7, 3), (3, 5, 10)])
@pytest.mark.parametrize("backend", ["reference", "blocked"])
def test_tcl_equals_supcon_over_all_steps(t, b, d, backend):
    features = _features(t, b, d, seed=t * 100 + b).requires_grad_(True)
    labels = torch.randint(0, 3, (b,), generator=torch.Generator().manual_seed(b))
    loss = tcl_loss(features, labels, 0.2, backend=backend)
    (grad,) = torch.autograd.grad(loss, features)

    by_hand = features.detach().clone().requires_grad_(True)
    rows, row_labels = _flatten_by_hand([by_hand], labels)
    expected = supcon_loss_reference(rows, row_labels, 0.2)
    (expected_grad,) = torch.autograd.grad(expected, by_hand)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad)
    # ... and it is exactly supcon_loss on the reshaped tensor with repeated labels.
    torch.testing.assert_close(
        loss, supcon_loss(features.detach().reshape(t * b, d), labels.repeat(t), 0.2,
                          backend=backend)
    )


@pytest.mark.parametrize("t,b,d", [(1, 5, 4), (3, 6, 7)])
@pytest.mark.parametrize("backend", ["reference", "blocked"])
def test_stcl_equals_supcon_over_both_views(t, b, d, backend):
    view_a = _features(t, b, d, seed=1).requires_grad_(True)
    view_b = _features(t, b, d, seed=2).requires_grad_(True)
    labels = torch.tensor([3, -1, 3, 8, -1, 0])[:b]
    loss = stcl_loss(view_a, view_b, labels, 0.1, 0.07, backend=backend)
    grad_a, grad_b = torch.autograd.grad(loss, (view_a, view_b))

    hand_a = view_a.detach().clone().requires_grad_(True)
    hand_b = view_b.detach().clone().requires_grad_(True)
    rows, row_labels = _flatten_by_hand([hand_a, hand_b], labels)
    expected = supcon_loss_reference(rows, row_labels, 0.1, 0.07)
    expected_a, expected_b = torch.autograd.grad(expected, (hand_a, hand_b))
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad_a, expected_a)
    torch.testing.assert_close(grad_b, expected_b)


def test_same_sample_at_other_steps_is_a_positive():
    # All labels distinct: with one step nobody has a positive (loss 0); with two
    # steps each anchor's only positive is itself at the other step.
    features = _features(2, 4, 6, seed=5)
    labels = torch.arange(4)
    assert tcl_loss(features[:1], labels).item() == 0.0
    two_steps = tcl_loss(features, labels, 0.5)
    zn = torch.nn.functional.normalize(features.reshape(8, 6), dim=1)
    logits = zn @ zn.T / 0.5
    terms = []
    for i in range(8):
        others = torch.cat([logits[i, :i], logits[i, i + 1:]])
        terms.append(torch.logsumexp(others, 0) - logits[i, (i + 4) % 8])
    torch.testing.assert_close(two_steps, torch.stack(terms).mean())


def test_other_view_is_a_positive():
    view_a, view_b = _features(1, 3, 4, seed=6), _features(1, 3, 4, seed=7)
    labels = torch.arange(3)
    loss = stcl_loss(view_a, view_b, labels)
    assert loss.item() > 0.0  # each anchor's positive is the other view of its sample
    assert tcl_loss(view_a, labels).item() == 0.0


@needs_triton
def test_tcl_triton_backend_matches_reference():
    features = _features(3, 13, 20, seed=9, dtype=torch.float32)
    labels = torch.randint(0, 4, (13,), generator=torch.Generator().manual_seed(9))
    loss = tcl_loss(features.to(TRITON_DEVICE), labels.to(TRITON_DEVICE), backend="triton")
    expected = tcl_loss(features.double(), labels, backend="reference")
    loss = loss.cpu()
    torch.testing.assert_close(loss.double(), expected, rtol=2e-6, atol=2e-6)


# --------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------
def test_modules_match_functions_and_have_clear_repr():
    features = _features(2, 5, 3, seed=10)
    other = _features(2, 5, 3, seed=11)
    labels = torch.tensor([0, 1, 0, 1, 2])
    z = features.reshape(10, 3)
    z_labels = labels.repeat(2)

    sup = SupConLoss(temperature=0.2, base_temperature=0.07)
    tcl = TCLLoss(temperature=0.3)
    stcl = STCLLoss(temperature=0.5, normalize=False, backend="reference")
    torch.testing.assert_close(sup(z, z_labels), supcon_loss(z, z_labels, 0.2, 0.07))
    torch.testing.assert_close(tcl(features, labels), tcl_loss(features, labels, 0.3))
    torch.testing.assert_close(stcl(features, other, labels),
                               stcl_loss(features, other, labels, 0.5, normalize=False))
    assert repr(sup) == ("SupConLoss(temperature=0.2, base_temperature=0.07, normalize=True, "
                         "backend='auto')")
    assert "temperature=0.3" in repr(tcl) and "base_temperature=None" in repr(tcl)
    assert "normalize=False" in repr(stcl) and "backend='reference'" in repr(stcl)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(temperature=0.0), ValueError, "temperature"),
        (dict(temperature="hot"), TypeError, "temperature"),
        (dict(base_temperature=-1.0), ValueError, "base_temperature"),
        (dict(normalize="yes"), TypeError, "normalize"),
        (dict(backend="gpu"), ValueError, "backend"),
    ],
)
@pytest.mark.parametrize("module", [SupConLoss, TCLLoss, STCLLoss])
def test_module_rejects_bad_hyper_parameters(module, kwargs, error, match):
    with pytest.raises(error, match=match):
        module(**kwargs)


# --------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------
_F = torch.randn(2, 4, 3)
_L = torch.tensor([0, 1, 0, 1])


@pytest.mark.parametrize(
    "features,labels,error,match",
    [
        (_F[0], _L, ValueError, "features must be 3-D"),
        (_F.long(), _L, TypeError, "features must be float"),
        (_F.numpy(), _L, TypeError, "features must be a torch.Tensor"),
        (torch.randn(0, 4, 3), _L, ValueError, "T, B, D >= 1"),
        (_F, _L[:3], ValueError, "labels has length 3"),
        (_F, _L.float(), TypeError, "labels must have an integer dtype"),
    ],
)
def test_tcl_bad_input_raises(features, labels, error, match):
    with pytest.raises(error, match=match):
        tcl_loss(features, labels)


@pytest.mark.parametrize(
    "features_b,labels,error,match",
    [
        (_F.half(), _L, TypeError, "same dtype"),
        (torch.randn(3, 4, 3), _L, ValueError, "same shape"),
        (torch.randn(2, 4, 5), _L, ValueError, "same shape"),
        (_F.to("meta"), _L, ValueError, "features_b is on meta"),
        (_F[0], _L, ValueError, "features_b must be 3-D"),
        (_F, _L[None], ValueError, "labels must be 1-D"),
    ],
)
def test_stcl_bad_input_raises(features_b, labels, error, match):
    with pytest.raises(error, match=match):
        stcl_loss(_F, features_b, labels)


def test_stcl_rejects_half_and_float_views():
    with pytest.raises(TypeError, match="features_a and features_b must have the same dtype"):
        stcl_loss(_F.half(), _F, _L)
