"""tcl_fast.optimize_memory: checkpointed models against the same model without it.

Every comparison is bit for bit (torch.equal): outputs, every parameter's
gradient, every buffer (BatchNorm running statistics, num_batches_tracked)
after several SGD steps, neuron membranes carried across calls, dropout.
Then what it leaves alone or refuses, and that it does drop what it should.
Tiny shapes: CPU CI."""
from __future__ import annotations

import copy
import gc
import weakref

import pytest
import torch
from torch import nn

import tcl_fast
from optional_deps import require
from tcl_fast.models import build_model, set_bn_fusion

T, B = 2, 2
STEPS = 2


def _same(a: nn.Module, b: nn.Module, forward, steps=STEPS, calls=1, lr=0.05):
    """Train copies ``a`` and ``b`` side by side; assert everything equal after each step."""
    opts = [torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9) for m in (a, b)]
    for step in range(steps):
        results = []
        for m, opt in zip((a, b), opts):
            opt.zero_grad(set_to_none=True)
            torch.manual_seed(100 + step)  # dropout draws the same in both
            out = forward(m, step)
            out.square().sum().backward()
            results.append((out.detach(), [p.grad for p in m.parameters()]))
            opt.step()
        (oa, ga), (ob, gb) = results
        assert torch.equal(oa, ob), f"step {step}: outputs differ"
        assert len(ga) == len(gb)
        for i, (u, v) in enumerate(zip(ga, gb)):
            assert (u is None) == (v is None), f"step {step}: parameter {i} has a gradient in one model only"
            assert u is None or torch.equal(u, v), f"step {step}: gradient of parameter {i} differs"
        assert any(u is not None and u.abs().sum() > 0 for u in ga), "no gradient reached the parameters"
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs after {steps} steps"
    nbt = [v for k, v in sa.items() if k.endswith("num_batches_tracked")]
    assert nbt and all(int(v) == steps * calls for v in nbt), "BN statistics not updated exactly once per step"


def _tcl_forward(T_=T):
    def forward(m, step):
        g = torch.Generator().manual_seed(step)
        if isinstance(m.stem.module[0], nn.Conv2d) and m.stem.module[0].in_channels == 2:  # DVS frames
            x = (torch.rand(T_, B, 2, 16, 16, generator=g) < 0.3).float()
            out = m(x)
        else:
            out = m(torch.randn(B, 3, 8, 8, generator=g), T=T_)
        return torch.cat((out.logits, out.features), -1)
    return forward


def _build(name):
    torch.manual_seed(0)
    if name == "vggsnn":
        return build_model("vggsnn", 10, 2, final_hw=1, proj_dim=8)
    return build_model(name, 10, 3, proj_dim=8)


@pytest.mark.parametrize("name", ["resnet19", "vggsnn"])
@pytest.mark.parametrize("fuse", [False, "auto", "recompute"])
@pytest.mark.parametrize("pack", [False, True])
def test_tcl_models_bit_identical(name, fuse, pack):
    plain = _build(name)
    if fuse:
        set_bn_fusion(plain, True, fuse)
    opt = tcl_fast.optimize_memory(copy.deepcopy(_build(name)), fuse_bn=fuse, pack=pack)
    assert opt.memory_blocks
    forward = _tcl_forward()

    def run(m, step):
        with tcl_fast.pack_spikes(pack and m is plain):  # the optimised one packs by itself
            return forward(m, step)
    _same(plain, opt, run)


def test_recompute_fusion_equals_the_untouched_model():
    """fuse_bn="recompute": bit-identical to the model as built (no fusion, no checkpoint)."""
    plain = _build("resnet19")
    opt = tcl_fast.optimize_memory(_build("resnet19"), fuse_bn="recompute")
    _same(plain, opt, _tcl_forward())


def test_cpu_autocast_bfloat16():
    plain, opt = _build("vggsnn"), tcl_fast.optimize_memory(_build("vggsnn"))
    forward = _tcl_forward()

    def run(m, step):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return forward(m, step).float()
    _same(plain, opt, run)


