"""``optimize_memory(model)``: recompute spiking blocks in backward, keep only their input spikes.

A spiking block (a ResNet block, a conv-BN-LIF stage) usually takes spikes in
and gives spikes out. Checkpointed at those boundaries, autograd keeps, per
block, only its input, and a spike input is kept as 1 bit per element
(tcl_fast.ops.spike_pack); the block's conv outputs, BN outputs and neuron
tensors are recomputed during backward, one block at a time.

Why the gradients are bit-identical to the model without it: the backward of
a checkpointed block runs autograd's own graph of the first forward; only the
tensors that graph saved are produced a second time, by the same ops on the
same inputs (``torch.utils.checkpoint``, non-reentrant, checks their shapes),
with the same RNG state (dropout) and autocast state. A 0/1 input restored
from bits is the same tensor bit for bit. What would differ in a second run is
put back as it was at the first:

* module buffers (BatchNorm running statistics, ``num_batches_tracked``): the
  recompute sees the values of the first forward and its own updates are
  undone, so each step updates them once;
* neuron state carried across calls (tcl_fast ``BaseNode.v``/``v_seq`` with
  ``stateful=True``, SpikingJelly ``_memories``): the recompute starts from the
  membrane the first forward started from, and the state after the step is
  the first forward's.

Where exactness can't be kept, the block runs without checkpointing: under
``torch.compile`` (the compiled graph is not recomputed here), with no
gradient recorded, or when a block is called with more than one tensor.
"""
from __future__ import annotations

import sys
import warnings

import inspect

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.checkpoint import checkpoint

from tcl_fast.nn.bnlif import recomputed_by_caller
from tcl_fast.nn.lif import LIFMultiStep
from tcl_fast.nn.neurons import BaseNode
from tcl_fast.ops.pack import pack_spikes
from tcl_fast.ops.spike_pack import PACK_DTYPES, pack_bits, unpack_bits

__all__ = ["optimize_memory", "memory_blocks"]

_SJ_NEURON = "spikingjelly.activation_based.neuron"
_FUSE_CHOICES = (False, "auto", "kernel", "recompute")


def _is_neuron(m: nn.Module) -> bool:
    if isinstance(m, (BaseNode, LIFMultiStep)):
        return True
    return any(c.__module__.startswith(_SJ_NEURON) and c.__name__ == "BaseNode" for c in type(m).__mro__)


def _has_neuron(m: nn.Module) -> bool:
    return any(_is_neuron(s) for s in m.modules())


# ----------------------------------------------------------------- state ----
def _capture(block: nn.Module):
    """What a second run of ``block`` would change: buffer values and neuron state."""
    buffers = [(b, b.detach().clone()) for b in block.buffers()]
    neurons = []
    for m in block.modules():
        if isinstance(m, BaseNode):
            neurons.append((m, dict(v=m.v, v_seq=m.v_seq, _step_ndim=m._step_ndim)))
        elif isinstance(getattr(m, "_memories", None), dict):
            neurons.append((m, dict(m._memories)))
    return buffers, neurons


def _restore(state) -> None:
    buffers, neurons = state
    with torch.no_grad():
        for b, value in buffers:
            b.copy_(value)
    for m, saved in neurons:
        if isinstance(m, BaseNode):
            for k, v in saved.items():
                object.__setattr__(m, k, v) if k == "_step_ndim" else setattr(m, k, v)
        else:
            m._memories.clear()
            m._memories.update(saved)


# ------------------------------------------------------------ 1-bit input ----
class _Restore(torch.autograd.Function):
    """The block's input rebuilt from its bits; its gradient goes to ``link`` (the real input)."""

    @staticmethod
    def forward(ctx, bits, link, shape, dtype):
        return unpack_bits(bits, link.numel(), dtype).view(shape)

    @staticmethod
    def backward(ctx, grad):
        return None, grad, None, None


