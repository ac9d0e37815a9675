"""Swap the neurons of an existing SpikingJelly 2.x model for tcl_fast's, and back.

``convert_spikingjelly(model)`` replaces, in place, every SpikingJelly
``LIFNode``, ``ParametricLIFNode`` and ``IFNode`` with the
``tcl_fast.nn`` neuron of the same name and the same behaviour (parameters,
step mode, surrogate, stateful across calls until ``reset_net``). Anything it
cannot convert exactly raises ``ConversionError`` naming the module's path and
the reason, before the model is touched. ``inverse=True`` goes back.

SpikingJelly is imported only when a model is converted.
"""
from __future__ import annotations

import sys

import torch
from torch import nn

from tcl_fast import _extension
from tcl_fast.nn import neurons as tnn
from tcl_fast.nn.surrogate import UnsupportedSurrogateError, from_spikingjelly, to_spikingjelly
from tcl_fast.ops.lif import BACKENDS

_SJ_NEURON_MODULE = "spikingjelly.activation_based.neuron"
_CONVERTIBLE = ("LIFNode", "ParametricLIFNode", "IFNode")


class ConversionError(ValueError):
    """A neuron that cannot be converted exactly; the message names its path."""


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ConversionError(f"backend must be one of {BACKENDS}, got {backend!r}")
    available = {"auto": True, "torch": True, "cpp": _extension.has_cpp(),
                 "cuda": _extension.has_cuda_kernels(), "triton": _extension.has_triton()}
    if not available[backend]:
        raise ConversionError(f"backend {backend!r} is not available in this install "
                              f"(tcl_fast._C: {_extension.load_error() or 'loaded'})")


def _is_sj_neuron(module: nn.Module) -> bool:
    return any(c.__module__.startswith(_SJ_NEURON_MODULE) for c in type(module).__mro__)


def _sj_to_tcl(path: str, node: nn.Module, backend: str) -> nn.Module:
    cls = type(node)
    if not cls.__module__.startswith(_SJ_NEURON_MODULE) or cls.__name__ not in _CONVERTIBLE:
        kind = "a subclass of" if _is_sj_neuron(node) else "not"
        raise ConversionError(
            f"{path}: {cls.__module__}.{cls.__qualname__} has no exact tcl_fast equivalent "
            f"({kind} SpikingJelly's {', '.join(_CONVERTIBLE)})"
        )
    if getattr(node, "_neuron_precision", None) is not None:
        raise ConversionError(f"{path}: SpikingJelly neuron precision {node._neuron_precision} has no "
                              "tcl_fast equivalent (the kernels accumulate in float32/float64)")
    v = getattr(node, "v", 0.0)
    if isinstance(v, torch.Tensor):
        raise ConversionError(f"{path}: the neuron holds a membrane state from a previous forward; "
                              "call functional.reset_net(model) before converting")
    try:
        surrogate, alpha, beta = from_spikingjelly(node.surrogate_function)
    except UnsupportedSurrogateError as exc:
        raise ConversionError(f"{path}: {exc}") from None
    common = dict(v_threshold=node.v_threshold, v_reset=node.v_reset, detach_reset=node.detach_reset,
                  step_mode=node.step_mode, store_v_seq=node.store_v_seq, backend=backend,
                  stateful=True, surrogate=surrogate, alpha=alpha, surrogate_beta=beta)
    try:
        if cls.__name__ == "LIFNode":
            new = tnn.LIFNode(tau=node.tau, decay_input=node.decay_input, **common)
        elif cls.__name__ == "ParametricLIFNode":
            new = tnn.ParametricLIFNode(decay_input=node.decay_input, **common)
            new.w = nn.Parameter(node.w.detach().clone(), requires_grad=node.w.requires_grad)
        else:
            new = tnn.IFNode(**common)
    except (TypeError, ValueError) as exc:
        raise ConversionError(f"{path}: {exc}") from None
    return new.train(node.training)