def test_state_dict_keys_and_loading_unchanged():
    plain, opt = _build("resnet19"), tcl_fast.optimize_memory(_build("resnet19"))
    assert list(plain.state_dict()) == list(opt.state_dict())
    opt.load_state_dict(plain.state_dict(), strict=True)
    blocks = [b for b in opt.memory_blocks if b.startswith("body.")]
    assert len(blocks) == 8  # ResNet-19's 3 + 3 + 2 BasicBlocks


def test_eval_and_no_grad_run_without_checkpointing():
    plain, opt = _build("resnet19").eval(), tcl_fast.optimize_memory(_build("resnet19")).eval()
    x = torch.randn(B, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(plain(x, T=T).logits, opt(x, T=T).logits)


# --------------------------------------------------------------- SpikingJelly
sj = require("spikingjelly.activation_based.neuron")
from spikingjelly.activation_based import functional, layer, surrogate  # noqa: E402
import sj_zoo  # noqa: E402


def _zoo(builder):
    torch.manual_seed(0)
    net, hw = builder()
    functional.set_step_mode(net, "m")
    return tcl_fast.convert_spikingjelly(net), hw


def _zoo_forward(hw, calls=1):
    def forward(m, step):
        functional.reset_net(m)
        outs = [m(torch.randn(T, B, 3, hw, hw, generator=torch.Generator().manual_seed(10 * step + c)))
                for c in range(calls)]
        return torch.cat(outs)
    return forward


@pytest.mark.parametrize("fuse", [False, "auto", "recompute"])
@pytest.mark.parametrize("builder", [sj_zoo.resnet18, sj_zoo.vgg11_bn], ids=["spiking_resnet18", "spiking_vgg11_bn"])
def test_converted_zoo_bit_identical(builder, fuse):
    plain, hw = _zoo(builder)
    if builder is sj_zoo.resnet18:
        if fuse:
            tcl_fast.fuse_bn_lif(plain, impl=fuse)
        opt = tcl_fast.optimize_memory(_zoo(builder)[0], fuse_bn=fuse)
    elif fuse:
        # VGG's conv-BN-LIF stages are segments of one Sequential: they stay unfused, and
        # say so, so the reference is the unfused model (in-kernel BN would differ in rounding).
        with pytest.warns(UserWarning, match="leaves the BatchNorms inside Sequential stacks"):
            opt = tcl_fast.optimize_memory(_zoo(builder)[0], fuse_bn=fuse)
    else:
        opt = tcl_fast.optimize_memory(_zoo(builder)[0], fuse_bn=fuse)
    if builder is sj_zoo.resnet18:
        assert opt.memory_blocks == tuple(f"layer{i}.{j}" for i in range(1, 5) for j in range(2))
    else:
        assert len(opt.memory_blocks) == 8 + 2  # 8 conv-BN-LIF stages, 2 classifier Linear-LIF
    _same(plain, opt, _zoo_forward(hw))


def test_stateful_neurons_across_calls():
    """Three calls without reset_net: each call's neurons start from the last one's membrane."""
    plain, hw = _zoo(sj_zoo.resnet18)
    opt = tcl_fast.optimize_memory(_zoo(sj_zoo.resnet18)[0], fuse_bn=False)
    _same(plain, opt, _zoo_forward(hw, calls=3), calls=3)
    assert isinstance(opt.layer1[0].sn1.v, torch.Tensor)
    assert torch.equal(plain.layer2[1].sn2.v, opt.layer2[1].sn2.v)


class _DropBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = layer.Conv2d(c, c, 3, padding=1, step_mode="m")
        self.bn = layer.BatchNorm2d(c, step_mode="m")
        self.drop = layer.Dropout(0.5, step_mode="m")
        self.sn = tcl_fast.LIFNode(step_mode="m", stateful=True)

    def forward(self, x):
        return self.sn(self.drop(self.bn(self.conv(x))))


def _drop_net():
    torch.manual_seed(0)
    return nn.Sequential(layer.Conv2d(3, 4, 3, padding=1, step_mode="m"), tcl_fast.LIFNode(step_mode="m"),
                         _DropBlock(4), _DropBlock(4), nn.Dropout(0.3), layer.Flatten(step_mode="m"))


def test_dropout_draws_the_same_masks():
    plain, opt = _drop_net(), tcl_fast.optimize_memory(_drop_net(), fuse_bn=False)
    assert opt.memory_blocks == ("[0:1]", "2", "3")  # conv-LIF segment, two blocks

    def forward(m, step):  # inputs large enough that spikes (and so gradients) reach the output
        functional.reset_net(m)
        return m(4 * torch.randn(T, B, 3, 8, 8, generator=torch.Generator().manual_seed(step)))
    _same(plain, opt, forward, lr=1e-4)  # a small step: the second step's neurons still fire
    # the masks matter: another seed gives another output
    torch.manual_seed(1)
    a = forward(plain, 0)
    torch.manual_seed(2)
    assert not torch.equal(a, forward(plain, 0))


# ------------------------------------------------------- what it leaves alone
def test_nothing_to_checkpoint_leaves_the_model_unchanged():
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.warns(UserWarning, match="no spiking block .* the model is unchanged"):
        out = tcl_fast.optimize_memory(m)
    assert out is m and type(m) is nn.Sequential and not hasattr(m, "memory_blocks")
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_model_fused_as_a_whole_is_refused():
    net, _ = _zoo(sj_zoo.resnet18)
    tcl_fast.fuse_bn_lif(net)
    with pytest.raises(ValueError, match="call optimize_memory on the unfused model"):
        tcl_fast.optimize_memory(net)


@pytest.mark.parametrize("kwargs, error", [({"fuse_bn": "fast"}, ValueError), ({"pack": 1}, TypeError)])
def test_bad_arguments(kwargs, error):
    with pytest.raises(error, match=next(iter(kwargs))):
        tcl_fast.optimize_memory(_build("resnet19"), **kwargs)
    with pytest.raises(TypeError, match="model"):
        tcl_fast.optimize_memory("resnet19")


def test_twice_is_once():
    m = tcl_fast.optimize_memory(_build("resnet19"))
    cls = type(m)
    assert tcl_fast.optimize_memory(m) is m and type(m) is cls


def test_compiled_model_falls_back_and_stays_exact():
    plain, opt = _build("vggsnn"), tcl_fast.optimize_memory(_build("vggsnn"), pack=False)
    compiled = torch.compile(opt, backend="eager")
    forward = _tcl_forward()
    _same(plain, opt, lambda m, step: forward(compiled if m is opt else m, step), steps=1)


# ---------------------------------------------------------- what it drops
def _block_output_alive(model, block, x):
    """Whether the spikes ``block`` emitted are still alive once the forward is done."""
    refs = []
    handle = block.register_forward_hook(lambda m, i, o: refs.append(weakref.ref(o)))
    out = model(x, T=T)
    handle.remove()
    gc.collect()
    alive = refs[0]() is not None
    out.logits.sum().backward()  # the backward still works from the bits
    return alive


def test_block_outputs_are_kept_as_bits_only():
    x = torch.randn(B, 3, 8, 8)
    plain = _build("resnet19")
    assert _block_output_alive(plain, plain.body[1], x)  # the next block's conv saved it
    opt = tcl_fast.optimize_memory(_build("resnet19"), fuse_bn=False, pack=False)
    assert not _block_output_alive(opt, opt.body[1], x)


@pytest.mark.parametrize("make", [lambda: nn.AvgPool2d(2), lambda: nn.MaxPool2d(3, 2, 1),
                                  lambda: layer.MaxPool2d(3, 2, 1, step_mode="m")])
def test_pooling_keeps_the_input_shape_not_the_input(make):
    """optimize_memory's pooling: the same output and input gradient bit for bit, and its
    backward node holds the argmax indices (max) or nothing (average), not the input."""
    opt = tcl_fast.optimize_memory(nn.Sequential(make(), tcl_fast.nn.LIFMultiStep()))
    pool, plain = opt[0], make()
    assert type(pool).__name__.startswith("ShapeSaved")
    shape = (T, B, 3, 8, 8) if getattr(plain, "step_mode", "s") == "m" else (T * B, 3, 8, 8)
    x = (torch.rand(shape, generator=torch.Generator().manual_seed(0)) < 0.4).float()
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = plain(a), pool(b)
    node = yb.grad_fn
    while type(node).__name__ != "_PoolKeepsShapeBackward":  # SpikingJelly's multi-step view on top
        node = node.next_functions[0][0]
    assert all(t.dtype == torch.int64 for t in node.saved_tensors)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    assert torch.equal(ya, yb) and torch.equal(a.grad, b.grad)
