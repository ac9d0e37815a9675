"""BN fused into LIF in tcl_fast.models: same state dict, bit-identical outputs,
gradients and running statistics (impl="recompute"; the in-kernel one up to rounding), less memory held for backward; with
pack_spikes on top, ResNet-19 holds at most 0.4x of the plain model."""
from __future__ import annotations

import copy

import pytest
import torch

import tcl_fast
from tcl_fast.models import build_model, set_bn_fusion


def _step(model, x, T, fuse, pack, impl="recompute"):
    model = copy.deepcopy(model)
    set_bn_fusion(model, fuse, impl)
    with tcl_fast.SavedTensorCounter(exclude=list(model.parameters())) as c, tcl_fast.pack_spikes(pack):
        out = model(x, T=T)
    (out.logits.sum() + out.features.pow(2).sum()).backward()
    return (c.nbytes, out.logits.detach(), [p.grad for p in model.parameters()],
            [b.clone() for b in model.buffers()])


@pytest.mark.parametrize("name,shape,T", [("resnet19", (2, 3, 16, 16), 2), ("vggsnn", (2, 2, 2, 16, 16), None),
                                          ("small", (3, 1, 8, 8), 3), ("resnet18", (2, 3, 16, 16), 2)])
def test_fused_model_is_bit_identical(name, shape, T):
    torch.manual_seed(0)
    model = build_model(name, 10, shape[-3], **({"final_hw": 1} if name == "vggsnn" else {}))
    x = torch.randn(shape)
    plain = _step(model, x, T, False, False)
    fused = _step(model, x, T, True, False)
    both = _step(model, x, T, True, True)
    for got in (fused, both):
        assert torch.equal(got[1], plain[1])
        for a, b in zip(got[2] + got[3], plain[2] + plain[3]):
            assert torch.equal(a, b)
    assert fused[0] < plain[0] and both[0] < fused[0]
    if name == "resnet19":
        assert both[0] <= 0.4 * plain[0]


@pytest.mark.parametrize("name,shape,T", [("resnet19", (2, 3, 16, 16), 2), ("vggsnn", (2, 2, 2, 16, 16), None)])
def test_fused_in_kernel_matches_and_holds_less(name, shape, T):
    # impl="auto": BN inside the LIF kernel for plain blocks, recomputed for residual ones.
    torch.manual_seed(0)
    model = build_model(name, 10, shape[-3], **({"final_hw": 1} if name == "vggsnn" else {}))
    x = torch.randn(shape)
    plain = _step(model, x, T, False, False)
    kernel = _step(model, x, T, True, True, impl="auto")
    recompute = _step(model, x, T, True, True)
    torch.testing.assert_close(kernel[1], plain[1], rtol=1e-4, atol=1e-4)
    for a, b in zip(kernel[2] + kernel[3], plain[2] + plain[3]):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    # the kernel path holds what recompute holds, plus C-sized mean and 1/std per block
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert recompute[0] <= kernel[0] <= recompute[0] + n_bn * 2 * 512 * 4


def test_fusion_keeps_the_state_dict_and_switches_off():
    a = build_model("resnet19", 10, 3)
    b = build_model("resnet19", 10, 3, fuse_bn=True)
    assert list(a.state_dict()) == list(b.state_dict())
    assert all(m.fuse_bn for m in b.modules() if hasattr(type(m), "fuse_bn"))
    set_bn_fusion(b, False)
    assert not any(m.fuse_bn for m in b.modules() if hasattr(type(m), "fuse_bn"))
