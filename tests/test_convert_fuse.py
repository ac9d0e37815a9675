"""fuse_bn_lif on converted SpikingJelly zoo models: against the same converted
model unfused, outputs, parameter gradients, running statistics and the
neurons' membranes are bit-identical (train and eval), the original state dict
loads strictly, the expected number of blocks is fused and less is held for
backward. Then what it refuses or leaves alone. Tiny shapes: CPU CI."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import tcl_fast
from tcl_fast.nn import bn_lif

from optional_deps import require  # noqa: E402

sj_neuron = require("spikingjelly.activation_based.neuron")
from spikingjelly.activation_based import functional, layer, surrogate  # noqa: E402
import sj_zoo  # noqa: E402  (tests/sj_zoo.py: the zoo models, small)

T, B = 2, 2


_resnet18, _sew_resnet18 = sj_zoo.resnet18, sj_zoo.sew_resnet18
_vgg11_bn, _plif_cifar10 = sj_zoo.vgg11_bn, sj_zoo.plif_cifar10


def _if_net():  # SeqToANNContainer(BatchNorm2d), IF neurons, hard and soft reset
    net = nn.Sequential(
        layer.Conv2d(3, 8, 3, padding=1), layer.SeqToANNContainer(nn.BatchNorm2d(8)),
        sj_neuron.IFNode(surrogate_function=surrogate.ATan()),
        layer.Conv2d(8, 8, 3, padding=1), layer.BatchNorm2d(8),
        sj_neuron.IFNode(v_reset=None, surrogate_function=surrogate.Sigmoid()),
        layer.MaxPool2d(2), layer.Flatten(), layer.Linear(8 * 4 * 4, 10),
    )
    return net, 8


# name -> (builder, fused blocks: every BN -> neuron pair of the model)
MODELS = {
    "spiking_resnet18": (_resnet18, 17),  # stem + 2 per block; 5 identity, 3 projection shortcuts
    "sew_resnet18": (_sew_resnet18, 20),  # stem + 2 per block + 3 downsample BN -> neuron
    "spiking_vgg11_bn": (_vgg11_bn, 8),
    "plif_cifar10net": (_plif_cifar10, 6),
    "if_net": (_if_net, 2),
}
_BUILT: dict = {}


def _converted(name):
    """(SpikingJelly original, converted, input size); multi-step."""
    if name not in _BUILT:
        torch.manual_seed(0)
        net, size = MODELS[name][0]()
        functional.set_step_mode(net, "m")
        _BUILT[name] = net, size
    net, size = _BUILT[name]
    return net, tcl_fast.convert_spikingjelly(copy.deepcopy(net)), size


def _step(net, x, grad, seed):
    functional.reset_net(net)
    torch.manual_seed(seed)  # dropout draws the same masks in both nets
    out = net(x)
    if grad is not None:
        out.backward(grad)
    return out.detach()


def _neuron_vs(net):
    return [m.v for m in net.modules() if isinstance(m, tcl_fast.nn.BaseNode)]


def _assert_same(a: nn.Module, b: nn.Module):
    for (n1, p1), (n2, p2) in zip(a.named_parameters(), b.named_parameters()):
        assert n1 == n2 and (p1.grad is None) == (p2.grad is None), n1
        if p1.grad is not None:
            assert torch.equal(p1.grad, p2.grad), n1
    for (n1, b1), (n2, b2) in zip(a.named_buffers(), b.named_buffers()):
        assert n1 == n2 and torch.equal(b1, b2), n1


@pytest.mark.parametrize("name", list(MODELS))
def test_fused_zoo_model_is_bit_identical(name):
    sj, plain, size = _converted(name)
    fused = tcl_fast.fuse_bn_lif(copy.deepcopy(plain), impl="recompute")
    assert len(fused.bn_lif_blocks) == MODELS[name][1]
    assert isinstance(fused, type(plain))
    assert tcl_fast.fuse_bn_lif(fused) is fused and len(fused.bn_lif_blocks) == MODELS[name][1]  # idempotent
    fused.load_state_dict(sj.state_dict(), strict=True)  # same keys as the SpikingJelly original
    assert list(fused.state_dict()) == list(sj.state_dict())
    g = torch.Generator().manual_seed(1)
    for i in range(2):  # the second batch: reset_net resets the fused neurons too
        x = torch.rand(T, B, 3, size, size, generator=g) * 2
        grad = torch.randn(T, B, 10, generator=g)
        assert torch.equal(_step(fused, x, grad, i), _step(plain, x, grad, i))
        for v1, v2 in zip(_neuron_vs(fused), _neuron_vs(plain)):
            assert torch.equal(v1, v2)
    _assert_same(fused, plain)
    fused.eval(), plain.eval()
    for grad in (None, torch.randn(T, B, 10, generator=g)):  # no_grad path and eval with autograd
        x = torch.rand(T, B, 3, size, size, generator=g) * 2
        with torch.set_grad_enabled(grad is not None):
            assert torch.equal(_step(fused, x, grad, 5), _step(plain, x, grad, 5))
    _assert_same(fused, plain)


@pytest.mark.parametrize("name", ["spiking_resnet18", "plif_cifar10net"])
def test_fused_in_kernel_matches_up_to_rounding(name):
    # impl="auto": plain blocks run BN inside the LIF kernel, residual ones recompute.
    _, plain, size = _converted(name)
    fused = tcl_fast.fuse_bn_lif(copy.deepcopy(plain))
    g = torch.Generator().manual_seed(2)
    x = torch.rand(T, B, 3, size, size, generator=g) * 2
    grad = torch.randn(T, B, 10, generator=g)
    torch.testing.assert_close(_step(fused, x, grad, 0), _step(plain, x, grad, 0), rtol=1e-4, atol=1e-4)
    for (n1, p1), (_, p2) in zip(fused.named_parameters(), plain.named_parameters()):
        # this zoo net's gradients reach 1e8: compare against each tensor's scale
        assert (p1.grad - p2.grad).abs().max() <= 1e-4 * p2.grad.abs().max() + 1e-6, n1
    for (n1, b1), (_, b2) in zip(fused.named_buffers(), plain.named_buffers()):
        torch.testing.assert_close(b1, b2, rtol=1e-5, atol=1e-6, msg=n1)


def test_fusion_holds_less_for_backward():
    _, plain, size = _converted("spiking_resnet18")
    fused = tcl_fast.fuse_bn_lif(copy.deepcopy(plain))
    x = torch.rand(T, B, 3, size, size)
    held = []
    for net in (plain, fused):
        functional.reset_net(net)
        with tcl_fast.SavedTensorCounter(exclude=list(net.parameters())) as c:
            net(x)
        held.append(c.nbytes)
    assert held[1] < 0.8 * held[0]


def test_stateful_node_carrying_v_runs_unfused():
    """Two forwards without reset_net: the second starts from the kept membrane
    (unfused there), and the gradient flows back through v into the first."""
    _, plain, size = _converted("if_net")
    fused = tcl_fast.fuse_bn_lif(copy.deepcopy(plain), impl="recompute")
    x = torch.rand(2, T, B, 3, size, size)
    outs = []
    for net in (plain, fused):
        functional.reset_net(net)
        out = net(x[0]) + net(x[1])
        out.pow(2).sum().backward()
        outs.append(out.detach())
    assert torch.equal(*outs)
    _assert_same(fused, plain)


@pytest.mark.parametrize("impl", ["recompute", "kernel"])
def test_bn_lif_with_plif_node_and_membrane_gradient(impl):
    torch.manual_seed(0)
    bn = layer.BatchNorm2d(4, step_mode="m")
    node = tcl_fast.nn.ParametricLIFNode(init_tau=3.0, step_mode="m", surrogate="atan")
    y = torch.randn(3, 2, 4, 5, 5)
    res = []
    for fused in (False, True):
        b, n = copy.deepcopy(bn), copy.deepcopy(node)
        yy = y.clone().requires_grad_()
        s = bn_lif(yy, b, n, impl=impl) if fused else n(b(yy))
        (s.sum() + n.v.pow(2).sum()).backward()  # the membrane's gradient too
        res.append([s, n.v, yy.grad, n.w.grad, b.weight.grad, b.bias.grad, b.running_mean, b.running_var])
    for a, b in zip(*res):
        if impl == "recompute":
            assert torch.equal(a, b)
        else:  # BN inside the LIF kernel: equal up to rounding
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _small(step_mode="m", **node_kwargs):
    net = nn.Sequential(layer.Conv2d(3, 4, 3, padding=1), layer.BatchNorm2d(4),
                        tcl_fast.nn.LIFNode(**node_kwargs), layer.Flatten(), layer.Linear(4 * 8 * 8, 2))
    functional.set_step_mode(net, step_mode)
    return net


def _assert_left_alone(model):
    """fuse_bn_lif warns that it found nothing exact to fuse and returns the
    very model it got, its class and forward unchanged."""
    cls, forward = type(model), type(model).forward
    with pytest.warns(UserWarning, match=r"no multi-step BatchNorm -> tcl_fast neuron block in "
                                          rf"{cls.__name__}; the model is unchanged"):
        out = tcl_fast.fuse_bn_lif(model)
    assert out is model and type(out) is cls and type(out).forward is forward
    assert getattr(type(out), "bn_lif_blocks", None) is None
    return out


def test_left_alone_where_not_exact():
    single = _assert_left_alone(_small("s"))  # per-step statistics: not T*B
    assert type(single) is nn.Sequential
    _assert_left_alone(_small(store_v_seq=True))  # bn_lif records no v_seq
    _assert_left_alone(_sj_if())  # SpikingJelly's own neurons: convert first

    class TwoUsers(nn.Module):  # the BN output also goes elsewhere: it must be kept
        def __init__(self):
            super().__init__()
            self.bn, self.sn = layer.BatchNorm2d(4, step_mode="m"), tcl_fast.nn.LIFNode(step_mode="m")

        def forward(self, x):
            z = self.bn(x)
            return self.sn(z) + z

    _assert_left_alone(TwoUsers())
    # The same block with one user fuses: what was refused above was the second user.
    assert len(tcl_fast.fuse_bn_lif(_small()).bn_lif_blocks) == 1


def _sj_if():
    net = nn.Sequential(layer.Conv2d(3, 4, 3), layer.BatchNorm2d(4), sj_neuron.IFNode())
    functional.set_step_mode(net, "m")
    return net


def test_refuses_untraceable_model_and_step_mode_switch():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _small()

        def forward(self, x):
            return self.net(x) if x.sum() > 0 else -self.net(x)  # depends on the values: not traceable

    m = Branchy()
    with pytest.raises(tcl_fast.ConversionError, match="cannot trace Branchy"):
        tcl_fast.fuse_bn_lif(m)
    assert len(tcl_fast.fuse_bn_lif(m.net).bn_lif_blocks) == 1  # its traceable part fuses
    functional.set_step_mode(m.net, "s")
    with pytest.raises(RuntimeError, match="switched to step_mode='s'"):
        m.net(torch.rand(2, 3, 8, 8, requires_grad=True))
