"""NIR export and import: ``to_nir`` and ``from_nir`` (docs/deploy.md).

NIR (the Neuromorphic Intermediate Representation, PyPI ``nir``) describes a
spiking network as a graph of continuous-time nodes. tcl_fast's neurons are
discrete (one Euler step per time step), so the mapping fixes a step ``dt``:

* LIF with decay ``k = 1/tau`` (tcl_fast), hard reset to ``v_r``::

      decay_input=True :  h = v + k * (x - (v - v_r))
      decay_input=False:  h = v - k * (v - v_r) + x

  is one Euler step of NIR's ``tau_n dv/dt = (v_leak - v) + r I`` with
  ``tau_n = dt / k``, ``v_leak = v_reset = v_r`` and ``r = 1``
  (decay_input=True) or ``r = 1 / k`` (decay_input=False).
* IF (``k = 0``: ``h = v + x``) is NIR's ``dv/dt = r I`` with ``r = 1 / dt``.

SpikingJelly 2.0's exporter uses the same mapping; the default ``dt = 1e-4``
is snnTorch's, whose reader assumes it. What NIR cannot express (a soft reset,
per-step BatchNorm, max pooling, ...) is refused with ``NIRExportError`` naming
the module; nothing is exported as something it is not.

``from_nir`` builds a multi-step module (time-first ``[T, B, ...]``) whose
neurons run on tcl_fast's fused kernels, so a graph from another framework
trains here.
"""
from __future__ import annotations

import math
import os
import re
from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from tcl_fast.models.layers import SeqToANN, SpikingNet
from tcl_fast.models.resnet import BasicBlock
from tcl_fast.nn import BNLIF, IFNode, LIFMultiStep, LIFNode, ParametricLIFNode
from tcl_fast.nn.neurons import BaseNode
from tcl_fast.ops.lif import BACKENDS, NeuronSpec, lif_multistep

__all__ = ["DEFAULT_DT", "POOLINGS", "NIRExportError", "NIRImportError", "to_nir", "from_nir", "NIRNetwork",
           "NIRNeuron", "import_layer"]

DEFAULT_DT = 1e-4  # seconds per time step; snnTorch's reader assumes this value

_NEURONS = (LIFMultiStep, BaseNode)


class NIRExportError(ValueError):
    """The model holds something NIR cannot express (the message names the module)."""


class NIRImportError(ValueError):
    """The NIR graph holds something tcl_fast cannot run (the message names the node)."""


def _nir():
    try:
        import nir
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError("NIR export/import needs the 'nir' package: pip install nir") from exc
    return nir


def _check_dt(dt) -> float:
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not math.isfinite(dt) or dt <= 0:
        raise ValueError(f"dt must be a positive finite number of seconds, got {dt!r}")
    return float(dt)


# ======================================================================== export
def _neuron_decay(m: nn.Module) -> torch.Tensor | float:
    """k = 1/tau of a tcl_fast neuron: a float, or a tensor (learnt, maybe per channel)."""
    if isinstance(m, LIFMultiStep):
        k = m.decay()
    elif isinstance(m, ParametricLIFNode):
        k = m.w.sigmoid()
    elif isinstance(m, LIFNode):
        k = 1.0 / m.tau
    elif isinstance(m, IFNode):
        k = 0.0
    else:  # a BaseNode subclass we do not know: its decay may depend on the input
        raise NIRExportError(f"{type(m).__name__} is not one of tcl_fast's LIF/IF neurons")
    if isinstance(k, torch.Tensor):
        k = k.detach().double()
        if k.dim() > 0:
            k = k.reshape(-1)  # per channel: [C]
        else:
            k = float(k)
    return k


