"""Run a converted SpikingJelly model's BatchNorm -> neuron blocks through ``bn_lif``.

``fuse_bn_lif(model)`` traces the model's forward with ``torch.fx`` and, where
a multi-step BatchNorm (statistics over T*B) feeds a tcl_fast neuron and
nothing else, replaces the pair by one :func:`tcl_fast.nn.bn_lif` call, which
keeps only the BN input for backward instead of the BN input and output.
Three patterns are fused:

* ``neuron(bn(y))``
* ``neuron(bn(y) + r)``            (a ResNet block's identity shortcut)
* ``neuron(bn(y) + bn2(y2))``      (a projection shortcut; both BN outputs dropped)

Values, gradients and running statistics are those of the unfused model (bit
for bit on CPU; tests/test_convert_fuse.py checks SpikingJelly's zoo). The
model is changed in place: its modules, parameters and state-dict keys stay
as they are, only its class becomes a subclass whose ``forward`` is the traced
graph with the fused calls.
"""
from __future__ import annotations

import operator
import warnings

import torch
import torch.fx as fx
from torch import nn

from tcl_fast.convert import ConversionError
from tcl_fast.nn.bnlif import IMPLS, bn_lif
from tcl_fast.nn.lif import LIFMultiStep
from tcl_fast.nn.neurons import BaseNode

__all__ = ["fuse_bn_lif"]

_SJ_LAYER = "spikingjelly.activation_based.layer"
_SJ_NEURON = "spikingjelly.activation_based.neuron"
_SJ_BN = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d")
_TORCH_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_ADDS = {("call_function", operator.add), ("call_function", torch.add), ("call_method", "add")}


