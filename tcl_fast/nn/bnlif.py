"""BatchNorm followed by LIF, keeping only the BN input for backward.

In a conv -> BN -> LIF block autograd keeps the BN input (the conv output) and
the LIF input (the BN output), both full size. :func:`bn_lif` keeps the BN
input only (plus C-sized tensors and, with a residual, the addend), in one of
two ways (``impl=``):

* ``"kernel"``: the BN is folded into the LIF kernel. Forward computes the
  per-channel statistics and runs the C++/CUDA ``lif_affine_forward``, whose
  neurons charge with ``y * scale + shift``; backward runs
  ``lif_affine_backward``, which recomputes the normalised input inside the
  kernel and returns, in the same pass, ``scale * g`` and the per-channel sums
  of ``g`` and ``g * y`` that BN's backward needs (g = dL/dBN(y)); a residual
  is charged inside the kernel too. For blocks with statistics over T*B and no
  projection shortcut (whose BN output would have to be saved as the kernel's
  addend). Equal to the unfused block up to float rounding.
* ``"recompute"``: the backward recomputes ``z = BN(y) [+ residual]`` and the
  LIF forward, then runs BN's and the LIF's backward through the same
  PyTorch/tcl_fast ops as the unfused block: values, gradients and running
  statistics bit for bit those of ``BatchNorm`` then ``LIFMultiStep`` on CPU,
  at the cost of one extra BN and LIF forward per block.

``"auto"`` (the default) takes the kernel where it applies. Timings:
docs/memory.md (benchmarks/bench_bn_lif.py).

Two layouts of the statistics (``stats=``):

* ``"tb"`` (default): over T*B (SpikingJelly's ``SeqToANNContainer(BatchNorm2d)``,
  TET's tdBN-style layers): ``y`` is ``[T, B, C, ...]`` and BN sees ``[T*B, C, ...]``.
* ``"step"``: each step ``y[t]`` normalised with its own batch statistics over B
  (and the spatial dims). ``bn`` is either one BN module applied at every step
  (SpikingJelly's single-step loop over one ``BatchNorm2d``: running statistics
  updated T times, in step order) or an ``nn.ModuleList`` of T BN modules, the
  t-th applied to step t (BNTT, Batch Norm Through Time). The reference is
  ``torch.stack([bn_t(y[t]) for t])`` then ``LIFMultiStep``; same exactness.
"""
from __future__ import annotations

import contextlib
import threading

import torch
import torch.nn.functional as F
from torch import nn

from tcl_fast.nn.lif import LIFMultiStep, learnt_decay
from tcl_fast.nn.neurons import BaseNode, ParametricLIFNode
from tcl_fast.ops.lif import (_constant_decay, accumulation_dtype, lif_affine_multistep, lif_multistep,
                              resolve_backend)
from tcl_fast.ops.pack import mark_spikes

__all__ = ["BNLIF", "IMPLS", "bn_lif"]

# bn_lif's ways of not keeping the BN output (see its docstring).
IMPLS = ("auto", "kernel", "recompute")


def _bn_args(bn: nn.modules.batchnorm._BatchNorm):
    """(bn_training, running_mean, running_var, exponential_average_factor), as _BatchNorm.forward."""
    if bn.momentum is None:
        factor = 0.0
    else:
        factor = bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    bn_training = bn.training or (bn.running_mean is None and bn.running_var is None)
    use_running = not bn.training or bn.track_running_stats
    return (bn_training, bn.running_mean if use_running else None,
            bn.running_var if use_running else None, factor)


class _PerStep:
    """A branch with per-step statistics: step t normalised by ``mods[t]``.

    ``mods`` is one module repeated T times (shared) or T distinct modules
    (BNTT); with the latter ``stacked`` is set: weight and bias arrive stacked
    to ``[T, C]`` (so one autograd input carries all T) and eval-mode running
    statistics are saved as ``[T, C]``.
    """

    __slots__ = ("mods", "stacked")

    def __init__(self, mods, stacked):
        self.mods, self.stacked = tuple(mods), stacked