def _tcl_to_sj(path: str, node: tnn.BaseNode) -> nn.Module:
    from spikingjelly.activation_based import neuron as sj

    try:
        sg = to_spikingjelly(node.surrogate, node.alpha, node.surrogate_beta)
    except UnsupportedSurrogateError as exc:
        raise ConversionError(f"{path}: {exc}") from None
    if isinstance(node.v, torch.Tensor):
        raise ConversionError(f"{path}: the neuron holds a membrane state from a previous forward; "
                              "call reset() (functional.reset_net) before converting")
    common = dict(v_threshold=node.v_threshold, v_reset=node.v_reset, surrogate_function=sg,
                  detach_reset=node.detach_reset, step_mode=node.step_mode,
                  store_v_seq=node.store_v_seq)
    if isinstance(node, tnn.LIFNode):
        new = sj.LIFNode(tau=node.tau, decay_input=node.decay_input, **common)
    elif isinstance(node, tnn.ParametricLIFNode):
        if node.w.dim() > 0:
            raise ConversionError(f"{path}: a tau per channel (channels={node.w.numel()}) has no "
                                  "SpikingJelly counterpart (its ParametricLIFNode learns one w)")
        new = sj.ParametricLIFNode(decay_input=node.decay_input, **common)
        new.w = nn.Parameter(node.w.detach().clone(), requires_grad=node.w.requires_grad)
    elif isinstance(node, tnn.IFNode):
        new = sj.IFNode(**common)
    else:
        raise ConversionError(f"{path}: {type(node).__qualname__} has no SpikingJelly counterpart")
    return new.train(node.training)


def _replace(model: nn.Module, plan: list[tuple[str, nn.Module]]) -> nn.Module:
    for path, new in plan:
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, name, new)
    # functional.reset_net caches each net's resettable modules: drop the
    # cache, or it would go on resetting the replaced neurons instead.
    net_config = sys.modules.get("spikingjelly.activation_based.functional.net_config")
    if plan and net_config is not None and hasattr(net_config, "invalidate_reset_cache"):
        for module in model.modules():
            net_config.invalidate_reset_cache(module)
    return model


def _plan(model: nn.Module, wanted, build) -> list[tuple[str, nn.Module]]:
    """Build every replacement first, so a refusal leaves the model untouched."""
    built: dict[int, nn.Module] = {}  # a module reached by two paths stays one module
    plan = []
    for path, module in model.named_modules(remove_duplicate=False):
        if not path or not wanted(module):
            continue
        if id(module) not in built:
            built[id(module)] = build(path, module)
        plan.append((path, built[id(module)]))
    return plan


def convert_spikingjelly(model: nn.Module, backend: str = "auto", *, inverse: bool = False) -> nn.Module:
    """Replace SpikingJelly neurons by tcl_fast's in place; return ``model``.

    Converts SpikingJelly 2.x ``LIFNode``, ``ParametricLIFNode`` and ``IFNode``
    (exact classes, either step mode) into ``tcl_fast.nn`` nodes of the same
    name, mapping tau, v_threshold, v_reset, decay_input, detach_reset, the
    PLIF weight ``w`` (a strict ``load_state_dict`` of the old weights works),
    step_mode, store_v_seq and the surrogate with its parameters. The new nodes
    are ``stateful``: like SpikingJelly's, they carry ``v`` across calls until
    ``functional.reset_net``. ``backend`` is the tcl_fast LIF backend they use.

    Raises ``ConversionError`` (a ValueError), naming the module's path and the
    reason, for any other SpikingJelly neuron, a subclass, a surrogate without
    a kernel (or ``spiking=False``), a neuron precision setting, a neuron that
    holds state, or a backend this install lacks. Nothing is replaced then.
    A model that is the neuron itself is returned converted (not in place).

    ``inverse=True`` turns tcl_fast's ``LIFNode``/``ParametricLIFNode``/``IFNode``
    back into SpikingJelly's (to check parity on your own net).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if inverse:
        plan = _plan(model, lambda m: isinstance(m, tnn.BaseNode), _tcl_to_sj)
        if isinstance(model, tnn.BaseNode):
            return _tcl_to_sj(type(model).__name__, model)
        return _replace(model, plan)
    _check_backend(backend)
    build = lambda path, m: _sj_to_tcl(path, m, backend)  # noqa: E731
    plan = _plan(model, _is_sj_neuron, build)
    if _is_sj_neuron(model):
        return build(type(model).__name__, model)
    return _replace(model, plan)