class _Exporter:
    """Walks a model with a one-sample dummy input (for the shapes), emitting NIR nodes."""

    def __init__(self, dt: float, dtype: np.dtype, pooling: str):
        self.nir = _nir()
        self.dt = dt
        self.dtype = dtype
        self.pooling = pooling
        # pooling="sum": the 1/(kernel area) of each average pool, owed to the next weight layer
        self.pending_scale = 1.0
        self.nodes: OrderedDict = OrderedDict()
        self.edges: list[tuple[str, str]] = []
        self.consumers: dict[str, int] = {}

    # ------------------------------------------------------------ bookkeeping
    def add(self, name: str, node, srcs: list[str]) -> list[str]:
        base = re.sub(r"[^0-9A-Za-z_]", "_", name) or "node"
        name, i = base, 1
        while name in self.nodes:
            i += 1
            name = f"{base}_{i}"
        self.nodes[name] = node
        for s in srcs:
            self.edges.append((s, name))
            self.consumers[s] = self.consumers.get(s, 0) + 1
        return [name]

    def array(self, t) -> np.ndarray:
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().double().numpy()
        return np.asarray(t, dtype=np.float64).astype(self.dtype)

    # ------------------------------------------------------------ the walk
    def walk(self, m: nn.Module, path: str, x: torch.Tensor, srcs: list[str]):
        """Emit ``m`` applied to the per-sample tensor ``x`` ([1, ...]) fed by ``srcs``;
        return ``(m(x), the nodes whose sum is its output)``."""
        where = path or type(m).__name__
        if isinstance(m, SpikingNet):
            raise NIRExportError(f"{where}: a SpikingNet inside another model is not supported")
        if isinstance(m, BNLIF):
            if isinstance(m.bn, nn.ModuleList):
                raise NIRExportError(
                    f"{where} ({type(m).__name__}): per-step BatchNorm (one BN module per time step, BNTT) "
                    "differs at every step, and a NIR graph is the same at every step; train with "
                    "statistics over T*B (stats='tb') to export")
            x, srcs = self.walk(m.bn, f"{path}.bn", x, srcs)
            return self.walk(m.lif, f"{path}.lif", x, srcs)
        if isinstance(m, BasicBlock):
            return self.basic_block(m, path, x, srcs)
        if isinstance(m, SeqToANN):
            return self.walk(m.module, f"{path}.module" if path else "module", x, srcs)
        if isinstance(m, nn.Sequential):
            for name, child in m.named_children():
                x, srcs = self.walk(child, f"{path}.{name}" if path else name, x, srcs)
            return x, srcs
        if isinstance(m, _NEURONS):
            return self.neuron(m, where, x, srcs)
        if _is_spikingjelly_neuron(m):
            raise NIRExportError(
                f"{where} ({type(m).__name__}): a SpikingJelly neuron; run tcl_fast.convert_spikingjelly(model) "
                "first (or use SpikingJelly's own NIR exporter)")
        leaf = self.leaf(m, where, x, srcs)
        if leaf is not None:
            return leaf
        raise NIRExportError(
            f"{where} ({type(m).__name__}): no NIR mapping. to_nir exports tcl_fast.models and "
            "sequential models (nn.Sequential / SpikingJelly SeqToANNContainer) of Conv2d, Linear, "
            "BatchNorm, AvgPool2d, AdaptiveAvgPool2d, Flatten, Dropout, Identity and tcl_fast's "
            "LIF/IF neurons")

    def basic_block(self, m: BasicBlock, path: str, x, srcs):
        h, s = self.walk(m.conv1, f"{path}.conv1", x, srcs)
        h, s = self.walk(m.lif1, f"{path}.lif1", h, s)
        h, s = self.walk(m.conv2, f"{path}.conv2", h, s)
        if isinstance(m.shortcut, nn.Identity):
            sc, sc_srcs = x, list(srcs)
        else:
            sc, sc_srcs = self.walk(m.shortcut, f"{path}.shortcut", x, srcs)
        # NIR sums the inputs arriving on several edges: the residual addition is an edge.
        return self.walk(m.lif2, f"{path}.lif2", h + sc, s + sc_srcs)

    def neuron(self, m: nn.Module, where: str, x: torch.Tensor, srcs: list[str]):
        nir = self.nir
        if m.v_reset is None:
            raise NIRExportError(
                f"{where} ({type(m).__name__}): soft (subtractive) reset; NIR's LIF/IF reset the membrane to "
                "v_reset and have no field for subtracting the threshold. Train with a hard reset "
                "(v_reset=0.0, the default) to export")
        self.settle(where)
        k = _neuron_decay(m)
        shape = tuple(x.shape[1:])
        full = lambda v: np.full(shape, v, dtype=np.float64).astype(self.dtype)  # noqa: E731
        v_th, v_r = full(m.v_threshold), full(m.v_reset)
        # The module's path in the model, so that counters (tcl_fast.inference_cost) find it.
        meta = {"module": where}
        if isinstance(k, float) and k == 0.0:  # IF: no leak
            node = nir.IF(r=full(1.0 / self.dt), v_threshold=v_th, v_reset=v_r, metadata=meta)
            return _spike_stand_in(x), self.add(where, node, srcs)
        if isinstance(k, torch.Tensor):  # one decay per channel: dim 0 of the per-sample shape
            if len(shape) == 0 or shape[0] != k.numel():
                raise NIRExportError(f"{where}: {k.numel()} per-channel time constants but the input is {shape}")
            k_arr = np.broadcast_to(k.numpy().reshape(-1, *([1] * (len(shape) - 1))), shape).astype(np.float64)
        else:
            k_arr = np.full(shape, k, dtype=np.float64)
        if np.any(k_arr <= 0) or np.any(k_arr > 1):
            raise NIRExportError(f"{where}: decay 1/tau must lie in (0, 1], got {k_arr.min()}..{k_arr.max()}")
        tau = (self.dt / k_arr).astype(self.dtype)
        r = np.ones(shape) if m.decay_input else 1.0 / k_arr
        node = nir.LIF(tau=tau, r=r.astype(self.dtype), v_leak=v_r.copy(), v_threshold=v_th, v_reset=v_r,
                       metadata=meta)
        return _spike_stand_in(x), self.add(where, node, srcs)

    def pool(self, where: str, kernel, stride, padding, srcs: list[str]) -> list[str]:
        nir = self.nir
        if self.pooling == "avg":
            node = nir.AvgPool2d(kernel_size=np.array(kernel), stride=np.array(stride), padding=np.array(padding))
            return self.add(where, node, srcs)
        if padding != (0, 0):
            raise NIRExportError(f"{where}: a padded average pool cannot be a sum pool (the border windows are "
                                 "smaller); export with pooling='avg'")
        # A sum pool (what spiking hardware does) and the 1/area moved into the next weights: exact
        # up to rounding, and readers that map no AvgPool2d (Norse) read it.
        self.pending_scale /= kernel[0] * kernel[1]
        self.pending_at = where
        node = nir.SumPool2d(kernel_size=np.array(kernel), stride=np.array(stride), padding=np.array(padding))
        return self.add(where, node, srcs)

    def owed(self, weight: torch.Tensor) -> torch.Tensor:
        """``weight`` times the scale the sum pools before it still owe (then nothing is owed)."""
        scale, self.pending_scale = self.pending_scale, 1.0
        return weight.detach().double() * scale

    def settle(self, where: str) -> None:
        """A node that is not linear follows a sum pool: the scale cannot move past it."""
        if self.pending_scale != 1.0:
            raise NIRExportError(
                f"{where}: follows the sum pool {self.pending_at!r}, whose 1/area has no weight layer to go "
                "into before this node; export with pooling='avg'")

    def fold_bn(self, bn: nn.modules.batchnorm._BatchNorm, srcs: list[str]) -> bool:
        """Fold an eval-mode BN into the conv/linear node feeding it alone; False if it can't be."""
        if len(srcs) != 1 or self.consumers.get(srcs[0], 0) != 0:
            return False
        node = self.nodes[srcs[0]]
        if not isinstance(node, (self.nir.Conv2d, self.nir.Affine, self.nir.Linear)):
            return False
        scale, shift = _bn_scale_shift(bn)
        w = node.weight.astype(np.float64)
        bias = np.zeros(w.shape[0]) if isinstance(node, self.nir.Linear) else node.bias.astype(np.float64)
        if w.shape[0] != scale.size:
            return False
        w = w * scale.reshape(-1, *([1] * (w.ndim - 1)))
        bias = bias * scale + shift
        if isinstance(node, self.nir.Conv2d):
            node.weight, node.bias = w.astype(self.dtype), bias.astype(self.dtype)
        else:
            self.nodes[srcs[0]] = self.nir.Affine(weight=w.astype(self.dtype), bias=bias.astype(self.dtype))
        return True

    def leaf(self, m: nn.Module, where: str, x: torch.Tensor, srcs: list[str]):
        nir = self.nir
        if isinstance(m, (nn.Identity, nn.Dropout)):  # Dropout is the identity in eval mode
            return x, srcs
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.training:
                raise NIRExportError(f"{where}: BatchNorm in training mode; call model.eval() before exporting")
            y = _torch_forward(m, x)
            if self.fold_bn(m, srcs):
                return y, srcs
            self.settle(where)
            scale, shift = _bn_scale_shift(m)
            if x.dim() == 4:  # [1, C, H, W]: a depthwise 1x1 convolution is the per-channel affine
                node = nir.Conv2d(input_shape=tuple(x.shape[2:]), weight=self.array(scale.reshape(-1, 1, 1, 1)),
                                  stride=1, padding=0, dilation=1, groups=scale.size, bias=self.array(shift))
            elif x.dim() == 2:
                node = nir.Affine(weight=self.array(np.diag(scale)), bias=self.array(shift))
            else:
                raise NIRExportError(f"{where}: BatchNorm on a {x.dim() - 1}-dim sample has no NIR mapping")
            return y, self.add(where, node, srcs)
        if not isinstance(m, (nn.Conv2d, nn.Linear, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten)):
            if isinstance(m, (nn.MaxPool2d, nn.AdaptiveMaxPool2d)):
                raise NIRExportError(f"{where} ({type(m).__name__}): NIR has no max pooling; use average pooling")
            return None
        y = _torch_forward(m, x)
        if isinstance(m, nn.Conv2d):
            if m.padding_mode != "zeros":
                raise NIRExportError(f"{where}: Conv2d with padding_mode={m.padding_mode!r}; NIR pads with zeros")
            bias = m.bias if m.bias is not None else torch.zeros(m.out_channels)
            node = nir.Conv2d(input_shape=tuple(x.shape[2:]), weight=self.array(self.owed(m.weight)), stride=m.stride,
                              padding=m.padding, dilation=m.dilation, groups=m.groups, bias=self.array(bias))
            return y, self.add(where, node, srcs)
        if isinstance(m, nn.Linear):
            if m.bias is None:
                node = nir.Linear(weight=self.array(self.owed(m.weight)))
            else:
                node = nir.Affine(weight=self.array(self.owed(m.weight)), bias=self.array(m.bias))
            return y, self.add(where, node, srcs)
        if isinstance(m, nn.AvgPool2d):
            if m.ceil_mode or m.divisor_override is not None or (_pair(m.padding) != (0, 0) and not m.count_include_pad):
                raise NIRExportError(f"{where}: AvgPool2d with ceil_mode, divisor_override or count_include_pad=False "
                                     "has no NIR mapping")
            stride = m.stride if m.stride is not None else m.kernel_size
            return y, self.pool(where, _pair(m.kernel_size), _pair(stride), _pair(m.padding), srcs)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            h, w = x.shape[2:]
            oh, ow = _pair(m.output_size)
            oh, ow = oh or h, ow or w
            if h % oh or w % ow:
                raise NIRExportError(f"{where}: AdaptiveAvgPool2d from {h}x{w} to {oh}x{ow} has uneven windows; "
                                     "NIR's AvgPool2d needs one kernel size")
            k = (h // oh, w // ow)
            return y, self.pool(where, k, k, (0, 0), srcs)
        if isinstance(m, nn.Flatten):
            # NIR's dims exclude the batch dimension (SpikingJelly's and snnTorch's exporters shift them alike).
            start = m.start_dim - 1 if m.start_dim > 0 else m.start_dim
            end = m.end_dim - 1 if m.end_dim > 0 else m.end_dim
            if m.start_dim == 0:
                raise NIRExportError(f"{where}: Flatten(start_dim=0) would merge the batch dimension")
            node = nir.Flatten(input_type={"input": np.array(x.shape[1:])}, start_dim=start, end_dim=end)
            return y, self.add(where, node, srcs)
        return None


def _torch_forward(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``m`` on one per-sample step ``x`` through its torch.nn class's forward: SpikingJelly's
    layers (subclasses of those) in multi-step mode would expect ``[T, B, ...]`` instead."""
    for cls in type(m).__mro__:
        if cls.__module__.startswith("torch.nn") and "forward" in vars(cls):
            return cls.forward(m, x)
    return m(x)


def _spike_stand_in(x: torch.Tensor) -> torch.Tensor:
    """A stand-in for a neuron's output, for the shapes only (the walk runs no neuron)."""
    return torch.zeros_like(x)


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm) -> tuple[np.ndarray, np.ndarray]:
    """Eval-mode BN as ``y = x * scale + shift`` per channel (float64)."""
    if bn.running_mean is None or bn.running_var is None:
        raise NIRExportError(f"{type(bn).__name__} without running statistics (track_running_stats=False) "
                             "uses batch statistics at inference, which NIR cannot express")
    mean = bn.running_mean.detach().cpu().double().numpy()
    var = bn.running_var.detach().cpu().double().numpy()
    scale = 1.0 / np.sqrt(var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().cpu().double().numpy()
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().cpu().double().numpy()
    return scale, shift


def _is_spikingjelly_neuron(m: nn.Module) -> bool:
    return any(c.__module__.startswith("spikingjelly") and c.__name__ == "BaseNode" for c in type(m).__mro__)


POOLINGS = ("avg", "sum")


def to_nir(model: nn.Module, input_shape, *, dt: float = DEFAULT_DT, dtype=np.float32, pooling: str = "avg",
           metadata: dict | None = None):
    """Export ``model`` (eval mode) to a ``nir.NIRGraph`` for one sample per time step.

    ``input_shape`` is one sample's shape at one step, e.g. ``(1, 8, 8)`` for
    digits. ``model`` is a tcl_fast.models network (its classifier output, one
    logit vector per step, is the graph's output; the contrastive projection head
    is left out: it plays no part in inference) or a sequential model of
    per-step layers and tcl_fast neurons (e.g. a converted SpikingJelly
    ``nn.Sequential``). Eval-mode BatchNorm is folded into the convolution or
    linear layer feeding it, or exported as a per-channel affine (a depthwise
    1x1 Conv2d / diagonal Affine) where nothing can take it. ``dt`` is the
    length of one step in seconds (see the module docstring); ``dtype`` the
    arrays' dtype (float32; float64 keeps BN folding exact to ~1e-16).
    ``pooling="sum"`` writes each average pool as NIR's SumPool2d and moves its
    1/area into the next convolution or linear layer (spiking hardware sums;
    Norse's reader maps SumPool2d but not AvgPool2d).
    """
    nir = _nir()
    dt = _check_dt(dt)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    try:
        input_shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise ValueError(f"input_shape must be a tuple of ints (one sample at one step), got {input_shape!r}") from None
    if not input_shape or any(s < 1 for s in input_shape):
        raise ValueError(f"input_shape must be positive ints, got {input_shape}")
    if model.training:
        raise NIRExportError("the model is in training mode: call model.eval() first (BatchNorm must use its "
                             "running statistics, which is what gets folded)")
    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    ex = _Exporter(dt, np.dtype(dtype), pooling)
    x = torch.zeros(1, *input_shape, dtype=torch.float64)
    srcs = ex.add("input", nir.Input(input_type={"input": np.array(input_shape)}), [])
    # The walk evaluates each layer on the dummy input for its shape; on a float64 copy
    # so that the model's own dtype and device don't matter.
    import copy

    work = copy.deepcopy(model).to("cpu", torch.float64)
    with torch.no_grad():
        if isinstance(work, SpikingNet):
            x, srcs = ex.walk(work.stem, "stem", x, srcs)
            x, srcs = ex.walk(work.body, "body", x, srcs)
            x, srcs = ex.walk(work.classifier, "classifier", x, srcs)
        else:
            x, srcs = ex.walk(work, "", x, srcs)
    ex.settle("output")
    ex.add("output", nir.Output(output_type={"output": np.array(x.shape[1:])}), srcs)
    meta = {"exporter": "tcl_fast", "dt": dt}
    meta.update(metadata or {})
    graph = nir.NIRGraph(nodes=dict(ex.nodes), edges=ex.edges, metadata=meta, type_check=False)
    try:
        graph.infer_types()
    except Exception:  # pragma: no cover - NIR's type inference is best effort for some nodes
        pass
    return graph


# ======================================================================== import
class NIRNeuron(nn.Module):
    """A NIR LIF or IF node on tcl_fast's fused kernel, over ``[T, B, ...]``.

    ``decay`` is ``dt / tau`` (0 for IF), ``input_scale`` the input's weight per
    step (``dt * r / tau``, ``dt * r`` for IF) unless it equals the decay
    (``decay_input=True``) or 1; per-neuron values are buffers broadcasting over
    the neuron dims.
    """

    def __init__(self, decay, input_scale, spec: NeuronSpec, backend: str = "auto"):
        super().__init__()
        self.spec = spec
        self.backend = backend
        if isinstance(decay, torch.Tensor):
            self.register_buffer("decay", decay)
        else:
            self.decay = float(decay)
        if isinstance(input_scale, torch.Tensor):
            self.register_buffer("input_scale", input_scale)
        else:
            self.input_scale = input_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_scale is not None:
            x = x * self.input_scale
        decay = self.decay
        if isinstance(decay, torch.Tensor):
            decay = decay.to(x.dtype)
        return lif_multistep(x, None, decay=decay, spec=self.spec, backend=self.backend)

    def extra_repr(self) -> str:
        k = self.decay
        k = f"{float(k.min()):.4g}..{float(k.max()):.4g}" if isinstance(k, torch.Tensor) else f"{k:.4g}"
        return (f"decay={k}, v_threshold={self.spec.v_threshold}, v_reset={self.spec.v_reset}, "
                f"decay_input={self.spec.decay_input}, scaled_input={self.input_scale is not None}")


class _PerStep(nn.Module):
    """A per-sample layer applied to ``[T, B, ...]`` by merging T and B."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B = x.shape[:2]
        y = self.module(x.flatten(0, 1))
        return y.reshape(T, B, *y.shape[1:])


class NIRNetwork(nn.Module):
    """The module ``from_nir`` builds: NIR nodes in topological order, multi-step.

    ``forward(x, T=None)``: ``x`` is ``[T, B, *input]`` (one sample per step),
    or ``[B, *input]`` with ``T`` (the same input at every step, direct
    encoding). Returns the output node's ``[T, B, ...]``. ``record=True`` also
    returns each neuron node's spikes ``{name: [T, B, ...]}``.
    """

    def __init__(self, layers: "OrderedDict[str, nn.Module]", inputs: dict[str, list[str]], input_name: str,
                 output_name: str, input_shape: tuple[int, ...]):
        super().__init__()
        self.layers = nn.ModuleDict(layers)
        self.order = list(layers)
        self.inputs = inputs
        self.input_name, self.output_name = input_name, output_name
        self.input_shape = tuple(input_shape)

    def neuron_names(self) -> list[str]:
        return [n for n in self.order if isinstance(self.layers[n], NIRNeuron)]

    def forward(self, x: torch.Tensor, T: int | None = None, record: bool = False):
        if T is not None and (isinstance(T, bool) or not isinstance(T, int) or T < 1):
            raise ValueError(f"T must be a positive int, got {T!r}")
        n = len(self.input_shape)
        if x.dim() == n + 1:
            if T is None:
                raise ValueError(f"input {tuple(x.shape)} is one step [B, *input]; pass T (the number of steps)")
            x = x.unsqueeze(0).expand(T, *x.shape)
        elif x.dim() == n + 2:
            if T is not None:
                x = x[:T]
        else:
            raise ValueError(f"expected [T, B, *{self.input_shape}] or [B, *{self.input_shape}] input, "
                             f"got {tuple(x.shape)}")
        values = {self.input_name: x}
        spikes = {}
        for name in self.order:
            srcs = self.inputs[name]
            h = values[srcs[0]]
            for s in srcs[1:]:
                h = h + values[s]
            values[name] = self.layers[name](h)
            if record and isinstance(self.layers[name], NIRNeuron):
                spikes[name] = values[name]
        srcs = self.inputs[self.output_name]  # the Output node sums its inputs, like any node
        out = values[srcs[0]]
        for s in srcs[1:]:
            out = out + values[s]
        return (out, spikes) if record else out


def _uniform(arr, what: str, node: str) -> float:
    a = np.asarray(arr, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise NIRImportError(f"node {node!r}: {what} is empty")
    if not np.allclose(a, a[0], rtol=1e-6, atol=1e-9):
        raise NIRImportError(f"node {node!r}: {what} differs between neurons ({a.min()}..{a.max()}); "
                             "tcl_fast's neurons share one value per layer")
    return float(a[0])


def _per_neuron(arr) -> float | torch.Tensor:
    """One float where all neurons share the value, else a float64 tensor of the node's shape."""
    a = np.asarray(arr, dtype=np.float64)
    flat = a.reshape(-1)
    if flat.size and np.all(flat == flat[0]):
        return float(flat[0])
    return torch.from_numpy(a.copy())


def _import_neuron(nir, name: str, node, dt: float, backend: str, surrogate: str, alpha) -> NIRNeuron:
    v_th = _uniform(node.v_threshold, "v_threshold", name)
    v_r = _uniform(node.v_reset, "v_reset", name)
    r = np.asarray(node.r, dtype=np.float64)
    if isinstance(node, nir.IF):
        decay = 0.0
        scale = dt * r
        decay_input = False
    else:
        v_leak = np.asarray(node.v_leak, dtype=np.float64)
        if not np.allclose(v_leak, v_r, rtol=1e-6, atol=1e-9):
            raise NIRImportError(
                f"node {name!r} (LIF): v_leak ({v_leak.reshape(-1)[0]}) differs from v_reset ({v_r}); "
                "tcl_fast's LIF leaks towards its reset value")
        tau = np.asarray(node.tau, dtype=np.float64)
        if np.any(tau <= 0) or not np.all(np.isfinite(tau)):
            raise NIRImportError(f"node {name!r} (LIF): tau must be positive and finite")
        k = dt / tau
        if np.any(k > 1):
            raise NIRImportError(f"node {name!r} (LIF): tau = {tau.min()} s is shorter than the step dt = {dt} s "
                                 "(the Euler step would overshoot); pass the graph's dt to from_nir")
        decay = k
        scale = k * r
        decay_input = bool(np.allclose(r, 1.0, rtol=1e-6, atol=0))
        decay = _per_neuron(decay)
    if decay_input:
        input_scale = None
    else:
        s = _per_neuron(scale)
        # 1 up to the rounding of float32 arrays (dt/tau times tau/dt): no scale at all
        input_scale = None if (not isinstance(s, torch.Tensor) and abs(s - 1.0) < 1e-6) else s
    spec = NeuronSpec(v_th, v_r, decay_input, False, surrogate, alpha)
    return NIRNeuron(decay, input_scale, spec, backend)


def import_layer(nir, name: str, node) -> nn.Module:
    """The per-sample torch layer of a NIR node that is not a neuron (float32 weights)."""

    def t(a):
        return torch.from_numpy(np.asarray(a, dtype=np.float32).copy())

    if isinstance(node, nir.Affine):
        w = np.asarray(node.weight)
        m = nn.Linear(w.shape[1], w.shape[0], bias=node.bias is not None)
        m.weight.data = t(w)
        if node.bias is not None:
            m.bias.data = t(node.bias)
        return m
    if isinstance(node, nir.Linear):
        w = np.asarray(node.weight)
        m = nn.Linear(w.shape[1], w.shape[0], bias=False)
        m.weight.data = t(w)
        return m
    if isinstance(node, nir.Conv2d):
        w = np.asarray(node.weight)
        padding = node.padding if isinstance(node.padding, str) else _pair_tuple(node.padding)
        m = nn.Conv2d(w.shape[1] * int(node.groups), w.shape[0], tuple(w.shape[2:]), stride=_pair_tuple(node.stride),
                      padding=padding, dilation=_pair_tuple(node.dilation), groups=int(node.groups), bias=True)
        m.weight.data = t(w)
        m.bias.data = t(node.bias) if node.bias is not None else torch.zeros(w.shape[0])
        return m
    if isinstance(node, nir.AvgPool2d):
        return nn.AvgPool2d(_pair_tuple(node.kernel_size), _pair_tuple(node.stride), _pair_tuple(node.padding))
    if isinstance(node, nir.SumPool2d):
        k = _pair_tuple(node.kernel_size)
        return _SumPool2d(k, _pair_tuple(node.stride), _pair_tuple(node.padding))
    if isinstance(node, nir.Flatten):
        # NIR's dims exclude the batch dimension; the module sees [N, ...].
        start = node.start_dim + 1 if node.start_dim >= 0 else node.start_dim
        end = node.end_dim + 1 if node.end_dim >= 0 else node.end_dim
        return nn.Flatten(start, end)
    if isinstance(node, nir.Scale):
        return _Scale(t(node.scale))
    raise NIRImportError(f"node {name!r}: {type(node).__name__} has no tcl_fast mapping")


def _pair_tuple(v) -> tuple[int, ...]:
    a = np.asarray(v).reshape(-1)
    if a.size == 1:
        return (int(a[0]), int(a[0]))
    return tuple(int(i) for i in a)


class _SumPool2d(nn.Module):
    def __init__(self, kernel, stride, padding):
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def forward(self, x):
        pooled = nn.functional.avg_pool2d(x, self.kernel, self.stride, self.padding, count_include_pad=True)
        return pooled * (self.kernel[0] * self.kernel[1])


class _Scale(nn.Module):
    def __init__(self, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale)

    def forward(self, x):
        return x * self.scale.to(x.dtype)


def from_nir(graph, *, dt: float | None = None, backend: str = "auto", surrogate: str = "sigmoid",
             alpha: float | None = None) -> NIRNetwork:
    """Build a multi-step ``NIRNetwork`` on tcl_fast's fused neurons from a NIR graph
    (a ``nir.NIRGraph`` or a ``.nir`` file path).

    ``dt`` is the step in seconds (default: the graph's ``metadata['dt']`` when
    tcl_fast wrote it, else 1e-4, snnTorch's and SpikingJelly's default). NIR
    ``LIF`` and ``IF`` run on the fused kernel with a hard reset to
    ``v_reset``; their ``r`` becomes an input scale where it is neither 1 nor
    ``tau/dt``. ``CubaLIF`` (a synaptic current as a second state) is refused:
    tcl_fast has no fused kernel for it. Nested graphs (recurrent subgraphs) and
    node types without a mapping are refused with ``NIRImportError`` naming the
    node. The imported weights are float32 parameters (trainable); the neurons'
    surrogate gradient is ``surrogate``/``alpha``.
    """
    nir = _nir()
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if isinstance(graph, (str, os.PathLike)):
        graph = nir.read(str(graph))
    if not isinstance(graph, nir.NIRGraph):
        raise TypeError(f"graph must be a nir.NIRGraph or a .nir path, got {type(graph).__name__}")
    if dt is None:
        meta = graph.metadata if isinstance(graph.metadata, dict) else {}
        dt = float(meta.get("dt", DEFAULT_DT))
    dt = _check_dt(dt)
    inputs_of: dict[str, list[str]] = {name: [] for name in graph.nodes}
    for src, dst in graph.edges:
        if src not in graph.nodes or dst not in graph.nodes:
            raise NIRImportError(f"edge ({src!r}, {dst!r}) names a node the graph does not have")
        inputs_of[dst].append(src)
    ins = [n for n, node in graph.nodes.items() if isinstance(node, nir.Input)]
    outs = [n for n, node in graph.nodes.items() if isinstance(node, nir.Output)]
    if len(ins) != 1 or len(outs) != 1:
        raise NIRImportError(f"from_nir needs one Input and one Output node, found {len(ins)} and {len(outs)}")
    # Topological order (Kahn); a cycle is a recurrent connection.
    pending = {n: len(set(s)) for n, s in inputs_of.items()}
    users: dict[str, list[str]] = {n: [] for n in graph.nodes}
    for dst, srcs in inputs_of.items():
        for s in set(srcs):
            users[s].append(dst)
    ready = [n for n in graph.nodes if pending[n] == 0]
    order = []
    while ready:
        n = ready.pop(0)
        order.append(n)
        for u in users[n]:
            pending[u] -= 1
            if pending[u] == 0:
                ready.append(u)
    if len(order) != len(graph.nodes):
        stuck = [n for n in graph.nodes if n not in order]
        raise NIRImportError(f"the graph has a cycle (recurrent connection) through {stuck[:4]}; "
                             "from_nir builds feed-forward networks only")
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    inputs: dict[str, list[str]] = {}
    names = {}
    for n in order:
        names[n] = _module_name(n, names.values())
    for n in order:
        node = graph.nodes[n]
        if isinstance(node, (nir.Input, nir.Output)):
            continue
        if isinstance(node, nir.NIRGraph):
            raise NIRImportError(f"node {n!r} is a nested graph (e.g. a recurrent layer); from_nir does not "
                                 "import subgraphs")
        if not inputs_of[n]:
            raise NIRImportError(f"node {n!r} ({type(node).__name__}) has no input edge")
        if isinstance(node, nir.CubaLIF):
            raise NIRImportError(
                f"node {n!r} (CubaLIF): a current-based LIF has two state variables (synaptic current and "
                "membrane); tcl_fast's fused kernels run one, so CubaLIF is refused (snnTorch's Synaptic and "
                "Norse's LIF export it)")
        if isinstance(node, (nir.LIF, nir.IF)):
            layers[names[n]] = _import_neuron(nir, n, node, dt, backend, surrogate, alpha)
        else:
            layers[names[n]] = _PerStep(import_layer(nir, n, node))
        inputs[names[n]] = [names[s] for s in inputs_of[n]]
    inputs[names[outs[0]]] = [names[s] for s in inputs_of[outs[0]]]
    if not inputs[names[outs[0]]]:
        raise NIRImportError(f"the Output node {outs[0]!r} has no input edge")
    in_node = graph.nodes[ins[0]]
    shape = tuple(int(s) for s in np.asarray(next(iter(in_node.input_type.values()))).reshape(-1))
    return NIRNetwork(layers, inputs, names[ins[0]], names[outs[0]], shape)


def _module_name(name: str, taken) -> str:
    base = re.sub(r"[^0-9A-Za-z_]", "_", str(name)) or "node"
    if base[0].isdigit():
        base = "n" + base
    out, i = base, 1
    taken = set(taken)
    while out in taken:
        i += 1
        out = f"{base}_{i}"
    return out
