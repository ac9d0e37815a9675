"""Zoo parity: SpikingJelly's own models, converted, against the originals.

Each model is built from SpikingJelly's zoo with SpikingJelly's neurons, copied,
and the copy converted with ``tcl_fast.convert_spikingjelly``. Outputs must be
bit-identical and parameter gradients equal within 1e-5 (float32) / 1e-10
(float64) relative, in multi-step mode and in single-step mode (T calls, with
``functional.reset_net`` between batches). Shapes are tiny: CPU CI.
"""
from __future__ import annotations

import copy

import pytest
import torch

import tcl_fast

from optional_deps import require  # noqa: E402  (skips here when missing, fails under CI=true)

sj_neuron = require("spikingjelly.activation_based.neuron")
from spikingjelly.activation_based import functional, layer, surrogate  # noqa: E402
import sj_zoo  # noqa: E402  (tests/sj_zoo.py: the zoo models, small)

T = 2
_BUILT: dict = {}  # name -> (model, input size): each zoo model is built once


_resnet18, _sew_resnet18 = sj_zoo.resnet18, sj_zoo.sew_resnet18
_vgg11_bn, _plif_cifar10 = sj_zoo.vgg11_bn, sj_zoo.plif_cifar10


def _if_net():
    net = torch.nn.Sequential(
        layer.Conv2d(3, 8, 3, padding=1), layer.BatchNorm2d(8),
        sj_neuron.IFNode(surrogate_function=surrogate.ATan()),
        layer.MaxPool2d(2), layer.Flatten(), layer.Linear(8 * 4 * 4, 16),
        sj_neuron.IFNode(v_reset=None, surrogate_function=surrogate.Sigmoid()),
        layer.Linear(16, 10),
    )
    return net, 8


MODELS = {"spiking_resnet18": _resnet18, "sew_resnet18": _sew_resnet18,
          "spiking_vgg11_bn": _vgg11_bn, "plif_cifar10net": _plif_cifar10, "if_net": _if_net}
EXPECTED = {"spiking_resnet18": "LIFNode", "sew_resnet18": "LIFNode", "spiking_vgg11_bn": "LIFNode",
            "plif_cifar10net": "ParametricLIFNode", "if_net": "IFNode"}


def _pair(name: str, dtype: torch.dtype, step_mode: str):
    if name not in _BUILT:
        torch.manual_seed(0)
        _BUILT[name] = MODELS[name]()
    net, size = _BUILT[name]
    net = copy.deepcopy(net).to(dtype)
    functional.set_step_mode(net, step_mode)
    ours = tcl_fast.convert_spikingjelly(copy.deepcopy(net), backend="auto")
    kinds = {type(m).__name__ for m in ours.modules() if isinstance(m, tcl_fast.nn.BaseNode)}
    assert kinds == {EXPECTED[name]}
    assert not any(type(m).__module__.startswith("spikingjelly.activation_based.neuron")
                   for m in ours.modules())
    ours.load_state_dict(net.state_dict(), strict=True)  # the old weights load as they are
    return net, ours, size


def _run(net, x: torch.Tensor, step_mode: str, seed: int) -> torch.Tensor:
    functional.reset_net(net)
    torch.manual_seed(seed)  # dropout draws the same masks in both nets
    if step_mode == "m":
        return net(x)
    return torch.stack([net(x_t) for x_t in x])


def _check_grads(net, ours, rtol: float) -> None:
    """Each parameter's gradient within ``rtol`` of SpikingJelly's, in norm.

    A gradient that is zero up to rounding (a conv bias before BatchNorm in
    training mode) is held to the same bound relative to a hundredth of the
    whole model's gradient norm instead of its own noise.
    """
    sj_params = dict(net.named_parameters())
    total = torch.stack([p.grad.norm() for p in net.parameters() if p.grad is not None]).norm().item()
    for name, p in ours.named_parameters():
        g_sj, g = sj_params[name].grad, p.grad
        assert (g is None) == (g_sj is None), name
        if g is None:
            continue
        scale = max(g_sj.norm().item(), 1e-2 * total)
        err = (g - g_sj).norm().item()
        assert err <= rtol * scale, f"{name}: |dg| {err:.3g} vs |g| {g_sj.norm().item():.3g}"


CASES = [(name, dtype, mode) for name in MODELS
         for dtype, mode in [(torch.float32, "m"), (torch.float64, "m"), (torch.float32, "s")]
         if not (name == "sew_resnet18" and dtype == torch.float64)]  # runtime: one float64 ResNet


@pytest.mark.parametrize("name,dtype,step_mode", CASES)
def test_zoo_parity(name, dtype, step_mode):
    net, ours, size = _pair(name, dtype, step_mode)
    g = torch.Generator().manual_seed(1)
    rtol = 1e-5 if dtype == torch.float32 else 1e-10
    batch = 2 if step_mode == "s" else 1  # BatchNorm in training mode needs 2 values per step
    for i in range(2):  # the second batch checks that reset_net resets the converted nodes
        x = torch.rand(T, batch, 3, size, size, generator=g, dtype=dtype) * 2
        out_sj = _run(net, x, step_mode, seed=i)
        out = _run(ours, x, step_mode, seed=i)
        assert torch.equal(out, out_sj)
    grad = torch.randn(out.shape, generator=g, dtype=dtype)
    out_sj.backward(grad)
    out.backward(grad)
    _check_grads(net, ours, rtol)


def test_inverse_restores_the_original():
    net, _ = _plif_cifar10()
    functional.set_step_mode(net, "m")
    original = copy.deepcopy(net)
    ours = tcl_fast.convert_spikingjelly(copy.deepcopy(net))
    back = tcl_fast.convert_spikingjelly(ours, inverse=True)
    assert [type(m) for m in back.modules()] == [type(m) for m in original.modules()]
    for (n1, m1), (n2, m2) in zip(back.named_modules(), original.named_modules()):
        assert n1 == n2 and repr(m1) == repr(m2), n1
    for (n1, t1), (n2, t2) in zip(back.state_dict().items(), original.state_dict().items()):
        assert n1 == n2 and torch.equal(t1, t2), n1
    x = torch.rand(T, 1, 3, 32, 32)
    original.eval(), back.eval()
    functional.reset_net(original), functional.reset_net(back)
    assert torch.equal(back(x), original(x))