class _Link(torch.autograd.Function):
    """A zero-stride stand-in for the input (no memory) that carries its gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.new_zeros(()).expand_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def _is_spikes(x: torch.Tensor) -> bool:
    """Only 0 and +1 (a -0.0 would come back as +0.0, so it does not count)."""
    if x.dtype not in PACK_DTYPES or x.layout != torch.strided or x.numel() == 0:
        return False
    with torch.no_grad():
        return bool((x.eq(1) | (x.eq(0) & ~x.signbit())).all())


def _run_checkpointed(module: nn.Module, forward, *inputs: torch.Tensor):
    """``forward(*inputs)`` checkpointed: each 0/1 input kept as bits, the others as they are."""
    before = _capture(module)
    first = [True]

    def run(*block_inputs):
        if first[0]:
            first[0] = False
            with recomputed_by_caller():
                return forward(*block_inputs)
        after = _capture(module)  # the state the step left; put back once recomputed
        _restore(before)
        try:
            with recomputed_by_caller():
                return forward(*block_inputs)
        finally:
            _restore(after)

    args, rebuild = [], []
    for x in inputs:
        if _is_spikes(x):
            link = _Link.apply(x) if x.requires_grad else x.new_zeros(()).expand_as(x)
            args += [pack_bits(x.detach()), link]
            rebuild.append((x.shape, x.dtype))
        else:
            args.append(x)
            rebuild.append(None)
    del inputs, x

    def unpacked(*flat):
        xs, i = [], 0
        for how in rebuild:
            if how is None:
                xs.append(flat[i])
                i += 1
            else:
                xs.append(_Restore.apply(flat[i], flat[i + 1], *how))
                i += 2
        return run(*xs)

    return checkpoint(unpacked, *args, use_reentrant=False, preserve_rng_state=True)


def _should_checkpoint(module: nn.Module, args, kwargs) -> bool:
    if torch.compiler.is_compiling() or not torch.is_grad_enabled() or kwargs or len(args) != 1:
        return False
    (x,) = args
    if not isinstance(x, torch.Tensor):
        return False
    return x.requires_grad or any(p.requires_grad for p in module.parameters())


# ---------------------------------------------------------- module kinds ----
_GENERATED: dict[tuple[type, str], type] = {}


def _subclass(cls: type, kind: str, body: dict) -> type:
    """A subclass of ``cls`` with ``body``, made once, findable by pickle in this module."""
    key = (cls, kind)
    if key not in _GENERATED:
        name = f"{kind}{cls.__name__}"
        qual = f"_{name}_{len(_GENERATED)}"
        new = type(name, (cls,), dict(body, __module__=__name__, __qualname__=qual))
        setattr(sys.modules[__name__], qual, new)
        _GENERATED[key] = new
    return _GENERATED[key]


def _block_forward(self, *args, **kwargs):
    base_forward = super(type(self), self).forward
    if not _should_checkpoint(self, args, kwargs):
        return base_forward(*args, **kwargs)
    halves = getattr(self, "checkpoint_halves", None)
    if halves is not None:  # two spike boundaries inside: recompute half a block at a time
        first, second = halves()
        s = _run_checkpointed(self, first, args[0])
        return _run_checkpointed(self, second, s, args[0])
    return _run_checkpointed(self, base_forward, args[0])


def _run_modules(container: nn.Sequential, mods: list[nn.Module], x):
    """Run ``mods`` as the container would (tcl_fast's FusableSequential pairs BN with LIF)."""
    if getattr(container, "fuse_bn", False):
        from tcl_fast.models.layers import run_fusable
        return run_fusable(mods, x, container.bn_impl)
    for m in mods:
        x = m(x)
    return x


def _segments_forward(self, x):
    mods = list(self)
    for start, stop, checkpointed in self.memory_segments:
        part = mods[start:stop]
        if checkpointed and _should_checkpoint(_Segment(part), (x,), {}):
            x = _run_checkpointed(_Segment(part), lambda inp, part=part: _run_modules(self, part, inp), x)
        else:
            x = _run_modules(self, part, x)
    return x


class _Segment(nn.Module):
    """A view of consecutive modules of a Sequential (their state is captured together)."""

    def __init__(self, mods):
        super().__init__()
        object.__setattr__(self, "_parts", mods)

    def modules(self):
        for m in self._parts:
            yield from m.modules()

    def buffers(self, recurse=True):
        for m in self._parts:
            yield from m.buffers()

    def parameters(self, recurse=True):
        for m in self._parts:
            yield from m.parameters()


# ---------------------------------------------------------------- pooling ----
class _PoolKeepsShape(torch.autograd.Function):
    """2-d max or average pooling whose backward keeps the input's shape, not the input.

    Autograd saves a pooling op's input, but its backward reads only the
    input's sizes (max pooling: and the argmax indices, kept here): the
    same ATen backward is called with a zero-stride stand-in of that shape,
    so the gradient is the same tensor bit for bit while the input (a full
    tensor, or the full unpacked copy of spikes kept as bits) is not held.
    """

    @staticmethod
    def forward(ctx, x, kind, args):
        if kind == "max":
            out, idx = torch.ops.aten.max_pool2d_with_indices(x, *args)
            ctx.save_for_backward(idx)
        else:
            out = torch.ops.aten.avg_pool2d(x, *args)
        ctx.kind, ctx.args, ctx.shape = kind, args, x.shape
        return out

    @staticmethod
    def backward(ctx, grad):
        stand_in = grad.new_zeros(()).expand(ctx.shape)
        if ctx.kind == "max":
            (idx,) = ctx.saved_tensors
            g = torch.ops.aten.max_pool2d_with_indices_backward(grad.contiguous(), stand_in, *ctx.args, idx)
        else:
            g = torch.ops.aten.avg_pool2d_backward(grad.contiguous(), stand_in, *ctx.args)
        return g, None, None


def _pool_args(func, args, kwargs):
    """(kind, ATen arguments, input) for F.max_pool2d / F.avg_pool2d calls this can take, else None."""
    from torch.nn.modules.utils import _pair
    try:
        if func is F.max_pool2d:
            b = _MAX_SIG.bind(*args, **kwargs)
        elif func is F.avg_pool2d:
            b = _AVG_SIG.bind(*args, **kwargs)
        else:
            return None
    except TypeError:
        return None
    b.apply_defaults()
    a = b.arguments
    x = a["input"]
    if (not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_contiguous() or not x.requires_grad
            or a.get("return_indices")):
        return None
    k = _pair(a["kernel_size"])
    stride = _pair(a["stride"]) if a["stride"] not in (None, []) else k
    if func is F.max_pool2d:
        return "max", (list(k), list(stride), list(_pair(a["padding"])), list(_pair(a["dilation"])),
                       bool(a["ceil_mode"])), x
    return "avg", (list(k), list(stride), list(_pair(a["padding"])), bool(a["ceil_mode"]),
                   bool(a["count_include_pad"]), a["divisor_override"]), x


def _avg_pool2d_signature(input, kernel_size, stride=None, padding=0, ceil_mode=False,
                          count_include_pad=True, divisor_override=None):
    pass


_AVG_SIG = inspect.signature(_avg_pool2d_signature)
_MAX_SIG = inspect.signature(F._max_pool2d)  # F.max_pool2d's implementation, whose arguments it binds


class _PoolMode(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.max_pool2d or func is F.avg_pool2d:
            found = _pool_args(func, args, kwargs)
            if found is not None:
                kind, aten_args, x = found
                return _PoolKeepsShape.apply(x, kind, aten_args)
        return func(*args, **kwargs)


def _pool_forward(self, *args, **kwargs):
    base_forward = super(type(self), self).forward
    if torch.compiler.is_compiling() or not torch.is_grad_enabled():
        return base_forward(*args, **kwargs)
    with _PoolMode():
        return base_forward(*args, **kwargs)


def _wrap_root(self, *args, **kwargs):
    with pack_spikes():
        return super(type(self), self).forward(*args, **kwargs)


def _plan(model: nn.Module):
    """(whole blocks, (path, sequential, segments)) found below ``model``.

    In an ``nn.Sequential``, a child that holds neurons (a ResNet block) is a
    whole block; a run of other children ending at a neuron is a segment
    ``(start, stop, True)``; what is left over runs as it is ``(start, stop, False)``.
    """
    blocks, seqs = [], []

    def visit(m: nn.Module, path: str):
        children = list(m.named_children())
        if not isinstance(m, nn.Sequential):
            for name, c in children:
                visit(c, f"{path}.{name}" if path else name)
            return
        segments, start = [], 0
        for i, (name, c) in enumerate(children):
            if _is_neuron(c):
                segments.append((start, i + 1, True))
                start = i + 1
            elif _has_neuron(c) and not isinstance(c, (nn.Sequential, nn.ModuleList)):
                if start < i:
                    segments.append((start, i, False))
                segments.append((i, i + 1, False))  # runs its own (checkpointed) forward
                blocks.append((f"{path}.{name}" if path else name, c))
                start = i + 1
            elif _has_neuron(c):
                visit(c, f"{path}.{name}" if path else name)
        if start < len(children):
            segments.append((start, len(children), False))
        if any(ck for _, _, ck in segments):
            seqs.append((path, m, tuple(segments)))

    visit(model, "")
    return blocks, seqs


def memory_blocks(model: nn.Module) -> tuple[str, ...]:
    """The paths ``optimize_memory`` checkpointed in ``model`` (empty if none)."""
    return tuple(getattr(model, "memory_blocks", ()))


def optimize_memory(model: nn.Module, *, fuse_bn: bool | str = False, pack: bool = True) -> nn.Module:
    """Checkpoint ``model``'s spiking blocks at their spike boundaries, in place; returns ``model``.

    Blocks are found without a list from you: every module that holds a neuron
    and sits in an ``nn.Sequential`` (tcl_fast's ResNet blocks, SpikingJelly
    zoo ``BasicBlock``/``Bottleneck`` in its ``layerN``), and inside a
    Sequential whose children are neurons themselves (VGG-style stacks), each
    run of layers ending at a neuron. In training (gradient recorded) a block
    keeps only its input for backward, 1 bit per element when that input is
    0/1 spikes, and runs again during backward. Gradients, outputs, BatchNorm
    running statistics, ``num_batches_tracked``, dropout and neuron state
    across calls equal those of the model without it bit for bit (see this
    module's doc). Modules, parameters and state-dict keys are unchanged.

    ``fuse_bn`` also runs BN -> neuron pairs through ``bn_lif``: ``"auto"``
    (BN inside the LIF kernel where it applies: equal to the unfused model up
    to float rounding, with or without checkpointing), ``"recompute"``
    (bit-identical to the unfused model on CPU), or ``False`` (the default:
    leave the model as it is). Inside a checkpointed block fusion only shapes
    the short-lived recompute: BN folds into the LIF kernel where it can, and
    what ``"recompute"`` would recompute a second time runs as the plain
    modules (the same bits on CPU). Every 2-d max/average pooling module keeps
    only its input's shape (and max pooling's indices) for backward.
    tcl_fast models use ``set_bn_fusion``; a converted SpikingJelly model has
    each block fused by ``fuse_bn_lif`` (its stem and Sequential stacks stay
    unfused). ``pack=True`` runs the model's forward under
    ``pack_spikes()``, so spikes saved outside the blocks are bits too.

    A model already passed through ``fuse_bn_lif`` as a whole runs its blocks
    inside one traced forward, where they can't be reached: ``ValueError``;
    call ``optimize_memory`` on the unfused model instead. A model without a
    block is returned unchanged, with a warning. Under ``torch.compile`` the
    blocks run without checkpointing (no saving, exact). Pickle the state dict,
    not the module (its classes are generated in this process).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if fuse_bn is True:
        fuse_bn = "auto"
    if fuse_bn not in _FUSE_CHOICES:
        raise ValueError(f"fuse_bn must be one of {_FUSE_CHOICES}, got {fuse_bn!r}")
    if not isinstance(pack, bool):
        raise TypeError(f"pack must be a bool, got {type(pack).__name__}")
    if getattr(model, "memory_blocks", None) is not None:
        return model  # already optimised
    if type(model).__module__ == "tcl_fast.fuse" and _has_neuron(model):
        raise ValueError(
            f"optimize_memory: {type(model).__name__} was fused by fuse_bn_lif as a whole, so its blocks run "
            "inside one traced forward and can't be checkpointed; call optimize_memory on the unfused model "
            "(it fuses each block itself with fuse_bn=...)")
    blocks, seqs = _plan(model)
    if not blocks and not seqs:
        warnings.warn(f"optimize_memory: no spiking block (a module with a neuron inside an nn.Sequential, "
                      f"or a Sequential of layers and neurons) found in {type(model).__name__}; "
                      "the model is unchanged", stacklevel=2)
        return model
    tcl_model = any(hasattr(type(m), "fuse_bn") for m in model.modules())
    if fuse_bn and tcl_model:
        from tcl_fast.models.layers import set_bn_fusion
        set_bn_fusion(model, True, fuse_bn)
    elif fuse_bn:
        for _, block in blocks:
            _try_fuse(block, fuse_bn)
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for _, seq, _ in seqs for m in seq.modules()):
            # A segment is a run of a Sequential's children, not a module fuse_bn_lif can trace.
            warnings.warn(f"optimize_memory: fuse_bn={fuse_bn!r} leaves the BatchNorms inside Sequential "
                          "stacks (VGG-style segments) unfused; those segments are checkpointed as they are",
                          stacklevel=2)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    found = []  # (position in model.named_modules(), path): memory_blocks lists them in module order
    for path, block in blocks:
        block.__class__ = _subclass(type(block), "Checkpointed", {"forward": _block_forward, "fx_leaf": True})
        found.append((order[path], path))
    for path, seq, segments in seqs:
        seq.__class__ = _subclass(type(seq), "Segmented", {"forward": _segments_forward, "fx_leaf": True})
        seq.memory_segments = segments
        names = [n for n, _ in seq.named_children()]
        found += [(order[f"{path}.{names[a]}" if path else names[a]], f"{path}[{names[a]}:{names[b - 1]}]")
                  for a, b, checkpointed in segments if checkpointed]
    paths = [p for _, p in sorted(found)]
    for m in model.modules():  # pooling keeps its input's shape for backward, not the input
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) and not getattr(m, "return_indices", False):
            m.__class__ = _subclass(type(m), "ShapeSaved", {"forward": _pool_forward, "fx_leaf": True})
    if fuse_bn and not tcl_model:
        _try_fuse(model, fuse_bn)  # the rest (a stem's BN -> neuron), the blocks called as they are
    if pack:
        model.__class__ = _subclass(type(model), "SpikesPacked", {"forward": _wrap_root})
    model.memory_blocks = tuple(paths)
    return model


def _try_fuse(module: nn.Module, impl: str) -> None:
    """``fuse_bn_lif(module)`` where it applies; a module it can't trace runs unfused."""
    from tcl_fast.convert import ConversionError
    from tcl_fast.fuse import fuse_bn_lif
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nothing to fuse: stays as it is
        try:
            fuse_bn_lif(module, impl=impl)
        except ConversionError:
            pass