def _bn_per_step(y, plan: _PerStep, training, rmean, rvar, weight, bias, factor):
    """``stack([BN_t(y[t]) for t])``: the ops of the unfused per-step loop, used by
    the forward (which updates the running statistics, once per step in step
    order) and by the backward recompute (no running statistics in training
    mode, so no second update).

    ``rmean``/``rvar``/``weight``/``bias``: None, one tensor for every step, a
    ``[T, C]`` stack (``plan.stacked``) or a tuple of T tensors (the modules'
    own buffers, updated in place). ``factor``: one momentum or T of them.
    """
    T = y.shape[0]

    def rows(x):
        if x is None:
            return (None,) * T
        if isinstance(x, tuple):
            return x
        return x.unbind(0) if plan.stacked else (x,) * T

    factors = factor if isinstance(factor, tuple) else (factor,) * T
    return torch.stack([F.batch_norm(yt, rm, rv, w, b, training, f, m.eps)
                        for yt, rm, rv, w, b, f, m in zip(y.unbind(0), rows(rmean), rows(rvar), rows(weight),
                                                          rows(bias), factors, plan.mods)])


def _saved_running(rmean, rvar):
    """This call's copy of eval-mode running statistics ([C], or [T, C] for T modules)."""
    if isinstance(rmean, tuple):
        return torch.stack(rmean), torch.stack(rvar)
    return rmean.clone(), rvar.clone()


def _lif_call(lif, z: torch.Tensor, lif_w, decay, return_v: bool):
    """The LIF of the block: decay = sigmoid(lif_w) (PLIF's learnt ``w``, one or per
    channel) or, when lif_w is None, the constant ``decay``."""
    if lif_w is not None:
        decay = learnt_decay(lif_w, z, type(lif).__name__)
    return lif_multistep(z, None, decay=decay, spec=lif.spec, return_v=return_v, backend=lif.backend)


def _normalise(branches, stats, ys, weights, biases, factors, T):
    """sum over branches of BN_i(y_i), as ``[T, B, C, ...]`` (the unfused block's order)."""
    z = None
    for (bn, bn_training), (rmean, rvar), y, w, b, f in zip(branches, stats, ys, weights, biases, factors):
        if isinstance(bn, _PerStep):
            zi = _bn_per_step(y, bn, bn_training, rmean, rvar, w, b, f)
        else:
            zi = F.batch_norm(y.flatten(0, 1), rmean, rvar, w, b, bn_training, f, bn.eps)
            zi = zi.view(T, -1, *zi.shape[1:]) if zi.is_contiguous() else zi.reshape(T, -1, *zi.shape[1:])
        z = zi if z is None else z + zi
    return z


_LOCAL = threading.local()


@contextlib.contextmanager
def recomputed_by_caller():
    """Inside, ``bn_lif`` runs the blocks it would recompute (``impl="recompute"``, and
    ``"auto"`` where the kernel does not apply) as the plain modules instead.

    For a caller that recomputes the whole region in backward itself
    (tcl_fast.optimize_memory's checkpointed blocks): there the BN output is
    never kept anyway, and a second, nested recompute would only hold its own
    graph on top of the caller's and run BN and the LIF once more. The plain
    modules are what ``"recompute"`` equals bit for bit on CPU, so the values
    and gradients do not change.
    """
    depth = getattr(_LOCAL, "depth", 0)
    _LOCAL.depth = depth + 1
    try:
        yield
    finally:
        _LOCAL.depth = depth


def _caller_recomputes() -> bool:
    return getattr(_LOCAL, "depth", 0) > 0


# Positions of _BNLIFFunction.forward's tensor inputs (for ctx.needs_input_grad).
_RESIDUAL, _LIF_W, _BRANCH0 = 1, 2, 3


