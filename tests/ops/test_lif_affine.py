"""The LIF of an affine input (tcl_fast::lif_affine_forward / _backward), which
bn_lif uses to run BatchNorm inside the LIF kernel: LIF(x * scale + shift
[+ addend]) against the pure-PyTorch reference of the same expression, its
gradients (float64 gradcheck in smooth mode), opcheck, and the GPU threads'
code run on the CPU."""
from __future__ import annotations

import threading

import pytest
import torch

from tcl_fast import _extension
from tcl_fast.ops.lif import NeuronSpec, lif_affine_multistep, lif_multistep

pytestmark = pytest.mark.skipif(not _extension.has_cpp(), reason="tcl_fast._C not built")


def _case(shape=(6, 3, 5, 4), dtype=torch.float32, seed=0, addend=True):
    g = torch.Generator().manual_seed(seed)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 1.5).to(dtype)
    C = shape[2]
    pshape = (C,) + (1,) * (len(shape) - 3)
    scale = (0.5 + torch.rand(pshape, generator=g, dtype=torch.float64)).to(acc)
    shift = (0.4 * torch.randn(pshape, generator=g, dtype=torch.float64) + 0.3).to(acc)
    add = (torch.rand(shape, generator=g, dtype=torch.float64) < 0.3).to(dtype) if addend else None
    return x, scale, shift, add


@pytest.mark.parametrize("addend", [False, True])
@pytest.mark.parametrize("spec", [NeuronSpec(), NeuronSpec(v_reset=None, surrogate="atan", decay_input=False),
                                  NeuronSpec(detach_reset=True, surrogate="piecewise_leaky_relu")])
@pytest.mark.parametrize("decay", [0.4, "per-channel"])
def test_matches_reference_of_the_affine_input(addend, spec, decay):
    x, scale, shift, add = _case(seed=3, addend=addend)
    if decay == "per-channel":
        decay = torch.linspace(0.3, 0.8, x.shape[2]).view(-1, 1)
    grads = torch.randn(x.shape, generator=torch.Generator().manual_seed(9))
    results = []
    for fused in (True, False):
        leaves = [t.detach().clone().requires_grad_() for t in (x, scale, shift)]
        a = None if add is None else add.detach().clone().requires_grad_()
        d = decay.clone().requires_grad_() if isinstance(decay, torch.Tensor) else decay
        if fused:
            s = lif_affine_multistep(leaves[0], leaves[1], leaves[2], decay=d, spec=spec, addend=a)
        else:
            z = leaves[0] * leaves[1] + leaves[2]
            s = lif_multistep(z if a is None else z + a, decay=d, spec=spec, backend="torch")
        (s * grads).sum().backward()
        results.append([s.detach(), *(t.grad for t in leaves), None if a is None else a.grad,
                        d.grad if isinstance(d, torch.Tensor) else None])
    got, want = results
    assert torch.equal(got[0], want[0])
    for name, u, v in zip(("x", "scale", "shift", "addend", "decay"), got[1:], want[1:]):
        if v is None:
            assert u is None, name
        else:
            torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("addend", [False, True])
def test_gradcheck_smooth_mode(addend):
    # Smooth mode fires the sigmoid's primitive: finite differences check dx,
    # dv0, ddecay, dscale, dshift and daddend of the whole recursion.
    x, scale, shift, add = _case((18, 2, 3), torch.float64, seed=5, addend=addend)
    v0 = 0.2 * torch.randn(2, 3, dtype=torch.float64)
    decay = torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64)
    scale, shift = scale.view(-1), shift.view(-1)
    ops = torch.ops.tcl_fast
    params = NeuronSpec(alpha=2.0).kernel_args

    def f(x, v0, decay, scale, shift, *a):
        return ops.lif_affine_forward(x, v0, decay, scale, shift, a[0] if a else None, *params, True)

    inputs = [t.clone().requires_grad_() for t in (x, v0, decay, scale, shift)] + (
        [add.clone().requires_grad_()] if addend else [])
    # The kernel's smooth forward is the reference's smooth LIF of the affine
    # input; the gradcheck then checks the backward against that forward.
    z = x * scale + shift + (add if addend else 0)
    want = lif_multistep(z, v0, decay=decay, alpha=2.0, backend="torch", _smooth=True, return_v=True)
    for got, ref in zip(f(*inputs), want):
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(f, tuple(inputs))


