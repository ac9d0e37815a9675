"""SpikingJelly compatibility: surrogate mappings, refusals, step modes, state, monitors."""
from __future__ import annotations

import copy

import pytest
import torch

import tcl_fast
from tcl_fast.nn import IFNode, LIFMultiStep, LIFNode, ParametricLIFNode

from optional_deps import require  # noqa: E402  (skips here when missing, fails under CI=true)

sj = require("spikingjelly.activation_based.neuron")
from spikingjelly.activation_based import functional, layer, surrogate  # noqa: E402


def _sj_monitor():
    """spikingjelly.activation_based.monitor, which imports torch.utils.tensorboard
    at the top for its GPUMonitor only; CI installs SpikingJelly without
    tensorboard, so stand in an empty SummaryWriter module where it is missing."""
    import sys
    import types

    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        stub = types.ModuleType("torch.utils.tensorboard")
        stub.SummaryWriter = None
        sys.modules["torch.utils.tensorboard"] = stub
    from spikingjelly.activation_based import monitor

    return monitor

# Every SpikingJelly surrogate class with a kernel, at a non-default parameter.
SJ_SURROGATES = [
    surrogate.Sigmoid(alpha=3.0), surrogate.ATan(alpha=1.5), surrogate.PiecewiseQuadratic(alpha=2.0),
    surrogate.Rect(alpha=0.8), surrogate.SuperSpike(alpha=1.5), surrogate.Erf(alpha=1.5),
    surrogate.SoftSign(alpha=3.0), surrogate.PiecewiseLeakyReLU(w=0.75, c=0.05),
    surrogate.PiecewiseExp(alpha=1.5),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sg", SJ_SURROGATES, ids=lambda s: type(s).__name__)
def test_surrogate_matches_spikingjelly(sg, dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 3, 40, generator=g, dtype=dtype) * 1.5 + 0.6)
    grad = torch.randn(x.shape, generator=g, dtype=dtype)
    ref = sj.LIFNode(tau=2.0, surrogate_function=copy.deepcopy(sg), step_mode="m")
    ours = LIFNode(tau=2.0, surrogate_function=sg, step_mode="m")
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    s_ref, s_ours = ref(x_ref), ours(x_ours)
    assert torch.equal(s_ours, s_ref)
    assert 0.05 < s_ref.mean() < 0.9
    s_ref.backward(grad)
    s_ours.backward(grad)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=tol, atol=tol)
    # and back: the SpikingJelly object describing our surrogate is the same one
    assert repr(ours.surrogate_function) == repr(sg)


@pytest.mark.parametrize("bad,reason", [
    (surrogate.S2NN(), "no fused kernel"),
    (surrogate.Sigmoid(spiking=False), "spiking=False"),
    (type("MySigmoid", (surrogate.Sigmoid,), {})(), "subclasses"),
])
def test_unsupported_surrogate_refused(bad, reason):
    with pytest.raises(ValueError, match=reason):
        LIFNode(surrogate_function=bad)
    net = torch.nn.Sequential(layer.Linear(4, 4), sj.LIFNode(surrogate_function=bad))
    with pytest.raises(tcl_fast.ConversionError, match=r"^1: .*" + reason):
        tcl_fast.convert_spikingjelly(net)
    assert isinstance(net[1], sj.LIFNode)  # untouched


class _MyLIF(sj.LIFNode):
    pass


@pytest.mark.parametrize("node,reason", [
    (sj.QIFNode(), "no exact tcl_fast equivalent"),
    (_MyLIF(), "a subclass of"),
])
def test_unconvertible_neuron_refused_with_its_path(node, reason):
    net = torch.nn.Sequential(torch.nn.Sequential(layer.Linear(4, 4), node), sj.LIFNode())
    with pytest.raises(tcl_fast.ConversionError, match=r"^0\.1: .*" + reason):
        tcl_fast.convert_spikingjelly(net)
    assert isinstance(net[1], sj.LIFNode)  # nothing replaced


def test_other_refusals():
    with pytest.raises(tcl_fast.ConversionError, match="backend"):
        tcl_fast.convert_spikingjelly(torch.nn.Sequential(sj.LIFNode()), backend="cupy")
    node = sj.LIFNode(step_mode="m")
    node(torch.rand(2, 3))
    with pytest.raises(tcl_fast.ConversionError, match="reset_net"):
        tcl_fast.convert_spikingjelly(torch.nn.Sequential(node))
    with pytest.raises(ValueError, match="backend"):
        LIFNode(backend="numpy")
    with pytest.raises(ValueError, match="not both"):
        LIFNode(surrogate_function=surrogate.ATan(), surrogate="atan")
    with pytest.raises(ValueError, match="no SpikingJelly counterpart"):
        LIFNode(surrogate="fast_sigmoid").surrogate_function


def test_zoo_keywords_and_backend_names():
    node = LIFNode(tau=2.0, surrogate_function=surrogate.ATan(alpha=2.0), detach_reset=True,
                   step_mode="m", store_v_seq=False, backend="cupy")
    assert (node.surrogate, node.alpha, node.backend) == ("atan", 2.0, "cuda")
    node.surrogate_function = surrogate.PiecewiseQuadratic(alpha=2.0)  # re-mapped, not stored aside
    assert (node.surrogate, node.alpha) == ("triangle", 0.5)
    assert "surrogate_function" not in dict(node.named_children())


def test_set_step_mode_is_honoured_never_ignored():
    net = torch.nn.Sequential(layer.Linear(5, 5), LIFNode(), ParametricLIFNode(), IFNode())
    functional.set_step_mode(net, "m")
    assert all(m.step_mode == "m" for m in net)
    functional.set_step_mode(net, "s")
    assert all(m.step_mode == "s" for m in net)
    with pytest.raises(ValueError, match="multi-step only"):
        functional.set_step_mode(torch.nn.Sequential(LIFMultiStep()), "s")
    functional.set_step_mode(torch.nn.Sequential(LIFMultiStep()), "m")