class _BNLIFFunction(torch.autograd.Function):
    """spikes = LIF(sum_i BN_i(y_i) + residual); saves the y_i, the residual and parameters.

    ``cfg = (lif, branches, factors, decay, return_v)``: ``decay`` is the
    constant 1/tau, used when ``lif_w`` (PLIF's ``w``, decay = sigmoid(w)) is
    None. Tensor inputs: ``residual, lif_w`` then, per branch, ``y, weight,
    bias, running_mean, running_var``. With ``return_v`` the final membrane is
    a second output, differentiable like the unfused neuron's.
    """

    @staticmethod
    def forward(ctx, cfg, residual, lif_w, *per_branch):
        lif, branches, factors, decay, return_v = cfg
        n = len(branches)
        ys, ws, bs = per_branch[0::5], per_branch[1::5], per_branch[2::5]
        running = list(zip(per_branch[3::5], per_branch[4::5]))
        T = ys[0].shape[0]
        z = _normalise(branches, running, ys, ws, bs, factors, T)
        if residual is not None:
            z = z + residual
        out = _lif_call(lif, z, lif_w, decay, return_v)
        # Eval mode normalises with the running statistics: keep this call's (C-sized) copy.
        stats = [(None, None) if training else _saved_running(rm, rv)
                 for (_, training), (rm, rv) in zip(branches, running)]
        ctx.save_for_backward(residual, lif_w, *ys, *ws, *bs, *(t for st in stats for t in st))
        ctx.n, ctx.cfg = n, cfg
        ctx.autocast = [(dev, True, torch.get_autocast_dtype(dev))
                        for dev in ("cpu", "cuda") if torch.is_autocast_enabled(dev)]
        # An unused output (v, mostly) gets no zero-filled gradient to push through the recompute.
        ctx.set_materialize_grads(False)
        return out

    @staticmethod
    def backward(ctx, *grad_out):
        n = ctx.n
        lif, branches, _, decay, return_v = ctx.cfg
        saved = ctx.saved_tensors
        residual, lif_w = saved[0], saved[1]
        ys, ws, bs = saved[2:2 + n], saved[2 + n:2 + 2 * n], saved[2 + 2 * n:2 + 3 * n]
        flat = saved[2 + 3 * n:]
        stats = list(zip(flat[0::2], flat[1::2]))
        needs = ctx.needs_input_grad
        out = [None] * len(needs)
        if all(g is None for g in grad_out):
            return tuple(out)
        leaves, slots = [], []

        def leaf(t, idx):
            if t is None:
                return None
            need = needs[idx]
            t = t.detach().requires_grad_(need)
            if need:
                leaves.append(t)
                slots.append(idx)
            return t

        r_, lw_ = leaf(residual, _RESIDUAL), leaf(lif_w, _LIF_W)
        ys_ = [leaf(y, _BRANCH0 + 5 * i) for i, y in enumerate(ys)]
        ws_ = [leaf(w, _BRANCH0 + 1 + 5 * i) for i, w in enumerate(ws)]
        bs_ = [leaf(b, _BRANCH0 + 2 + 5 * i) for i, b in enumerate(bs)]
        with torch.enable_grad(), _autocast(ctx.autocast):
            z = _normalise(branches, stats, ys_, ws_, bs_, [0.0] * n, ys_[0].shape[0])
            if r_ is not None:
                z = z + r_
            res = _lif_call(lif, z, lw_, decay, return_v)
        res = res if return_v else (res,)
        pairs = [(o, g) for o, g in zip(res, grad_out) if g is not None]
        grads = torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs]) if leaves else ()
        for idx, g in zip(slots, grads):
            out[idx] = g
        return tuple(out)


class _autocast:
    """Re-enter the forward's autocast state in the backward."""

    def __init__(self, states):
        self.ctxs = [torch.autocast(dev, dtype=dtype, enabled=on) for dev, on, dtype in states]

    def __enter__(self):
        for c in self.ctxs:
            c.__enter__()

    def __exit__(self, *exc):
        for c in reversed(self.ctxs):
            c.__exit__(*exc)
        return False


