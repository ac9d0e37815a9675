"""BatchNorm followed by LIF, keeping only the BN input for backward.

In a conv -> BN -> LIF block autograd keeps the BN input (the conv output) and
the LIF input (the BN output), both full size. :func:`bn_lif` keeps the BN
input only (plus the weight, bias and, with a residual, the addend); its
backward recomputes ``z = BN(y) [+ residual]`` and the LIF forward from it,
then runs the BN and LIF backward through the same PyTorch/tcl_fast ops as the
unfused block, so values, gradients and running statistics equal those of
``BatchNorm`` followed by ``LIFMultiStep`` (bit for bit on CPU; tests check it).

Status: the recompute runs PyTorch's batch_norm and tcl_fast's LIF op in the
backward (activation recomputation of the BN+LIF pair); it is *not* yet one
fused kernel that normalises inside the LIF kernel and reduces BN's
per-channel sums in the same pass. The memory saving is the same; the time
cost is one extra BN forward and LIF forward per block in the backward.

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

import torch
import torch.nn.functional as F
from torch import nn

from tcl_fast.nn.lif import LIFMultiStep, learnt_decay
from tcl_fast.ops.lif import lif_multistep
from tcl_fast.ops.pack import mark_spikes

__all__ = ["BNLIF", "bn_lif"]


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


def _lif_call(lif: LIFMultiStep, z: torch.Tensor, lif_w):
    """The LIF of the block; ``lif_w``: its learnt ``w`` (one or per channel) or None."""
    decay = learnt_decay(lif_w, z, type(lif).__name__) if lif_w is not None else 1.0 / lif.tau
    return lif_multistep(z, None, decay=decay, spec=lif.spec, backend=lif.backend)


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


class _BNLIFFunction(torch.autograd.Function):
    """spikes = LIF(sum_i BN_i(y_i) + residual); saves the y_i, the residual and parameters.

    Inputs after ``(lif, branches, factors, n)``: ``residual, lif_w`` then, per
    branch, ``y, weight, bias, running_mean, running_var``.
    """

    @staticmethod
    def forward(ctx, lif, branches, factors, residual, lif_w, *per_branch):
        n = len(branches)
        ys, ws, bs = per_branch[0::5], per_branch[1::5], per_branch[2::5]
        running = list(zip(per_branch[3::5], per_branch[4::5]))
        T = ys[0].shape[0]
        z = _normalise(branches, running, ys, ws, bs, factors, T)
        if residual is not None:
            z = z + residual
        spikes = _lif_call(lif, z, lif_w)
        # Eval mode normalises with the running statistics: keep this call's (C-sized) copy.
        stats = [(None, None) if training else _saved_running(rm, rv)
                 for (_, training), (rm, rv) in zip(branches, running)]
        ctx.save_for_backward(residual, lif_w, *ys, *ws, *bs, *(t for st in stats for t in st))
        ctx.n, ctx.lif, ctx.branches = n, lif, branches
        ctx.autocast = [(dev, True, torch.get_autocast_dtype(dev))
                        for dev in ("cpu", "cuda") if torch.is_autocast_enabled(dev)]
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        n = ctx.n
        saved = ctx.saved_tensors
        residual, lif_w = saved[0], saved[1]
        ys, ws, bs = saved[2:2 + n], saved[2 + n:2 + 2 * n], saved[2 + 2 * n:2 + 3 * n]
        flat = saved[2 + 3 * n:]
        stats = list(zip(flat[0::2], flat[1::2]))
        needs = ctx.needs_input_grad
        # needs index: 3 residual, 4 lif_w, 5 + 5*i + (0 y, 1 weight, 2 bias)
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

        r_, lw_ = leaf(residual, 3), leaf(lif_w, 4)
        ys_ = [leaf(y, 5 + 5 * i) for i, y in enumerate(ys)]
        ws_ = [leaf(w, 6 + 5 * i) for i, w in enumerate(ws)]
        bs_ = [leaf(b, 7 + 5 * i) for i, b in enumerate(bs)]
        with torch.enable_grad(), _autocast(ctx.autocast):
            z = _normalise(ctx.branches, stats, ys_, ws_, bs_, [0.0] * n, ys_[0].shape[0])
            if r_ is not None:
                z = z + r_
            spikes = _lif_call(ctx.lif, z, lw_)
        grads = torch.autograd.grad(spikes, leaves, grad_spikes) if leaves else ()
        out = [None] * len(needs)
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
        T = t.shape[0]
        if stats == "step":
            mods, _ = _step_modules(m, T, "bn")
            zi = torch.stack([mt(yt) for mt, yt in zip(mods, t.unbind(0))])
        else:
            zi = m(t.flatten(0, 1))
            zi = zi.reshape(T, -1, *zi.shape[1:])
        z = zi if z is None else z + zi
    return lif(z if residual is None else z + residual)


def bn_lif(y: torch.Tensor, bn: nn.Module, lif: LIFMultiStep,
           residual: torch.Tensor | None = None, *,
           shortcut: tuple[torch.Tensor, nn.Module] | None = None, stats: str = "tb") -> torch.Tensor:
    """``lif(BN(y) [+ shortcut_bn(shortcut_y)] [+ residual])``; keeps only the BN inputs.

    ``y: [T, B, C, ...]``; ``bn`` an ``nn.BatchNorm1d/2d/3d`` (its parameters,
    buffers and train/eval mode are used and updated exactly as calling it
    would); ``lif`` a :class:`~tcl_fast.nn.LIFMultiStep`. ``shortcut=(y2, bn2)``
    adds a second normalised branch (a ResNet's projection shortcut) whose BN
    output is not kept either. Spikes come back marked for
    :func:`tcl_fast.pack_spikes`. Under torch.compile, or when no gradient is
    recorded, it runs the modules as they are.

    ``stats="tb"`` normalises over T*B (BN sees ``[T*B, C, ...]``).
    ``stats="step"`` normalises each step over B: ``bn`` (and ``bn2``) is one
    BN module used at every step, or an ``nn.ModuleList`` of T BN modules
    (BNTT), module t for step t; equal to ``stack([bn_t(y[t]) for t])``.
    """
    if stats not in ("tb", "step"):
        raise ValueError(f"bn_lif: stats must be 'tb' (over T*B) or 'step' (per time step), got {stats!r}")
    if y.dim() < 3:
        raise ValueError(f"bn_lif expects y of shape [T, B, C, ...], got {tuple(y.shape)}")
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
    if torch.compiler.is_compiling() or not needs_grad:
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
    spikes = _BNLIFFunction.apply(lif, tuple(branches), tuple(factors), residual,
                                  lif.w if lif.learnable_tau else None, *flat)
    return mark_spikes(spikes)


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
                 time_steps: int | None = None, **lif_kwargs):
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
        self.stats = stats

    @classmethod
    def from_modules(cls, bn: nn.Module, lif: LIFMultiStep, stats: str = "tb") -> BNLIF:
        return cls(bn=bn, lif=lif, stats=stats)

    def forward(self, y: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return bn_lif(y, self.bn, self.lif, residual, stats=self.stats)

    def extra_repr(self) -> str:
        return f"stats={self.stats!r}"