def test_single_step_fed_a_sequence_raises():
    node = LIFNode(step_mode="s")
    node(torch.rand(4, 8))
    with pytest.raises(ValueError, match="single-step mode"):
        node(torch.rand(3, 4, 8))  # [T, B, N] by mistake: not read as a batch of 3
    node.reset()  # even after a reset: the module knows its steps are 2-dim
    with pytest.raises(ValueError, match=r"step_mode='m'"):
        node(torch.rand(3, 4, 8))
    with pytest.raises(ValueError, match="reset"):
        node(torch.rand(4, 8)), node(torch.rand(5, 8))  # batch changed without reset_net


def test_single_step_equals_multi_step_and_reset_net():
    x = torch.randn(5, 3, 7) + 0.7
    multi = LIFNode(step_mode="m", tau=3.0)
    single = LIFNode(step_mode="s", tau=3.0)
    net = torch.nn.Sequential(single)
    for _ in range(2):
        functional.reset_net(net)
        out = torch.stack([net(x_t) for x_t in x])
        assert torch.equal(out, multi(x))
        assert torch.equal(single.v, multi.v)
    functional.reset_net(net)
    assert single.v == 0.0 and single.v_seq is None


def test_stateful_multi_step_streams_and_detaches():
    x = torch.randn(8, 2, 5, generator=torch.Generator().manual_seed(0)) + 0.7
    whole = LIFNode(step_mode="m")(x)
    stateless = LIFNode(step_mode="m")
    assert not torch.equal(torch.cat([stateless(x[:4]), stateless(x[4:])]), whole)
    stateful = LIFNode(step_mode="m", stateful=True)
    x_req = x.clone().requires_grad_()
    first = stateful(x_req[:4])
    assert stateful.v.requires_grad
    functional.detach_net(torch.nn.Sequential(stateful))  # truncated BPTT
    assert not stateful.v.requires_grad
    assert torch.equal(torch.cat([first, stateful(x_req[4:])]), whole)
    stateful.reset()
    assert torch.equal(stateful(x), whole)


@pytest.mark.parametrize("step_mode", ["s", "m"])
def test_v_and_v_seq_recorded_by_monitors(step_mode):
    x = torch.randn(4, 2, 6) + 0.7
    ref = torch.nn.Sequential(sj.LIFNode(step_mode=step_mode, store_v_seq=True))
    ours = torch.nn.Sequential(LIFNode(step_mode=step_mode, store_v_seq=True))
    monitor = _sj_monitor()
    records = {}
    for name, net, cls in (("ref", ref, sj.LIFNode), ("ours", ours, LIFNode)):
        out_mon = monitor.OutputMonitor(net, cls)
        v_mon = monitor.AttributeMonitor("v", False, net, cls)
        v_seq_mon = monitor.AttributeMonitor("v_seq", False, net, cls)
        out = net(x) if step_mode == "m" else torch.stack([net(x_t) for x_t in x])
        records[name] = (out, out_mon.records, v_mon.records, v_seq_mon.records, net[0].v_seq)
        for mon in (out_mon, v_mon, v_seq_mon):
            mon.remove_hooks()
    (out_r, o_r, v_r, vs_r, seq_r), (out_o, o_o, v_o, vs_o, seq_o) = records["ref"], records["ours"]
    assert torch.equal(out_o, out_r)
    assert len(o_o) == len(o_r) and len(v_o) == len(v_r) > 0
    for a, b in zip(o_o + v_o, o_r + v_r):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(seq_o, seq_r, rtol=0, atol=1e-6)
    assert seq_o.shape == x.shape
    assert len(vs_o) == len(vs_r) > 0  # the v_seq monitor records what SpikingJelly's records
    for a, b in zip(vs_o, vs_r):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_store_v_seq_multi_step_is_the_fused_op():
    x = (torch.randn(6, 3, 5, dtype=torch.float64) + 0.7).requires_grad_()
    fused = LIFNode(step_mode="m", v_reset=None)
    stepped = LIFNode(step_mode="m", v_reset=None, store_v_seq=True)
    s1, s2 = fused(x), stepped(x)
    assert torch.equal(s1, s2) and torch.equal(stepped.v_seq[-1], fused.v)
    g = torch.randn_like(s1)
    (g1,) = torch.autograd.grad(s1, x, g)
    (g2,) = torch.autograd.grad(s2, x, g)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)


def test_plif_state_dict_and_gradient():
    ref = sj.ParametricLIFNode(init_tau=3.0, step_mode="m", surrogate_function=surrogate.ATan())
    ours = tcl_fast.convert_spikingjelly(copy.deepcopy(ref))
    assert isinstance(ours, ParametricLIFNode)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(5, 2, 8) + 0.6
    s_ref, s_ours = ref(x), ours(x)
    assert torch.equal(s_ours, s_ref)
    s_ref.sum().backward()
    s_ours.sum().backward()
    torch.testing.assert_close(ours.w.grad, ref.w.grad, rtol=1e-5, atol=1e-7)


def test_if_node_matches_spikingjelly():
    x = torch.randn(6, 2, 9, dtype=torch.float64) * 0.8 + 0.3
    for v_reset in (0.0, None):
        ref = sj.IFNode(v_reset=v_reset, step_mode="m")
        ours = IFNode(v_reset=v_reset, step_mode="m")
        assert torch.equal(ours(x), ref(x))
        torch.testing.assert_close(ours.v, ref.v, rtol=0, atol=0)