_BN = nn.modules.batchnorm._BatchNorm


def _step_modules(bn, T: int, what: str) -> tuple[tuple, bool]:
    """The T modules a ``stats="step"`` branch applies (``bn`` repeated, or the
    ModuleList's) and whether they are T distinct ones; ValueError otherwise."""
    if isinstance(bn, _BN):
        return (bn,) * T, False
    if not isinstance(bn, nn.ModuleList):
        raise ValueError(f"bn_lif(stats='step'): {what} must be a BatchNorm module or an nn.ModuleList of T of them, "
                         f"got {type(bn).__name__}")
    mods = tuple(bn)
    if len(mods) != T:
        raise ValueError(f"bn_lif(stats='step'): {what} is a ModuleList of {len(mods)} BN modules but y has "
                         f"T = {T} steps; BNTT needs one module per step")
    if not all(isinstance(m, _BN) for m in mods):
        raise ValueError(f"bn_lif(stats='step'): every module in {what} must be a BatchNorm module, got "
                         f"{sorted({type(m).__name__ for m in mods})}")
    # One bn_training flag and one [T, C] stack per branch need the modules to agree on these.
    for attr in ("num_features", "affine", "track_running_stats", "training"):
        if len({getattr(m, attr) for m in mods}) != 1:
            raise ValueError(f"bn_lif(stats='step'): the modules in {what} differ in {attr}")
    if len(set(map(id, mods))) != T:
        raise ValueError(f"bn_lif(stats='step'): {what} holds the same module more than once; "
                         "pass the module itself to share it across steps")
    return mods, True


def _unfused(pairs, residual, lif, stats):
    """The modules as they are: BN over T*B, or BN_t per step, then the LIF."""
    z = None
    for t, m in pairs:
        if stats == "step":
            mods, _ = _step_modules(m, t.shape[0], "bn")
            zi = torch.stack([mt(yt) for mt, yt in zip(mods, t.unbind(0))])
        else:
            zi = _bn_seq(m, t)
        z = zi if z is None else z + zi
    return lif(z if residual is None else z + residual)


def _neuron(lif) -> tuple[torch.Tensor | None, float, bool]:
    """``(w, decay, return_v)`` for a neuron bn_lif can run: PLIF's ``w`` (decay =
    sigmoid(w)) or the constant decay 1/tau, and whether the module keeps ``v``."""
    if isinstance(lif, LIFMultiStep):
        return (lif.w if lif.learnable_tau else None), 1.0 / lif.tau, False
    if isinstance(lif, BaseNode):
        if lif.step_mode != "m":
            raise ValueError(f"bn_lif needs the neuron in multi-step mode (step_mode='m'), got {lif.step_mode!r}")
        if lif.store_v_seq:
            raise ValueError("bn_lif does not record v_seq: the neuron has store_v_seq=True")
        if isinstance(lif, ParametricLIFNode):
            return lif.w, 0.0, True
        return None, lif._decay(None), True  # a constant: LIFNode's 1/tau, IFNode's 0
    raise TypeError(f"bn_lif takes a tcl_fast.nn.LIFMultiStep, LIFNode, ParametricLIFNode or IFNode, "
                    f"got {type(lif).__name__}")


def _holds_state(lif) -> bool:
    return isinstance(lif, BaseNode) and lif.stateful and isinstance(lif.v, torch.Tensor)


def _bn_seq(m: nn.Module, t: torch.Tensor) -> torch.Tensor:
    """``m`` over T*B, as ``[T, B, C, ...]``; SpikingJelly's multi-step BN flattens by itself."""
    if getattr(m, "step_mode", "s") == "m":
        return m(t)
    zi = m(t.flatten(0, 1))
    return zi.reshape(t.shape[0], -1, *zi.shape[1:])