class _Tracer(fx.Tracer):
    """Keeps SpikingJelly's layers and neurons, and tcl_fast's, as leaves: their
    forwards branch on ``step_mode`` and the input's rank, which fx can't trace."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        mod = type(m).__module__
        # fx_leaf: blocks tcl_fast.optimize_memory checkpoints (their forward must stay a call)
        return (mod.startswith((_SJ_LAYER, _SJ_NEURON)) or isinstance(m, (BaseNode, LIFMultiStep))
                or getattr(m, "fx_leaf", False) or super().is_leaf_module(m, qualname))


def _seq_bn(m: nn.Module) -> nn.Module | None:
    """The BatchNorm inside ``m`` if ``m`` normalises a ``[T, B, ...]`` sequence over T*B, else None."""
    cls = type(m)
    if cls.__module__.startswith(_SJ_LAYER) and cls.__name__ in _SJ_BN:
        return m if m.step_mode == "m" else None
    if cls.__module__.startswith(_SJ_LAYER) and cls.__name__ == "SeqToANNContainer":
        children = list(m.children())
        if len(children) == 1 and type(children[0]) in _TORCH_BN:
            return children[0]
    return None


def _fusable_neuron(m: nn.Module) -> bool:
    if isinstance(m, LIFMultiStep):
        return True
    return isinstance(m, BaseNode) and m.step_mode == "m" and not m.store_v_seq


def _fused_bn_lif(y, bn, neuron, residual, y2, bn2, impl):
    """The fused block as the traced graph calls it."""
    for m in (bn, bn2, neuron):
        # The graph was traced in multi-step mode; refuse rather than run it in another.
        if m is not None and getattr(m, "step_mode", "m") != "m":
            raise RuntimeError(f"fuse_bn_lif: {type(m).__name__} was switched to step_mode={m.step_mode!r} "
                               "after fusion; the fused model runs multi-step only (fuse again after "
                               "switching, or keep an unfused copy)")
    bn._check_input_dim(y.flatten(0, 1))  # the same rank check as the unfused BN
    shortcut = None
    if bn2 is not None:
        bn2._check_input_dim(y2.flatten(0, 1))
        shortcut = (y2, bn2)
    return bn_lif(y, bn, neuron, residual, shortcut=shortcut, impl=impl)


def _only_user(node: fx.Node, user: fx.Node) -> bool:
    return list(node.users) == [user]


def _bn_input(node, user, modules):
    """``(y, bn path)`` if ``node`` is a T*B BatchNorm call whose only user is ``user``."""
    if not (isinstance(node, fx.Node) and node.op == "call_module" and _only_user(node, user)):
        return None
    m = modules[node.target]
    bn = _seq_bn(m)
    if bn is None or len(node.args) != 1 or node.kwargs:
        return None
    return node.args[0], node.target if bn is m else node.target + ".0"


def _match(neuron: fx.Node, modules):
    """``(y, bn, residual, y2, bn2, nodes to drop)`` for a fusable block ending at ``neuron``, else None."""
    if len(neuron.args) != 1 or neuron.kwargs:
        return None
    (z,) = neuron.args
    hit = _bn_input(z, neuron, modules)
    if hit is not None:
        return hit[0], hit[1], None, None, None, [z]
    if not (isinstance(z, fx.Node) and (z.op, z.target) in _ADDS and len(z.args) == 2
            and not z.kwargs and _only_user(z, neuron)):
        return None
    a, b = z.args
    ha, hb = _bn_input(a, z, modules), _bn_input(b, z, modules)
    if ha is not None and hb is not None:  # projection shortcut
        return ha[0], ha[1], None, hb[0], hb[1], [z, a, b]
    # identity shortcut; float addition commutes exactly, so either side may be the BN
    for hit, bn_node, other in ((ha, a, b), (hb, b, a)):
        if hit is not None and isinstance(other, fx.Node):
            return hit[0], hit[1], other, None, None, [z, bn_node]
    return None


def fuse_bn_lif(model: nn.Module, impl: str = "auto") -> nn.Module:
    """Fuse every multi-step BatchNorm -> tcl_fast neuron block of ``model``; returns ``model``.

    Use on a model whose neurons are tcl_fast's (``convert_spikingjelly``
    output, or one built with ``tcl_fast.nn`` neurons and SpikingJelly layers)
    in multi-step mode (``functional.set_step_mode(model, "m")``). Fused: a
    SpikingJelly ``layer.BatchNorm1d/2d/3d`` in step mode ``"m"`` or a
    ``layer.SeqToANNContainer`` holding only an ``nn.BatchNorm1d/2d/3d``,
    whose output goes only to a tcl_fast ``LIFNode``/``ParametricLIFNode``/
    ``IFNode`` in multi-step mode without ``store_v_seq`` (or a
    ``LIFMultiStep``), directly, through ``+ r``, or through ``+ bn2(y2)``.
    Everything else (single-step layers, per-step BN, SpikingJelly neurons,
    BN outputs used twice) is left as it is. A stateful node that holds a
    membrane from an earlier call when a forward starts runs that block
    unfused; ``v`` is kept as the unfused node keeps it.

    The model is changed in place and returned; its modules, parameters,
    buffers and state-dict keys are untouched (the original state dict loads
    strictly), and ``model.bn_lif_blocks`` lists the fused neurons' paths.
    Its forward is now the fx trace taken in multi-step mode: switching the
    step mode afterwards makes a fused block raise. Python control flow that
    depends on tensor values can't be traced: ``ConversionError`` says why;
    fuse the traceable submodules instead (``fuse_bn_lif(model.layer1)``).
    A model with nothing to fuse is returned unchanged, with a warning.
    Pickle the state dict, not the fused module (its class is generated).

    ``impl`` is ``bn_lif``'s: ``"auto"`` folds the BN of a block without a
    projection shortcut into the LIF kernel (equal to the unfused model up to
    float rounding) and recomputes the others; ``"recompute"`` is
    bit-identical to the unfused model on CPU.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if impl not in IMPLS:
        raise ValueError(f"fuse_bn_lif: impl must be one of {IMPLS}, got {impl!r}")
    if getattr(type(model), "bn_lif_blocks", None) is not None:
        return model  # already fused
    try:
        graph = _Tracer().trace(model)
    except Exception as exc:  # fx raises TraceError, TypeError, ... depending on what it met
        raise ConversionError(
            f"fuse_bn_lif: torch.fx cannot trace {type(model).__name__}.forward ({type(exc).__name__}: {exc}); "
            "fuse its traceable submodules instead, e.g. fuse_bn_lif(model.layer1)") from exc
    modules = {name: model.get_submodule(name) for name, _ in model.named_modules(remove_duplicate=False)}
    fused = []
    for node in list(graph.nodes):
        if node.op != "call_module" or not _fusable_neuron(modules[node.target]):
            continue
        hit = _match(node, modules)
        if hit is None:
            continue
        y, bn_path, residual, y2, bn2_path, dropped = hit
        with graph.inserting_before(node):
            bn = graph.get_attr(bn_path)
            bn2 = graph.get_attr(bn2_path) if bn2_path is not None else None
            neuron = graph.get_attr(node.target)
            new = graph.call_function(_fused_bn_lif, (y, bn, neuron, residual, y2, bn2, impl))
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        for d in dropped:  # users first: the add before the BNs it reads
            graph.erase_node(d)
        fused.append(node.target)
    if not fused:
        warnings.warn(f"fuse_bn_lif: no multi-step BatchNorm -> tcl_fast neuron block in "
                      f"{type(model).__name__}; the model is unchanged", stacklevel=2)
        return model
    graph.lint()
    code = graph.python_code(root_module="self")
    scope = dict(code.globals)
    exec(compile(code.src, f"<fuse_bn_lif {type(model).__name__}>", "exec"), scope)  # noqa: S102
    cls = type(model)
    fused_cls = type(f"BNLIFFused{cls.__name__}", (cls,), {
        "forward": scope["forward"], "bn_lif_blocks": tuple(fused), "__module__": __name__,
        "__doc__": f"{cls.__name__} with {len(fused)} BatchNorm -> neuron blocks run by bn_lif "
                   "(tcl_fast.fuse_bn_lif).",
    })
    model.__class__ = fused_cls
    return model