@pytest.mark.parametrize("addend", [False, True])
@pytest.mark.parametrize("need_affine_grad", [True, False])
@pytest.mark.parametrize("need_addend_grad", [True, False])
def test_opcheck(addend, need_affine_grad, need_addend_grad):
    x, scale, shift, add = _case(addend=addend)
    decay = torch.tensor(0.5)
    params = NeuronSpec().kernel_args
    torch.library.opcheck(torch.ops.tcl_fast.lif_affine_forward.default,
                          (x.requires_grad_(), None, decay, scale.requires_grad_(), shift, add, *params, False))
    args = (torch.randn_like(x), None, x.detach(), None, decay, scale.detach(), shift, add, *params, False, True,
            need_affine_grad, need_addend_grad)
    torch.library.opcheck(torch.ops.tcl_fast.lif_affine_backward.default, args)
    out = torch.ops.tcl_fast.lif_affine_backward(*args)
    assert out[3].shape == (scale.shape if need_affine_grad else (0,))
    # The addend's gradient is stored only when asked for (empty otherwise, as without an addend).
    assert out[5].shape == (x.shape if addend and need_addend_grad else (0,))
    full = torch.ops.tcl_fast.lif_affine_backward(*args[:-1], True)
    assert torch.equal(out[0], full[0])


class _RecordAddendFlag:
    """A dispatch mode noting need_addend_grad (the last argument) of every
    lif_affine_backward call made inside it."""

    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        flags = self.flags = []

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func is torch.ops.tcl_fast.lif_affine_backward.default:
                    flags.append(args[-1])
                return func(*args, **(kwargs or {}))

        self.mode = Mode()

    def __enter__(self):
        self.mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def test_autograd_asks_for_the_addend_gradient_only_when_needed():
    x, scale, shift, add = _case(addend=True)
    for add_needs_grad in (False, True):
        xs, a = x.clone().requires_grad_(), add.clone().requires_grad_(add_needs_grad)
        s = lif_affine_multistep(xs, scale, shift, decay=0.5, spec=NeuronSpec(), addend=a)
        with _RecordAddendFlag() as rec:
            s.sum().backward()
        assert rec.flags == [add_needs_grad]
        assert (a.grad is not None) == add_needs_grad


@pytest.mark.parametrize("residual_needs_grad", [False, True])
def test_bn_lif_kernel_asks_for_the_residual_gradient_only_when_needed(residual_needs_grad):
    from tcl_fast.nn import LIFMultiStep
    from tcl_fast.nn.bnlif import bn_lif

    bn, lif = torch.nn.BatchNorm2d(3), LIFMultiStep()
    y = torch.randn(4, 2, 3, 5, 5, requires_grad=True)
    r = (torch.rand(4, 2, 3, 5, 5) < 0.3).float().requires_grad_(residual_needs_grad)
    out = bn_lif(y, bn, lif, residual=r, impl="kernel")
    with _RecordAddendFlag() as rec:
        out.sum().backward()
    assert rec.flags == [residual_needs_grad]
    assert (r.grad is not None) == residual_needs_grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("spec", [NeuronSpec(v_reset=-0.25),
                                  NeuronSpec(v_reset=None, decay_input=False, surrogate="erf")])
def test_gpu_thread_mapping_matches_cpu_kernel(dtype, spec):
    # The GPU's Lanewise threads load a batch of steps (x and the addend) before
    # they compute, and keep the chunk's x for the scale's gradient; the CPU
    # kernel loads a step at a time and re-reads x: same values. T = 17, 21
    # leave ragged 16-step chunks and 4-step batches.
    testing, ops = torch.ops.tcl_fast_testing, torch.ops.tcl_fast
    params = spec.kernel_args + (False,)
    for T, shape, addend, need_addend in [(17, (2, 4, 8), True, True), (5, (3, 5, 1), False, False),
                                          (21, (1, 6, 7), True, True), (6, (2, 3, 4), True, False)]:
        x, scale, shift, add = _case((T, *shape), dtype, seed=T, addend=addend)
        decay = torch.linspace(0.3, 0.8, shape[1]).view(-1, 1)
        gs = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
        gv = torch.randn(x.shape[1:], generator=torch.Generator().manual_seed(2)).to(dtype)
        flags = (True, True, need_addend)
        got = testing.lif_affine_forward_thread_mapping(x, None, decay, scale, shift, add, *params) + \
            testing.lif_affine_backward_thread_mapping(gs, gv, x, None, decay, scale, shift, add, *params, *flags)
        want = ops.lif_affine_forward(x, None, decay, scale, shift, add, *params) + \
            ops.lif_affine_backward(gs, gv, x, None, decay, scale, shift, add, *params, *flags)
        assert got[-1].shape == (x.shape if addend and need_addend else (0,))
        for i, (a, b) in enumerate(zip(got, want)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"output {i}, T={T}")