# --------------------------------------------------------------------------
# BN folded into the LIF kernel (statistics over T*B, no projection shortcut;
# the C++/CUDA kernels)
# --------------------------------------------------------------------------
def _kernel_backend(lif, y: torch.Tensor) -> bool:
    """Whether the block can run BN inside the LIF kernel: the C++/CUDA op
    resolves for y (not the Triton or pure-PyTorch backends)."""
    try:
        return resolve_backend(lif.backend, y.device, y.dtype) in ("cpp", "cuda")
    except RuntimeError:
        return False


def _scale_shift(weight, bias, mean, invstd):
    """BN as a per-channel affine: BN(y) = y * scale + shift."""
    scale = invstd if weight is None else weight.to(invstd.dtype) * invstd
    shift = -mean * scale if bias is None else bias.to(invstd.dtype) - mean * scale
    return scale, shift


def _batch_stats(y: torch.Tensor):
    """Per-channel mean and biased variance of a contiguous ``y: [T, B, C, ...]``
    in the accumulation dtype, two-pass (the centred squares: stable where
    E[y^2] - E[y]^2 is not). torch.var_mean over the non-channel dims took 5.8 ms
    here against 0.8 ms at [4, 8, 64, 32, 32] on 2 CPU cores: its reduction over
    non-contiguous dims is slow."""
    C = y.shape[2]
    y3 = y.view(-1, C, y[0, 0, 0].numel())
    mean = y3.mean((0, 2), dtype=accumulation_dtype(y))
    var = (y3 - mean.view(1, C, 1)).square_().mean((0, 2))
    return mean, var


class _BNLIFKernel(torch.autograd.Function):
    """``LIF(BN(y))``, BN over T*B, inside the LIF kernel: forward computes the
    per-channel statistics, updates the running ones as ``_BatchNorm`` does,
    and runs ``lif_affine_forward`` with ``scale = weight * invstd``,
    ``shift = bias - mean * scale``; only ``y`` (and C-sized tensors) is saved.
    Backward runs ``lif_affine_backward``, which returns ``scale * g`` and the
    per-channel sums of ``g`` and ``g * y`` (g = dL/dBN(y)) in one pass, and
    finishes BN's input gradient with one per-channel affine of ``y``.

    ``cfg = (lif, bn, training, factor, return_v, constant decay)``; tensor
    inputs ``y, weight, bias, decay, residual`` (``decay``: a tensor for a learnt
    tau, else None; ``residual``: None, or an addend the kernel charges with the
    normalised input, saved for the backward's recompute; spikes, it is saved
    as bits under ``pack_spikes``).
    """

    @staticmethod
    def forward(ctx, cfg, y, weight, bias, decay, residual):
        lif, bn, training, factor, return_v, const_decay = cfg
        C = y.shape[2]
        shape = (C,) + (1,) * (y.dim() - 3)
        acc = accumulation_dtype(y)
        y = y.contiguous()
        with torch.no_grad(), torch.autocast(y.device.type, enabled=False):
            if training:
                n = y.numel() // C
                if n <= 1:
                    raise ValueError(f"Expected more than 1 value per channel when training, got input size "
                                     f"{list(y.shape)}")
                mean, var = _batch_stats(y)
                if bn.track_running_stats and bn.running_mean is not None:
                    bn.running_mean.mul_(1 - factor).add_(mean.to(bn.running_mean.dtype), alpha=factor)
                    bn.running_var.mul_(1 - factor).add_((var * (n / (n - 1))).to(bn.running_var.dtype),
                                                         alpha=factor)
            else:
                mean, var = bn.running_mean.to(acc), bn.running_var.to(acc)
            invstd = torch.rsqrt(var + bn.eps)
            scale, shift = _scale_shift(weight, bias, mean, invstd)
            k = decay.detach().to(acc) if decay is not None else _constant_decay(const_decay, y.device, acc)
        if residual is not None:
            residual = residual.to(y.dtype).contiguous()
        out = lif_affine_multistep(y, scale.view(shape), shift.view(shape), decay=k, spec=lif.spec,
                                   addend=residual, return_v=True)
        ctx.save_for_backward(y, weight, bias, mean, invstd, k, residual)
        ctx.cfg, ctx.shape = cfg, shape
        ctx.set_materialize_grads(False)
        return out if return_v else out[0]

    @staticmethod
    def backward(ctx, grad_spikes, grad_v=None):
        lif, bn, training, _, _, _ = ctx.cfg
        y, weight, bias, mean, invstd, k, residual = ctx.saved_tensors
        needs = ctx.needs_input_grad  # cfg, y, weight, bias, decay, residual
        if grad_spikes is None and grad_v is None:
            return None, None, None, None, None, None
        shape = ctx.shape
        scale, shift = _scale_shift(weight, bias, mean, invstd)
        grad_spikes = torch.zeros_like(y) if grad_spikes is None else grad_spikes.contiguous()
        gy, _, gk, sum_gy, sum_g, g_residual = torch.ops.tcl_fast.lif_affine_backward(
            grad_spikes, None if grad_v is None else grad_v.contiguous(), y, None, k, scale.view(shape),
            shift.view(shape), residual, *lif.spec.kernel_args, False, needs[4], True,
            residual is not None and needs[5])
        sum_gy, sum_g = sum_gy.view(-1), sum_g.view(-1)
        # sum over (T, B, ...) of g * xhat, xhat = (y - mean) * invstd
        sum_gxhat = invstd * (sum_gy - mean * sum_g)
        if training:
            # BN's input gradient: scale * (g - mean(g) - xhat * mean(g * xhat)); the kernel gave scale * g.
            n = y.numel() // y.shape[2]
            a = scale / n
            k1 = -a * invstd * sum_gxhat  # per-channel coefficient of y
            k0 = -a * sum_g - k1 * mean
            gy.addcmul_(y, k1.view(shape)).add_(k0.view(shape))
        grad_w = sum_gxhat.to(weight.dtype) if weight is not None and needs[2] else None
        grad_b = sum_g.to(bias.dtype) if bias is not None and needs[3] else None
        return (None, gy if needs[1] else None, grad_w, grad_b, gk if needs[4] else None,
                g_residual if residual is not None and needs[5] else None)


