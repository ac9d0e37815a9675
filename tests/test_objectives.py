"""Objectives on tiny random tensors: finite, gradients where they belong, λ=0 reductions."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tcl_fast.models import SNNOutput, build_model
from tcl_fast.training.objectives import LOSSES, Objective, build_objective, mean_ce, per_step_ce

T, B, K = 3, 4, 5


def _model():
    torch.manual_seed(0)
    return build_model("small", K, 1, proj_dim=16, lif_backend="torch", width=8)


def _run(model, objective, x, y):
    if objective.two_views:
        return objective((model(x, T=T), model(x.flip(-1), T=T)), y)
    return objective(model(x, T=T), y)


@pytest.mark.parametrize("name", LOSSES)
def test_objective_finite_and_gradients_reach_the_right_parameters(name):
    model = _model()
    x, y = torch.randn(B, 1, 8, 8), torch.tensor([0, 1, 1, 2])
    loss, parts = _run(model, build_objective(name), x, y)
    assert loss.dim() == 0 and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert all(torch.isfinite(v) and not v.requires_grad for v in parts.values())
    loss.backward()
    for pname, p in model.named_parameters():
        uses_head = name in ("tcl", "stcl")
        if pname.startswith("head.") and not uses_head:
            assert p.grad is None, f"{name}: projection head {pname} should get no gradient"
        else:
            assert p.grad is not None, f"{name}: {pname} got no gradient"
            assert torch.isfinite(p.grad).all()
            assert p.grad.abs().sum() > 0, f"{name}: {pname} has an all-zero gradient"


@pytest.mark.parametrize("ce_mode", ["mean", "tet"])
def test_tcl_with_lambda_zero_equals_its_ce(ce_mode):
    model = _model()
    x, y = torch.randn(B, 1, 8, 8), torch.tensor([0, 1, 1, 2])
    out = model(x, T=T)
    tcl, parts = build_objective("tcl", lam=0.0, ce_mode=ce_mode)(out, y)
    ref_name = "ce" if ce_mode == "mean" else "tet"
    ref, _ = build_objective(ref_name)(out, y)
    torch.testing.assert_close(tcl, ref, rtol=0, atol=0)
    assert parts["tcl"] > 0  # the contrastive part is still computed and logged


def test_ce_forms_match_their_definitions():
    logits = torch.randn(T, B, K)
    y = torch.tensor([0, 4, 2, 2])
    torch.testing.assert_close(mean_ce(logits, y), F.cross_entropy(logits.mean(0), y))
    per_step = torch.stack([F.cross_entropy(logits[t], y) for t in range(T)]).mean()
    torch.testing.assert_close(per_step_ce(logits, y), per_step)
    feats = torch.randn(T, B, 8)
    loss, parts = Objective("tet", lambda_mse=0.5, phi=2.0)(SNNOutput(logits, feats), y)
    torch.testing.assert_close(loss, per_step + 0.5 * ((logits - 2.0) ** 2).mean())
    assert set(parts) == {"ce", "mse"}


def test_tcl_adds_lambda_times_contrastive_term():
    from tcl_fast.losses import stcl_loss, tcl_loss

    logits, feats = torch.randn(T, B, K), torch.randn(T, B, 8)
    y = torch.tensor([0, 4, 2, 2])
    loss, _ = Objective("tcl", lam=0.7, temperature=0.2, ce_mode="mean")(SNNOutput(logits, feats), y)
    torch.testing.assert_close(loss, mean_ce(logits, y) + 0.7 * tcl_loss(feats, y, temperature=0.2))
    a, b = SNNOutput(logits, feats), SNNOutput(logits.flip(0), feats.flip(0))
    loss, parts = Objective("stcl", lam=2.0, ce_mode="mean")((a, b), y)
    ce = 0.5 * (mean_ce(a.logits, y) + mean_ce(b.logits, y))
    torch.testing.assert_close(loss, ce + 2.0 * stcl_loss(a.features, b.features, y))  # one default temperature
    assert set(parts) == {"ce", "stcl"}


def test_batch_of_one_still_trains_with_tcl():
    model = _model()
    loss, parts = build_objective("tcl")(model(torch.randn(1, 1, 8, 8), T=T), torch.tensor([3]))
    assert torch.isfinite(loss) and parts["tcl"] > 0  # positives: the same sample at other steps
    loss.backward()
    # T = B = 1: no positives at all, the contrastive term is 0 and nothing breaks.
    loss1, parts1 = build_objective("tcl")(model(torch.randn(1, 1, 8, 8), T=1), torch.tensor([3]))
    assert torch.isfinite(loss1) and parts1["tcl"] == 0


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "focal"}, "unknown loss"), ({"ce_mode": "sum"}, "ce_mode"), ({"lam": -1.0}, "lambda"),
    ({"temperature": 0.0}, "temperature"), ({"lam": float("nan")}, "lambda"),
])
def test_bad_objective_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_objective(kwargs.pop("name", "tcl"), **kwargs)


def test_wrong_number_of_views_is_a_clear_error():
    out = SNNOutput(torch.randn(T, B, K), torch.randn(T, B, 8))
    y = torch.zeros(B, dtype=torch.long)
    with pytest.raises(TypeError, match="pair"):
        Objective("stcl")(out, y)
    with pytest.raises(TypeError, match="one SNNOutput"):
        Objective("tcl")((out, out), y)
