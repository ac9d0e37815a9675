"""bn_lif / BNLIF against BatchNorm followed by LIFMultiStep: values, every
gradient and running statistics, in train and eval mode, channels_last,
learnable tau, a residual, and float16/bfloat16 under autocast. impl="recompute"
is bit-identical; impl="kernel" (BN inside the LIF kernel) equal up to rounding."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import tcl_fast
from tcl_fast.nn.bnlif import BNLIF, bn_lif


def _pair(C=6, learnable_tau=False, backend="auto", seed=0):
    torch.manual_seed(seed)
    bn = nn.BatchNorm2d(C)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.3, 0.6)
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
    lif = tcl_fast.LIFMultiStep(learnable_tau=learnable_tau, tau=2.5 if learnable_tau else 2.0, backend=backend)
    return bn, lif


def _run(fused, bn, lif, y, residual=None, w=None, autocast=None, impl="recompute"):
    y = y.detach().clone().requires_grad_()
    r = None if residual is None else residual.detach().clone().requires_grad_()
    ctx = torch.autocast("cpu", dtype=autocast) if autocast else torch.autocast("cpu", enabled=False)
    with ctx:
        if fused:
            s = bn_lif(y, bn, lif, r, impl=impl)
        else:
            T = y.shape[0]
            z = bn(y.flatten(0, 1))
            z = z.reshape(T, -1, *z.shape[1:])
            s = lif(z if r is None else z + r)
    (s.float() * w).sum().backward()
    params = [p.grad for p in list(bn.parameters()) + list(lif.parameters())]
    return s.detach(), y.grad, None if r is None else r.grad, params, [b.clone() for b in bn.buffers()]


def _check(T=3, B=4, C=6, H=5, W=7, train=True, channels_last=False, residual=False, learnable_tau=False,
           dtype=torch.float32, autocast=None, exact=True, backend="auto", impl="recompute", tol=None):
    bn, lif = _pair(C, learnable_tau, backend)
    bn.train(train)
    if dtype == torch.float64:
        bn.double()
    torch.manual_seed(1)
    y = torch.randn(T, B, C, H, W, dtype=dtype) * 1.5 + 0.3
    if channels_last:
        y = y.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(T, B, C, H, W)
    r = (torch.rand(T, B, C, H, W) < 0.3).to(dtype) if residual else None
    w = torch.randn(T, B, C, H, W)
    ref = _run(False, copy.deepcopy(bn), copy.deepcopy(lif), y, r, w, autocast)
    got = _run(True, bn, lif, y, r, w, autocast, impl)
    assert 0 < ref[0].float().mean() < 1
    for name, a, b in zip(("spikes", "grad_y", "grad_residual", "param grads", "buffers"), got, ref):
        if a is None or b is None:
            assert a is None and b is None, name
            continue
        for u, v in (zip(a, b) if isinstance(a, list) else [(a, b)]):
            if u is None or v is None:
                assert u is None and v is None, name
            elif exact:
                assert u.dtype == v.dtype and torch.equal(u, v), name
            else:
                torch.testing.assert_close(u, v, msg=name, **(tol or {}))


@pytest.mark.parametrize("train", [True, False])
def test_matches_bn_then_lif_exactly(train):
    _check(train=train)


# ------------------------------------------------ BN inside the LIF kernel ----
F32 = dict(rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("learnable_tau", [False, True])
def test_kernel_matches_bn_then_lif(train, learnable_tau):
    _check(train=train, learnable_tau=learnable_tau, impl="kernel", exact=False, tol=F32)


def test_kernel_residual_and_learnable_tau():
    # the residual is charged inside the kernel: x * scale + shift + residual
    _check(residual=True, learnable_tau=True, impl="kernel", exact=False, tol=F32)


def test_kernel_float64():
    _check(dtype=torch.float64, impl="kernel", exact=False, tol=dict(rtol=1e-12, atol=1e-12))


def test_kernel_channels_last_and_odd_sizes():
    _check(T=5, B=3, C=7, H=3, W=9, channels_last=True, impl="kernel", exact=False, tol=F32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kernel_autocast(dtype):
    _check(autocast=dtype, impl="kernel", exact=False, tol=dict(rtol=2e-2, atol=2e-2))


def test_kernel_per_channel_tau():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(5)
    lif = tcl_fast.LIFMultiStep(learnable_tau=True, channels=5)
    with torch.no_grad():
        lif.w.copy_(torch.linspace(-1, 1, 5))
    y, w = torch.randn(4, 3, 5, 4, 4) + 0.3, torch.randn(4, 3, 5, 4, 4)
    ref = _run(False, copy.deepcopy(bn), copy.deepcopy(lif), y, None, w)
    got = _run(True, bn, lif, y, None, w, impl="kernel")
    assert torch.equal(got[0], ref[0])
    for a, b in zip([got[1], *got[3], *got[4]], [ref[1], *ref[3], *ref[4]]):
        torch.testing.assert_close(a, b, **F32)


def test_kernel_bn1d_affine_false_and_momentum_none():
    torch.manual_seed(0)
    bn, lif = nn.BatchNorm1d(5, momentum=None, affine=False), tcl_fast.LIFMultiStep()
    y, w = torch.randn(4, 3, 5) + 0.8, torch.randn(4, 3, 5)
    ref_bn = copy.deepcopy(bn)
    for _ in range(2):
        ref = _run(False, ref_bn, copy.deepcopy(lif), y, None, w)
        got = _run(True, bn, lif, y, None, w, impl="kernel")
        torch.testing.assert_close(got[1], ref[1], **F32)
        for a, b in zip(got[4], ref[4]):
            torch.testing.assert_close(a, b, **F32)


def test_kernel_refuses_what_it_cannot_fold():
    bn, lif = _pair()
    y = torch.randn(3, 2, 6, 4, 4, requires_grad=True)
    with pytest.raises(ValueError, match="this one has a shortcut branch"):
        bn_lif(y, bn, lif, shortcut=(y, copy.deepcopy(bn)), impl="kernel")
    with pytest.raises(ValueError, match="LIF backend 'torch'"):
        bn_lif(y, bn, tcl_fast.LIFMultiStep(backend="torch"), impl="kernel")
    with pytest.raises(ValueError, match="impl must be one of"):
        bn_lif(y, bn, lif, impl="fused")


def test_kernel_single_batch_element_is_refused_like_batchnorm():
    bn, lif = _pair(C=3)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn_lif(torch.randn(1, 1, 3, requires_grad=True), nn.BatchNorm1d(3), lif, impl="kernel")


def test_channels_last():
    _check(channels_last=True)


def test_residual_and_learnable_tau():
    _check(residual=True, learnable_tau=True)


def test_float64_and_reference_backend():
    _check(dtype=torch.float64, backend="torch")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast(dtype):
    _check(autocast=dtype)


def test_low_precision_input():
    _check(dtype=torch.bfloat16)


def test_bn1d_features_and_momentum_none():
    torch.manual_seed(0)
    bn, lif = nn.BatchNorm1d(5, momentum=None), tcl_fast.LIFMultiStep()
    y = torch.randn(4, 3, 5) + 0.8
    w = torch.randn(4, 3, 5)
    for _ in range(2):  # cumulative average uses num_batches_tracked
        ref = _run(False, copy.deepcopy(bn), copy.deepcopy(lif), y, None, w)
        got = _run(True, bn, lif, y, None, w, impl="recompute")
        assert torch.equal(got[1], ref[1])
        for a, b in zip(got[4], ref[4]):
            assert torch.equal(a, b)


@pytest.mark.parametrize("impl", ["recompute", "kernel"])
def test_keeps_only_the_bn_input(impl):
    bn, lif = _pair()
    y = torch.randn(3, 4, 6, 5, 7, requires_grad=True)
    with tcl_fast.SavedTensorCounter(exclude=list(bn.parameters())) as fused:
        bn_lif(y, bn, lif, impl=impl)
    with tcl_fast.SavedTensorCounter(exclude=list(bn.parameters())) as plain:
        z = bn(y.flatten(0, 1)).view_as(y)
        lif(z)
    n = y.numel() * 4
    # the kernel path also keeps the per-channel mean and 1/std (C floats each) and the decay
    assert n <= fused.nbytes <= n + (0 if impl == "recompute" else 2 * 6 * 4 + 4)
    assert plain.nbytes >= 2 * n


def test_module_wraps_existing_modules():
    bn, lif = _pair()
    m = BNLIF.from_modules(bn, lif)
    assert set(m.state_dict()) == {"bn." + k for k in bn.state_dict()} | {"lif." + k for k in lif.state_dict()}
    y = torch.randn(2, 3, 6, 4, 4)
    torch.testing.assert_close(m(y), lif(bn(y.flatten(0, 1)).view_as(y)))


def test_projection_shortcut_branch():
    bn, lif = _pair()
    bn2, _ = _pair(seed=3)
    torch.manual_seed(2)
    y, y2 = torch.randn(3, 4, 6, 5, 5) + 0.5, torch.randn(3, 4, 6, 5, 5)
    w = torch.randn(3, 4, 6, 5, 5)
    outs = []
    for fused in (False, True):
        b1, b2, l1 = copy.deepcopy(bn), copy.deepcopy(bn2), copy.deepcopy(lif)
        a, c = y.clone().requires_grad_(), y2.clone().requires_grad_()
        with tcl_fast.SavedTensorCounter(exclude=list(b1.parameters()) + list(b2.parameters())) as cnt:
            if fused:
                s = bn_lif(a, b1, l1, shortcut=(c, b2))
            else:
                s = l1(b1(a.flatten(0, 1)).view_as(a) + b2(c.flatten(0, 1)).view_as(c))
        (s * w).sum().backward()
        outs.append((cnt.nbytes, [s, a.grad, c.grad, *[p.grad for p in (*b1.parameters(), *b2.parameters())],
                                  *b1.buffers(), *b2.buffers()]))
    for u, v in zip(outs[0][1], outs[1][1]):
        assert torch.equal(u, v)
    assert outs[1][0] == 2 * y.numel() * 4 < outs[0][0]
