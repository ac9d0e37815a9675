"""bn_lif(..., stats="step") against BN applied step by step, then LIFMultiStep:
one BN module shared by every step (SpikingJelly's single-step loop) and a
ModuleList of T modules (BNTT). Values, every gradient and the running
statistics must be equal bit for bit, in train and eval mode, channels_last,
learnable tau, residual and shortcut, and float16/bfloat16 under autocast."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import tcl_fast
from tcl_fast.nn.bnlif import BNLIF, bn_lif


def _bn(C, seed, momentum=0.1):
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(C, momentum=momentum)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.3, 0.6)
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
    return bn


def _bns(C, T, bntt, seed=0, momentum=0.1):
    """One shared module, or T distinct ones (BNTT, different parameters per step)."""
    if bntt:
        return nn.ModuleList(_bn(C, seed + 10 * t, momentum) for t in range(T))
    return _bn(C, seed, momentum)


def _lif(learnable_tau=False, backend="auto"):
    return tcl_fast.LIFMultiStep(learnable_tau=learnable_tau, tau=2.5 if learnable_tau else 2.0, backend=backend)


def _per_step(bn, y):
    """The unfused reference: BN_t(y[t]) for each step, in step order."""
    mods = list(bn) if isinstance(bn, nn.ModuleList) else [bn] * y.shape[0]
    return torch.stack([m(y[t]) for t, m in enumerate(mods)])


def _run(fused, bn, lif, y, residual=None, w=None, autocast=None, shortcut=None):
    y = y.detach().clone().requires_grad_()
    r = None if residual is None else residual.detach().clone().requires_grad_()
    sc = None if shortcut is None else (shortcut[0].detach().clone().requires_grad_(), shortcut[1])
    ctx = torch.autocast("cpu", dtype=autocast) if autocast else torch.autocast("cpu", enabled=False)
    with ctx:
        if fused:
            s = bn_lif(y, bn, lif, r, shortcut=sc, stats="step")
        else:
            z = _per_step(bn, y)
            if sc is not None:
                z = z + _per_step(sc[1], sc[0])
            s = lif(z if r is None else z + r)
    (s.float() * w).sum().backward()
    mods = [bn] + ([] if sc is None else [sc[1]])
    params = [p.grad for m in mods + [lif] for p in m.parameters()]
    buffers = [b.clone() for m in mods for b in m.buffers()]
    grads = [y.grad, None if r is None else r.grad, None if sc is None else sc[0].grad]
    return s.detach(), grads, params, buffers


def _assert_same(got, ref, exact=True):
    for name, a, b in zip(("spikes", "input grads", "param grads", "buffers"), got, ref):
        for u, v in (zip(a, b, strict=True) if isinstance(a, list) else [(a, b)]):
            if u is None or v is None:
                assert u is None and v is None, name
            elif exact:
                assert u.dtype == v.dtype and torch.equal(u, v), name
            else:
                torch.testing.assert_close(u, v, msg=name)


def _check(bntt, T=3, B=4, C=6, H=5, W=7, train=True, channels_last=False, residual=False, learnable_tau=False,
           dtype=torch.float32, autocast=None, backend="auto", shortcut=False, momentum=0.1, repeats=1):
    bn, lif = _bns(C, T, bntt, momentum=momentum), _lif(learnable_tau, backend)
    bn.train(train)
    if dtype == torch.float64:
        bn.double()
    torch.manual_seed(1)
    y = torch.randn(T, B, C, H, W, dtype=dtype) * 1.5 + 0.3
    if channels_last:
        y = y.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(T, B, C, H, W)
    r = (torch.rand(T, B, C, H, W) < 0.3).to(dtype) if residual else None
    sc = None
    if shortcut:
        sc = (torch.randn(T, B, C, H, W, dtype=dtype), _bns(C, T, bntt, seed=5, momentum=momentum).train(train))
        if dtype == torch.float64:
            sc[1].double()
    w = torch.randn(T, B, C, H, W)
    ref_mods = copy.deepcopy((bn, lif, sc))
    for _ in range(repeats):  # repeats: running statistics and num_batches_tracked carry over
        ref = _run(False, ref_mods[0], ref_mods[1], y, r, w, autocast, ref_mods[2])
        got = _run(True, bn, lif, y, r, w, autocast, sc)
        assert 0 < ref[0].float().mean() < 1
        _assert_same(got, ref)
        for mods in (ref_mods, (bn, lif, sc)):  # fresh .grad for the next round
            for p in (p for m in mods if isinstance(m, nn.Module) for p in m.parameters()):
                p.grad = None
            if mods[2] is not None:
                for p in mods[2][1].parameters():
                    p.grad = None


@pytest.mark.parametrize("bntt", [False, True], ids=["shared", "bntt"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_matches_per_step_bn_then_lif_exactly(bntt, train):
    _check(bntt, train=train)


@pytest.mark.parametrize("bntt", [False, True], ids=["shared", "bntt"])
def test_channels_last(bntt):
    _check(bntt, channels_last=True)


@pytest.mark.parametrize("bntt", [False, True], ids=["shared", "bntt"])
def test_residual_and_learnable_tau(bntt):
    _check(bntt, residual=True, learnable_tau=True)


@pytest.mark.parametrize("bntt", [False, True], ids=["shared", "bntt"])
@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_projection_shortcut(bntt, train):
    _check(bntt, shortcut=True, residual=True, train=train)


def test_float64_and_reference_backend():
    _check(True, dtype=torch.float64, backend="torch")
    _check(False, dtype=torch.float64, backend="torch")


@pytest.mark.parametrize("bntt", [False, True], ids=["shared", "bntt"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast(bntt, dtype):
    _check(bntt, autocast=dtype)


def test_low_precision_input():
    _check(True, dtype=torch.bfloat16)


@pytest.mark.parametrize("bntt", [False, True], ids=["shared", "bntt"])
def test_momentum_none_counts_every_step(bntt):
    # A shared module sees T batches per call: the cumulative average divides by 1, 2, ..., 2T over two calls.
    _check(bntt, momentum=None, repeats=2, T=4)


@pytest.mark.parametrize("bntt", [False, True], ids=["shared", "bntt"])
def test_running_stats_updated_once_per_step(bntt):
    T = 4
    bn, lif = _bns(6, T, bntt), _lif()
    y = torch.randn(T, 3, 6, 4, 4, requires_grad=True)
    s = bn_lif(y, bn, lif, stats="step")
    after_forward = [b.clone() for b in bn.buffers()]
    s.sum().backward()  # the recompute must not move them again
    for a, b in zip(after_forward, bn.buffers()):
        assert torch.equal(a, b)
    counts = [m.num_batches_tracked.item() for m in (bn if bntt else [bn])]
    assert counts == ([1] * T if bntt else [T])


def test_eval_backward_uses_the_forwards_running_stats():
    for bntt in (False, True):
        bn, lif = _bns(6, 3, bntt), _lif()
        bn.eval()
        y = torch.randn(3, 4, 6, 5, 5) + 0.5
        w = torch.randn_like(y)
        ref = _run(False, copy.deepcopy(bn), copy.deepcopy(lif), y, w=w)
        a = y.clone().requires_grad_()
        s = bn_lif(a, bn, lif, stats="step")
        with torch.no_grad():
            for b in bn.buffers():
                if b.is_floating_point():
                    b.add_(1.0)  # changed between forward and backward
        (s * w).sum().backward()
        assert torch.equal(a.grad, ref[1][0])


@pytest.mark.parametrize("bntt", [False, True], ids=["shared", "bntt"])
def test_keeps_only_the_bn_input(bntt):
    T = 3
    bn, lif = _bns(6, T, bntt), _lif()
    y = torch.randn(T, 4, 6, 5, 7, requires_grad=True)
    with tcl_fast.SavedTensorCounter(exclude=list(bn.parameters())) as fused:
        bn_lif(y, bn, lif, stats="step")
    with tcl_fast.SavedTensorCounter(exclude=list(bn.parameters())) as plain:
        lif(_per_step(bn, y))
    n = y.numel() * 4
    # BNTT: the [T, C] stacks of the T weights and biases (parameter-sized) are saved too.
    assert fused.nbytes == n + (2 * T * 6 * 4 if bntt else 0)
    assert plain.nbytes >= 2 * n


def test_no_grad_and_inference_run_the_modules():
    bn, lif = _bns(6, 3, True), _lif()
    y = torch.randn(3, 4, 6, 5, 5)
    ref_bn = copy.deepcopy(bn)
    with torch.no_grad():
        got = bn_lif(y, bn, lif, stats="step")
        ref = lif(_per_step(ref_bn, y))
    assert torch.equal(got, ref)
    for a, b in zip(bn.buffers(), ref_bn.buffers()):
        assert torch.equal(a, b)


def test_bad_inputs():
    lif = _lif()
    y = torch.randn(3, 2, 6, 4, 4)
    with pytest.raises(ValueError, match="ModuleList of 2 BN modules but y has T = 3"):
        bn_lif(y, _bns(6, 2, True), lif, stats="step")
    with pytest.raises(ValueError, match="needs stats='step'"):
        bn_lif(y, _bns(6, 3, True), lif)
    with pytest.raises(ValueError, match="stats must be"):
        bn_lif(y, _bn(6, 0), lif, stats="time")
    mixed = _bns(6, 3, True)
    mixed[1].eval()
    with pytest.raises(ValueError, match="differ in training"):
        bn_lif(y, mixed, lif, stats="step")
    with pytest.raises(ValueError, match="must be a BatchNorm module"):
        bn_lif(y, nn.ModuleList([_bn(6, 0), nn.Identity(), _bn(6, 1)]), lif, stats="step")
    shared = _bn(6, 0)
    with pytest.raises(ValueError, match="same module more than once"):
        bn_lif(y, nn.ModuleList([shared, shared, _bn(6, 1)]), lif, stats="step")
    with pytest.raises(ValueError, match="shortcut's bn"):
        bn_lif(y, _bn(6, 0), lif, shortcut=(y, _bns(6, 2, True)), stats="step")
    with pytest.raises(ValueError, match="time_steps"):
        BNLIF(6, time_steps=3)


def test_module_builds_bntt_and_wraps_existing_modules():
    m = BNLIF(6, stats="step", time_steps=3)
    assert isinstance(m.bn, nn.ModuleList) and len(m.bn) == 3
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in m.state_dict() if k.startswith("bn.")} == \
        {"bn.0", "bn.1", "bn.2"}
    bn, lif = _bns(6, 3, True), _lif()
    w = BNLIF.from_modules(bn, lif, stats="step")
    y = torch.randn(3, 4, 6, 4, 4)
    ref_bn = copy.deepcopy(bn)
    torch.testing.assert_close(w(y), lif(_per_step(ref_bn, y)))
    shared = BNLIF(6, stats="step")
    assert isinstance(shared.bn, nn.BatchNorm2d)
    torch.testing.assert_close(shared(y), lif(_per_step(copy.deepcopy(shared.bn), y)))