def test_refuses_bad_affine_inputs():
    x, scale, shift, _ = _case()
    params = NeuronSpec().kernel_args + (False,)
    ops, decay = torch.ops.tcl_fast, torch.tensor(0.5)
    with pytest.raises(RuntimeError, match="scale and shift must be one per channel"):
        ops.lif_affine_forward(x, None, decay, torch.ones(7), shift, None, *params)
    with pytest.raises(RuntimeError, match="share one layout"):
        ops.lif_affine_forward(x, None, torch.full((3, 1, 1), 0.5), scale, shift, None, *params)
    with pytest.raises(RuntimeError, match="addend must be"):
        ops.lif_affine_forward(x, None, decay, scale, shift, x[:, :2].contiguous(), *params)
    with pytest.raises(RuntimeError, match="needs the C\\+\\+/CUDA kernels|resolved backend"):
        lif_affine_multistep(torch.ones(2, 3, dtype=torch.int32).float().to("meta"), scale, shift, decay=0.5,
                             spec=NeuronSpec())


def _raises_within(seconds, fn):
    """The exception fn raises, run in a thread: a hang fails the test in `seconds`
    instead of stalling the run (the thread is a daemon, left behind)."""
    caught = []

    def run():
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            caught.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), f"still running after {seconds} s (a hang)"
    assert caught, "no exception raised"
    return caught[0]


@pytest.mark.parametrize("bad", ["scale", "shift"])
def test_parameter_with_a_leading_dim_not_1_is_refused_not_a_hang(bad):
    # x [T, B, C, H]; a [2, B, C, 1] parameter has more dims than the neurons and
    # a leading dim of 2: it used to loop on squeeze(0) for ever.
    x, scale, shift, _ = _case((6, 3, 5, 4), addend=False)  # scale, shift: [C, 1]
    params = {"scale": scale, "shift": shift}
    params[bad] = params[bad].expand(2, 3, 5, 1).contiguous()
    err = _raises_within(10, lambda: lif_affine_multistep(x, params["scale"], params["shift"], decay=0.5,
                                                          spec=NeuronSpec()))
    assert isinstance(err, ValueError), repr(err)
    assert str(err).startswith(f"{bad} must broadcast to the neuron dims x.shape[1:] = (3, 5, 4)")
    # leading 1s beyond the neuron dims are fine: [1, 1, C, 1] is one per channel
    want = lif_affine_multistep(x, scale, shift, decay=0.5, spec=NeuronSpec())
    got = lif_affine_multistep(x, scale[None, None, None], shift[None, None, None], decay=0.5, spec=NeuronSpec())
    assert torch.equal(got, want)


needs_cuda = pytest.mark.skipif(not (torch.cuda.is_available() and _extension.has_cuda_kernels()),
                                reason="no CUDA kernels / GPU")


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_matches_cpu(dtype):
    # The CUDA threads run the same Lanewise drivers as the CPU groups.
    params = NeuronSpec(v_reset=-0.25, surrogate="atan").kernel_args + (False,)
    ops = torch.ops.tcl_fast
    for T, shape in [(17, (2, 4, 8)), (5, (3, 5, 7))]:
        x, scale, shift, add = _case((T, *shape), dtype, seed=T)
        decay = torch.linspace(0.3, 0.8, shape[1]).view(-1, 1)
        gs = torch.randn(x.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
        want = ops.lif_affine_forward(x, None, decay, scale, shift, add, *params) + \
            ops.lif_affine_backward(gs, None, x, None, decay, scale, shift, add, *params, True, True, True)
        c = [t.cuda() for t in (x, decay, scale, shift, add, gs)]
        got = ops.lif_affine_forward(c[0], None, c[1], c[2], c[3], c[4], *params) + \
            ops.lif_affine_backward(c[5], None, c[0], None, c[1], c[2], c[3], c[4], *params, True, True, True)
        for i, (a, b) in enumerate(zip(got, want)):
            tol = 1e-5 if dtype == torch.float32 else 1e-2
            torch.testing.assert_close(a.cpu(), b, rtol=tol, atol=tol, msg=f"output {i}, T={T}")


@needs_cuda
def test_cuda_bn_lif_in_kernel_matches_bn_then_lif():
    import copy

    from tcl_fast.nn import LIFMultiStep
    from tcl_fast.nn.bnlif import bn_lif

    torch.manual_seed(0)
    bn, lif = torch.nn.BatchNorm2d(6).cuda(), LIFMultiStep(learnable_tau=True, channels=6).cuda()
    y = (torch.randn(4, 3, 6, 5, 5, device="cuda") * 1.5 + 0.3)
    r = (torch.rand_like(y) < 0.3).float()
    w = torch.randn_like(y)
    outs = []
    for fused in (True, False):
        b, li = copy.deepcopy(bn), copy.deepcopy(lif)
        yy, rr = y.clone().requires_grad_(), r.clone().requires_grad_()
        s = bn_lif(yy, b, li, rr, impl="kernel") if fused else li(b(yy.flatten(0, 1)).view_as(yy) + rr)
        (s * w).sum().backward()
        outs.append([s, yy.grad, rr.grad, b.weight.grad, b.bias.grad, li.w.grad, b.running_mean, b.running_var])
    for i, (a, b) in enumerate(zip(*outs)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4, msg=f"item {i}")