def _bn_lif_kernel(y, bn, lif, lif_w, decay, return_v, residual):
    training, _, _, factor = _bn_args(bn)
    learnt = learnt_decay(lif_w, y, type(lif).__name__) if lif_w is not None else None
    cfg = (lif, bn, training, factor, return_v, decay)
    out = _BNLIFKernel.apply(cfg, y, bn.weight, bn.bias, learnt, residual)
    if return_v:
        out, lif.v = out
    return mark_spikes(out)


def bn_lif(y: torch.Tensor, bn: nn.Module, lif: LIFMultiStep | BaseNode,
           residual: torch.Tensor | None = None, *,
           shortcut: tuple[torch.Tensor, nn.Module] | None = None, stats: str = "tb",
           impl: str = "auto") -> torch.Tensor:
    """``lif(BN(y) [+ shortcut_bn(shortcut_y)] [+ residual])``; keeps only the BN inputs.

    ``y: [T, B, C, ...]``; ``bn`` an ``nn.BatchNorm1d/2d/3d`` or SpikingJelly's
    ``layer.BatchNorm1d/2d/3d`` (its parameters, buffers and train/eval mode
    are used and updated exactly as calling it would); ``lif`` a
    :class:`~tcl_fast.nn.LIFMultiStep`, or a tcl_fast ``LIFNode``,
    ``ParametricLIFNode`` or ``IFNode`` in multi-step mode without
    ``store_v_seq`` (its ``v`` is set to the final membrane, as its own forward
    does; a stateful node that still holds a membrane from an earlier call runs
    unfused, starting from it). ``shortcut=(y2, bn2)`` adds a second
    normalised branch (a ResNet's projection shortcut) whose BN output is not
    kept either. Spikes come back marked for :func:`tcl_fast.pack_spikes`.
    Under torch.compile, or when no gradient is recorded, it runs the modules
    as they are.

    ``stats="tb"`` normalises over T*B (BN sees ``[T*B, C, ...]``).
    ``stats="step"`` normalises each step over B: ``bn`` (and ``bn2``) is one
    BN module used at every step, or an ``nn.ModuleList`` of T BN modules
    (BNTT), module t for step t; equal to ``stack([bn_t(y[t]) for t])``.

    ``impl``: how the BN output is avoided.

    * ``"kernel"``: BN folded into the LIF kernel (``lif_affine_forward``): the
      neuron charges with ``y * scale + shift`` per channel, and its backward
      returns BN's per-channel sums in the same pass; a residual is charged in
      the kernel too. For ``stats="tb"`` blocks without ``shortcut`` on the
      C++/CUDA kernels;
      ValueError elsewhere. Equal to the unfused block up to rounding (the
      normalisation is computed in float32 inside the kernel, not by
      ``batch_norm``).
    * ``"recompute"``: the backward recomputes ``BN(y)`` and the LIF forward with
      the unfused block's own ops: bit-identical to it on CPU, one extra BN and
      LIF forward per block.
    * ``"auto"`` (default): ``"kernel"`` where it applies, else ``"recompute"``.
    """
    if stats not in ("tb", "step"):
        raise ValueError(f"bn_lif: stats must be 'tb' (over T*B) or 'step' (per time step), got {stats!r}")
    if impl not in IMPLS:
        raise ValueError(f"bn_lif: impl must be one of {IMPLS}, got {impl!r}")
    if y.dim() < 3:
        raise ValueError(f"bn_lif expects y of shape [T, B, C, ...], got {tuple(y.shape)}")
    lif_w, decay, return_v = _neuron(lif)
    pairs = [(y, bn)] + ([shortcut] if shortcut is not None else [])
    T = y.shape[0]
    for i, (t, m) in enumerate(pairs):
        what = "bn" if i == 0 else "the shortcut's bn"
        if t.shape[0] != T:
            raise ValueError(f"bn_lif: the shortcut input has {t.shape[0]} steps, y has {T}")
        if stats == "tb" and not isinstance(m, _BN):
            raise ValueError(f"bn_lif(stats='tb'): {what} must be a BatchNorm module, got {type(m).__name__}"
                             + (" (a ModuleList of per-step modules needs stats='step')"
                                if isinstance(m, nn.ModuleList) else ""))
        if stats == "step":
            _step_modules(m, T, what)
    needs_grad = torch.is_grad_enabled() and (
        any(t.requires_grad for t, _ in pairs) or (residual is not None and residual.requires_grad)
        or any(p.requires_grad for _, m in pairs for p in m.parameters())
        or any(p.requires_grad for p in lif.parameters()))
    if torch.compiler.is_compiling() or not needs_grad or _holds_state(lif):
        return _unfused(pairs, residual, lif, stats)
    if impl != "recompute":
        why = ("stats='step'" if stats != "tb" else "a shortcut branch" if shortcut is not None
               else "a residual of another shape" if residual is not None and residual.shape != y.shape
               else None if _kernel_backend(lif, y) else f"the LIF backend {lif.backend!r} for {y.dtype} "
               f"{y.device.type} tensors is not the C++/CUDA kernel")
        if why is None:
            return _bn_lif_kernel(y, bn, lif, lif_w, decay, return_v, residual)
        if impl == "kernel":
            raise ValueError(f"bn_lif(impl='kernel'): BN folds into the LIF kernel for stats='tb' blocks "
                             f"without a shortcut branch on the C++/CUDA kernels; "
                             f"this one has {why} (impl='auto' recomputes instead)")
    if _caller_recomputes():  # recomputed as a whole by the caller: the plain modules, same bits
        return _unfused(pairs, residual, lif, stats)
    branches, factors, flat = [], [], []
    for t, m in pairs:
        if stats == "tb":
            training, rmean, rvar, factor = _bn_args(m)
            branches.append((m, training))
            flat += [t, m.weight, m.bias, rmean, rvar]
        else:
            mods, stacked = _step_modules(m, T, "bn")
            # One _bn_args call per step, in step order: a shared module counts T batches
            # (momentum=None then averages over them), as the unfused loop does.
            args = [_bn_args(mt) for mt in mods]
            training, factor = args[0][0], tuple(a[3] for a in args)
            branches.append((_PerStep(mods, stacked), training))
            if stacked:
                weight = None if mods[0].weight is None else torch.stack([mt.weight for mt in mods])
                bias = None if mods[0].bias is None else torch.stack([mt.bias for mt in mods])
                rmean = None if args[0][1] is None else tuple(a[1] for a in args)
                rvar = None if args[0][2] is None else tuple(a[2] for a in args)
            else:
                weight, bias, rmean, rvar = m.weight, m.bias, args[0][1], args[0][2]
            flat += [t, weight, bias, rmean, rvar]
        factors.append(factor)
    out = _BNLIFFunction.apply((lif, tuple(branches), tuple(factors), decay, return_v), residual, lif_w, *flat)
    if return_v:
        out, lif.v = out
    return mark_spikes(out)


