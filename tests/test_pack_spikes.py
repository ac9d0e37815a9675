"""pack_spikes(): spikes saved for backward as bits, gradients bit-identical.

The bit kernels (C++, Triton under the interpreter) are compared with the
pure-PyTorch reference in tests/ops/test_spike_pack.py; here the context
manager is checked on whole networks and on the cases where it must fall back.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import tcl_fast
from tcl_fast.models import build_model
from tcl_fast.models.layers import SeqToANN


def _grads(model, x, pack, T=None, counter=True, step=None):
    model.zero_grad(set_to_none=True)
    with tcl_fast.SavedTensorCounter(exclude=list(model.parameters())) as c, tcl_fast.pack_spikes(pack):
        out = model(x) if T is None else model(x, T=T)
        if step is not None:
            out = step(out)
    if isinstance(out, tuple):
        loss = out[0].sum() + out[1].pow(2).sum()
    else:
        loss = (out * torch.linspace(-1, 1, out.shape[-1])).sum()
    loss.backward()
    return c.nbytes, [p.grad.clone() for p in model.parameters()]


def _assert_identical(ga, gb):
    assert len(ga) == len(gb)
    for a, b in zip(ga, gb):
        assert torch.equal(a, b)


class ConvBNLIF(nn.Module):
    """conv-BN-LIF twice, then pool and a linear layer: every spike tensor is saved by a conv or linear."""

    def __init__(self, inplace_after_first=None):
        super().__init__()
        self.c1 = SeqToANN(nn.Conv2d(2, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.l1 = tcl_fast.LIFMultiStep()
        self.c2 = SeqToANN(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.l2 = tcl_fast.LIFMultiStep()
        self.fc = SeqToANN(nn.Flatten(), nn.Linear(8 * 5 * 5, 7))
        self.inplace = inplace_after_first

    def forward(self, x):
        s = self.l1(self.c1(x))
        if self.inplace is not None:
            self.inplace(s)
        return self.fc(self.l2(self.c2(s)))


def _net(**kw):
    torch.manual_seed(0)
    return ConvBNLIF(**kw)


def _x():
    torch.manual_seed(1)
    return torch.randn(3, 4, 2, 5, 5) * 2  # T=3, B=4: 8*25*12 = 2400 spikes per layer


def test_small_net_gradients_bit_identical_and_less_memory():
    net, x = _net(), _x()
    plain, ga = _grads(net, x, False)
    packed, gb = _grads(net, x, True)
    _assert_identical(ga, gb)
    # Two spike tensors of 2400 float32 values leave (2 * 9600 bytes) and come back as 2 * 300.
    assert plain - packed == 2 * (2400 * 4 - 2400 // 8)


def test_resnet19_tiny_bit_identical_under_0_7x():
    torch.manual_seed(0)
    model = build_model("resnet19", 10, 3)
    x = torch.randn(2, 3, 16, 16)
    plain, ga = _grads(model, x, False, T=2)
    packed, gb = _grads(model, x, True, T=2)
    _assert_identical(ga, gb)
    assert packed <= 0.7 * plain


def test_spikes_changed_in_place_before_the_save_are_saved_normally():
    # add_(0.5) leaves values that 1 bit cannot hold: packing them would change conv2's weight gradient.
    net, x = _net(inplace_after_first=lambda s: s.add_(0.5)), _x()
    plain, ga = _grads(net, x, False)
    packed, gb = _grads(net, x, True)
    _assert_identical(ga, gb)
    assert plain - packed == 2400 * 4 - 2400 // 8  # only the second LIF's spikes were packed


def test_spikes_changed_after_the_save_raise_like_autograd():
    net, x = _net(), _x()
    for pack in (False, True):
        with tcl_fast.pack_spikes(pack):
            s = net.l1(net.c1(x))
            y = net.c2(s)  # conv saves s
        with torch.no_grad():
            s.mul_(2)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()


def test_other_tensor_changed_after_the_save_still_raises():
    a = torch.randn(5, requires_grad=True)
    with tcl_fast.pack_spikes():
        b = a.exp()
        c = b.sin()  # saves b
    with torch.no_grad():
        b.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        c.sum().backward()


def test_no_marking_without_grad_or_outside_the_context():
    from tcl_fast.ops.pack import _st
    lif = tcl_fast.LIFMultiStep()
    x = torch.randn(2, 10)
    with tcl_fast.pack_spikes():
        lif(x)  # no grad wanted
        assert not _st().records
        s = lif(x.requires_grad_())
        assert len(_st().records) == 1
        del s
        assert not _st().records  # forgotten with the tensor
    lif(x)
    assert not _st().records


def test_backward_outside_the_context_and_nested_contexts():
    net, x = _net(), _x()
    _, ga = _grads(net, x, False)
    net.zero_grad(set_to_none=True)
    with tcl_fast.pack_spikes(), tcl_fast.pack_spikes():
        out = net(x)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    _assert_identical(ga, [p.grad for p in net.parameters()])


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_bit_identical(dtype):
    net, x = _net().to(dtype), _x().to(dtype)
    plain, ga = _grads(net, x, False)
    packed, gb = _grads(net, x, True)
    _assert_identical(ga, gb)
    assert packed < plain


def test_under_torch_compile_falls_back_and_stays_exact():
    net, x = _net(), _x()
    _, ga = _grads(net, x, False)
    compiled = torch.compile(net, backend="aot_eager", fullgraph=False)
    _, gb = _grads(compiled, x, True)
    _assert_identical(ga, gb)


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_spikingjelly_style_neurons_and_functional_calls_are_packed(step_mode):
    # lif_multistep marks its spikes itself, so every neuron built on it (the
    # SpikingJelly-compatible nodes a converted model holds, in either step
    # mode) and direct functional calls pack too.
    torch.manual_seed(0)
    T, B = 4, 2
    conv1, conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
    node1 = tcl_fast.LIFNode(tau=2.0, step_mode=step_mode)
    model = nn.ModuleList([conv1, conv2, node1])

    def forward(x):
        node1.reset()
        if step_mode == "m":
            s = node1(conv1(x.flatten(0, 1)).unflatten(0, (T, B)))
            s = tcl_fast.lif_multistep(conv2(s.flatten(0, 1)).unflatten(0, (T, B)))
        else:  # conv2 saves each step's spikes as node1 emitted them
            s = tcl_fast.lif_multistep(torch.stack([conv2(node1(conv1(x[t]))) for t in range(T)]))
        return s.mean((0, 3, 4))

    x = torch.randn(T, B, 3, 6, 6) * 2

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            return forward(x)

    net = Wrapped()
    plain_bytes, plain = _grads(net, x, pack=False)
    packed_bytes, packed = _grads(net, x, pack=True)
    _assert_identical(plain, packed)
    # conv2 saves node1's T*B*8*6*6 spikes: float32 -> 1 bit
    assert packed_bytes < plain_bytes - 0.9 * (T * B * 8 * 36 * 4)
