"""BN fused into LIF in tcl_fast.models: same state dict, bit-identical outputs,
gradients and running statistics, less memory held for backward; with
pack_spikes on top, ResNet-19 holds at most 0.4x of the plain model."""
from __future__ import annotations

import copy

import pytest
import torch

import tcl_fast
from tcl_fast.models import build_model, set_bn_fusion


def _step(model, x, T, fuse, pack):
    model = copy.deepcopy(model)
    set_bn_fusion(model, fuse)
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


def test_fusion_keeps_the_state_dict_and_switches_off():
    a = build_model("resnet19", 10, 3)
    b = build_model("resnet19", 10, 3, fuse_bn=True)
    assert list(a.state_dict()) == list(b.state_dict())
    assert all(m.fuse_bn for m in b.modules() if hasattr(type(m), "fuse_bn"))
    set_bn_fusion(b, False)
    assert not any(m.fuse_bn for m in b.modules() if hasattr(type(m), "fuse_bn"))