class BNLIF(nn.Module):
    """``BatchNorm`` then ``LIFMultiStep``, saving only the BN input.

    ``BNLIF(64)`` builds a BatchNorm2d(64) (statistics over T*B) and a
    LIFMultiStep(**lif_kwargs); ``stats="step"`` normalises each step over B
    with that one module, and ``stats="step", time_steps=T`` builds an
    ``nn.ModuleList`` of T BatchNorm2d instead (BNTT; inputs must then have T
    steps). ``BNLIF.from_modules(bn, lif, stats=...)`` wraps existing ones
    (shares their parameters; ``bn`` may be a ModuleList for ``stats="step"``).
    Call as ``bnlif(y)`` or ``bnlif(y, residual)`` with ``y: [T, B, C, ...]``;
    the state dict holds ``bn.*`` and ``lif.*``.
    """

    def __init__(self, num_features: int | None = None, *, eps: float = 1e-5, momentum: float | None = 0.1,
                 bn: nn.Module | None = None, lif: LIFMultiStep | None = None, stats: str = "tb",
                 time_steps: int | None = None, impl: str = "auto", **lif_kwargs):
        super().__init__()
        if stats not in ("tb", "step"):
            raise ValueError(f"BNLIF: stats must be 'tb' or 'step', got {stats!r}")
        if time_steps is not None and (stats != "step" or bn is not None):
            raise ValueError("BNLIF: time_steps builds per-step BN modules; it needs stats='step' and no bn")
        if bn is None:
            if num_features is None:
                raise ValueError("BNLIF needs num_features or a bn module")
            if time_steps is None:
                bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum)
            else:
                bn = nn.ModuleList(nn.BatchNorm2d(num_features, eps=eps, momentum=momentum)
                                   for _ in range(time_steps))
        self.bn = bn
        self.lif = lif if lif is not None else LIFMultiStep(**lif_kwargs)
        if impl not in IMPLS:
            raise ValueError(f"BNLIF: impl must be one of {IMPLS}, got {impl!r}")
        self.stats = stats
        self.impl = impl

    @classmethod
    def from_modules(cls, bn: nn.Module, lif: LIFMultiStep, stats: str = "tb", impl: str = "auto") -> BNLIF:
        return cls(bn=bn, lif=lif, stats=stats, impl=impl)

    def forward(self, y: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return bn_lif(y, self.bn, self.lif, residual, stats=self.stats, impl=self.impl)

    def extra_repr(self) -> str:
        return f"stats={self.stats!r}, impl={self.impl!r}"
