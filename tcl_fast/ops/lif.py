"""Multi-step LIF as an autograd-capable op with several backends.

``lif_multistep`` validates its input, makes it contiguous and calls one
backend (the C++/CUDA op takes ``[T, *neurons]`` as it is; Triton's op takes
``[T, N]``, a view):

* ``cpp``    - ``torch.ops.tcl_fast.lif_forward`` on CPU tensors (csrc/lif_cpu.cpp)
* ``cuda``   - the same op on CUDA tensors (csrc/lif_cuda_kernels.cuh)
* ``triton`` - Triton kernels (tcl_fast/ops/lif_triton.py)
* ``torch``  - the pure-PyTorch reference (tcl_fast/ops/lif_reference.py)

The C++/CUDA op is declared once in csrc/ops.cpp; its fake (meta) kernel and
autograd formula are registered here, so it traces under ``torch.compile``. In
eager mode ``lif_multistep`` applies the same formula through a plain
autograd.Function (``_LIFFunction``), which costs the host less per call.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, fields

import torch
from torch.autograd.function import once_differentiable

from tcl_fast import _extension
from tcl_fast.ops.pack import mark_spikes
from tcl_fast.ops.lif_reference import DEFAULT_ALPHA, DEFAULT_BETA, SURROGATES, lif_multistep_reference

BACKENDS = ("auto", "cuda", "cpp", "triton", "torch")
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


# --------------------------------------------------------------------------
# C++ / CUDA op registration
# --------------------------------------------------------------------------
if _extension.has_cpp():

    @torch.library.register_fake("tcl_fast::lif_forward")
    def _lif_forward_fake(x, v0, decay, v_threshold, v_reset, hard_reset, decay_input,
                          detach_reset, surrogate, alpha, beta, smooth):
        return torch.empty_like(x), x.new_empty(x.shape[1:])

    @torch.library.register_fake("tcl_fast::lif_backward")
    def _lif_backward_fake(grad_spikes, grad_v_last, x, v0, decay, v_threshold, v_reset,
                           hard_reset, decay_input, detach_reset, surrogate, alpha, beta, smooth,
                           need_decay_grad):
        grad_v0_shape = x.shape[1:] if v0 is not None else (0,)  # empty without v0
        # x: [T, *neurons]; the per-neuron tensors have the neuron dims' shape.
        grad_decay = torch.empty_like(decay) if need_decay_grad else decay.new_empty(0)
        return torch.empty_like(x), x.new_empty(grad_v0_shape), grad_decay

    def _lif_setup_context(ctx, inputs, output):
        x, v0, decay, *params = inputs
        ctx.save_for_backward(x, v0, decay)
        ctx.params = params
        # An output nobody used gets None, not a tensor of zeros autograd would
        # fill for it: the final membrane is usually unused, and the kernel
        # treats None as zero without reading anything.
        ctx.set_materialize_grads(False)

    # The backward op has no derivative of its own: asking for a second order
    # gradient raises autograd's clear "differentiate twice" error.
    @once_differentiable
    def _lif_backward(ctx, grad_spikes, grad_v_last):
        x, v0, decay = ctx.saved_tensors
        if grad_spikes is None:
            grad_spikes = torch.zeros_like(x)
        # A final membrane nobody used has no gradient: the kernel takes None
        # rather than reading a tensor of zeros.
        if grad_v_last is not None:
            grad_v_last = grad_v_last.contiguous()
        grad_x, grad_v0, grad_decay = torch.ops.tcl_fast.lif_backward(
            grad_spikes.contiguous(), grad_v_last, x, v0, decay, *ctx.params,
            ctx.needs_input_grad[2],
        )
        return (grad_x, grad_v0 if v0 is not None else None,
                grad_decay if ctx.needs_input_grad[2] else None,
                None, None, None, None, None, None, None, None, None)

    torch.library.register_autograd(
        "tcl_fast::lif_forward", _lif_backward, setup_context=_lif_setup_context
    )

    class _LIFFunction(torch.autograd.Function):
        """The op's autograd in eager mode, with less host time per call.

        Called through the dispatcher, the op's autograd (registered above) runs
        torch.library's generic Python wrapper; this Function calls the kernels
        below autograd and shares the formula above, for less host time per
        forward+backward (bench_lif.py --op-path --neurons 1 times both, rows
        `cpp`/`cuda` against `cpp-op`/`cuda-op`). Host time is what bounds a
        GPU layer whose kernels take less. torch.compile traces the op
        instead (``_lif_op``).
        """

        # The old-style forward(ctx, ...): a separate setup_context costs more
        # host time per call. Neither this nor torch.library's Function
        # supports torch.func transforms.
        @staticmethod
        def forward(ctx, x, v0, decay, *params):
            output = _lif_kernel(x, v0, decay, *params)
            _lif_setup_context(ctx, (x, v0, decay, *params), output)
            return output

        backward = staticmethod(_lif_backward)


    # LIF of an affine input (csrc/ops.cpp lif_affine_forward): BatchNorm folded
    # into the LIF (tcl_fast.nn.bnlif). Autograd through torch.library, as the
    # plain op's; its eager caller (bn_lif) runs it inside its own Function.
    @torch.library.register_fake("tcl_fast::lif_affine_forward")
    def _lif_affine_forward_fake(x, v0, decay, scale, shift, addend, *params):
        return torch.empty_like(x), x.new_empty(x.shape[1:])

    @torch.library.register_fake("tcl_fast::lif_affine_backward")
    def _lif_affine_backward_fake(grad_spikes, grad_v_last, x, v0, decay, scale, shift, addend, *params):
        need_decay_grad, need_affine_grad, need_addend_grad = params[-3:]
        grad_v0 = x.new_empty(x.shape[1:] if v0 is not None else (0,))
        grad_decay = torch.empty_like(decay) if need_decay_grad else decay.new_empty(0)
        affine = (torch.empty_like(scale), torch.empty_like(shift)) if need_affine_grad else \
            (scale.new_empty(0), shift.new_empty(0))
        grad_addend = torch.empty_like(x) if addend is not None and need_addend_grad else x.new_empty(0)
        return (torch.empty_like(x), grad_v0, grad_decay, *affine, grad_addend)

    def _lif_affine_setup_context(ctx, inputs, output):
        x, v0, decay, scale, shift, addend, *params = inputs
        # The addend itself is not needed in backward (its gradient is g), but the
        # kernel re-runs the forward, which charges it: saved like x.
        ctx.save_for_backward(x, v0, decay, scale, shift, addend)
        ctx.params = params
        ctx.set_materialize_grads(False)

    @once_differentiable
    def _lif_affine_backward(ctx, grad_spikes, grad_v_last):
        x, v0, decay, scale, shift, addend = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if grad_spikes is None:
            grad_spikes = torch.zeros_like(x)
        if grad_v_last is not None:
            grad_v_last = grad_v_last.contiguous()
        grad_x, grad_v0, grad_decay, grad_scale, grad_shift, grad_addend = torch.ops.tcl_fast.lif_affine_backward(
            grad_spikes.contiguous(), grad_v_last, x, v0, decay, scale, shift, addend, *ctx.params,
            needs[2], needs[3] or needs[4], addend is not None and needs[5])
        return (grad_x, grad_v0 if v0 is not None else None, grad_decay if needs[2] else None,
                grad_scale if needs[3] else None, grad_shift if needs[4] else None,
                grad_addend if addend is not None and needs[5] else None,
                None, None, None, None, None, None, None, None, None)

    torch.library.register_autograd(
        "tcl_fast::lif_affine_forward", _lif_affine_backward, setup_context=_lif_affine_setup_context
    )


def _lif_kernel(*args):
    """The op's CPU/CUDA kernel, called below autograd (records no graph)."""
    with torch._C._AutoDispatchBelowAutograd():
        return torch.ops.tcl_fast.lif_forward.default(*args)


def _lif_op(*args):
    """The C++/CUDA op: the op itself under torch.compile; in eager mode
    ``_LIFFunction`` when a gradient is wanted, else straight to the kernel."""
    if torch.compiler.is_compiling():
        return torch.ops.tcl_fast.lif_forward(*args)
    x, v0, decay = args[:3]
    if torch.is_grad_enabled() and (x.requires_grad or decay.requires_grad
                                    or (v0 is not None and v0.requires_grad)):
        return _LIFFunction.apply(*args)
    return _lif_kernel(*args)


def _lif_triton(*args):
    from tcl_fast.ops.lif_triton import lif_forward_triton

    return lif_forward_triton(*args)


# --------------------------------------------------------------------------
# Validation and backend choice
# --------------------------------------------------------------------------
_warned_fallback: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned_fallback:
        _warned_fallback.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def backend_available(backend: str, device: torch.device, dtype: torch.dtype = torch.float32) -> bool:
    """Whether ``backend`` can run on ``dtype`` tensors of ``device`` in this install."""
    if backend == "torch":
        return True
    if backend == "cpp":
        return device.type == "cpu" and _extension.has_cpp()
    if backend == "cuda":  # float64 is CPU-only (gradcheck); GPUs train in 32/16 bit
        return device.type == "cuda" and dtype != torch.float64 and _extension.has_cuda_kernels()
    if backend == "triton":
        if not _extension.has_triton():
            return False
        return device.type == "cuda" or (device.type == "cpu" and not torch.cuda.is_available())
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """Turn ``auto`` into a concrete backend; raise if an explicit one can't run."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        if not backend_available(backend, device, dtype):
            reason = ""
            if backend in ("cpp", "cuda") and _extension.load_error() is not None:
                reason = f" (tcl_fast._C failed to load: {_extension.load_error()})"
            raise RuntimeError(
                f"LIF backend {backend!r} is not available for {dtype} {device.type} tensors{reason}"
            )
        return backend
    if device.type == "cuda":
        if backend_available("cuda", device, dtype):
            return "cuda"
        if backend_available("triton", device, dtype):
            _warn_once("cuda->triton", "tcl_fast: CUDA kernels not built; LIF uses the Triton backend")
            return "triton"
    elif device.type == "cpu" and backend_available("cpp", device, dtype):
        return "cpp"
    _warn_once(
        f"{device.type}/{dtype}->torch",
        f"tcl_fast: no fused LIF kernel for {dtype} {device.type} tensors in this install "
        f"({_extension.load_error() or 'unsupported device'}); using the slower pure-PyTorch backend",
    )
    return "torch"


_IF_NEEDS = ("no leak (an IF neuron) needs decay_input=False: with decay_input=True the input is "
             "scaled by decay = 0 and ignored")


def validate_decay(tau=2.0, decay=None, decay_input: bool = True):
    """Return k = 1/tau (``decay`` when given) as a float or a tensor.

    Valid: k in (0, 1], i.e. tau in [1, inf); and k = 0 (tau = inf, an IF neuron
    h = v + x) only with ``decay_input=False``. NaN never. Errors name the
    argument the caller passed. A tensor may hold one value (returned 0-dim) or
    one per neuron (kept as it is; ``lif_multistep`` checks that it broadcasts
    to the neuron dims). A tensor on CUDA is checked on the device
    (``torch._assert_async``): no host sync, and a bad value fails the next
    synchronising call with this message.
    """
    name, value = ("tau", tau) if decay is None else ("decay", decay)
    if isinstance(value, torch.Tensor):
        if value.numel() == 0 or not value.is_floating_point():
            raise ValueError(f"{name} must be a float or a non-empty floating-point tensor")
        if value.numel() == 1:
            value = value.reshape(())
        k = value if name == "decay" else 1.0 / value  # 1/inf = 0: the IF neuron
        _check_decay_tensor(k, name, decay_input)
        return k
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"{name} must not be NaN")
    if name == "tau":
        if value <= 0:
            raise ValueError(f"tau must be positive, got {value}")
        if value < 1:
            raise ValueError(
                f"tau must be >= 1, got {value}: with tau < 1 the leak 1/tau > 1 overshoots v_reset"
            )
        k = 1.0 / value
    else:
        if not 0 <= value <= 1:
            raise ValueError(f"decay must be in (0, 1] (decay = 1/tau), got {value}")
        k = value
    if k == 0 and decay_input:
        raise ValueError(f"{name}={value}: {_IF_NEEDS}")
    return k


def _check_decay_tensor(k: torch.Tensor, name: str, decay_input: bool) -> None:
    if k.device.type == "meta" or torch.compiler.is_compiling():  # eager calls check; no graph break
        return
    k = k.detach()
    allowed = "tau must be in [1, inf)" if name == "tau" else "decay must be in (0, 1]"
    if k.device.type == "cuda":
        # Tiny kernels and a device-side assert: no host wait (.item() would sync every LIF call).
        ok = (k > 0) & (k <= 1) if decay_input else (k >= 0) & (k <= 1)
        torch._assert_async(ok.all(), f"{allowed} and not NaN"
                            + (f"; {name} with {_IF_NEEDS}" if decay_input else ""))
        return
    if k.numel() > 1:  # per-neuron: report the first bad value, if any
        ok = (k > 0) & (k <= 1) if decay_input else (k >= 0) & (k <= 1)
        if bool(ok.all()):
            return
        k = k.flatten()[(~ok.flatten()).nonzero()[0, 0]]
    v = float(k)
    given = (math.inf if v == 0 else 1.0 / v) if name == "tau" else v
    if v == 0 and decay_input:
        raise ValueError(f"{name}={given}: {_IF_NEEDS}")
    if not 0 <= v <= 1:
        raise ValueError(f"{allowed} (or {'inf' if name == 'tau' else '0'} with decay_input=False), "
                         f"got {name}={given}")


# Below this, triangle's 1/alpha**2 leaves float32 (NaN gradients from 1e-23 on), and
# every surrogate's gradient is already a spike of height 1/alpha >= 1e6.
ALPHA_MIN = 1e-6


def check_surrogate(surrogate: str, alpha: float | None,
                    beta: float | None = None) -> tuple[float, float]:
    """Validate a surrogate's name and parameters; return ``(alpha, beta)`` with
    their defaults filled in (beta is 0 for surrogates without a second one)."""
    if surrogate not in SURROGATES:
        raise ValueError(f"unknown surrogate {surrogate!r}; expected one of {SURROGATES}")
    alpha = DEFAULT_ALPHA[surrogate] if alpha is None else float(alpha)
    if not (alpha >= ALPHA_MIN and math.isfinite(alpha)):
        raise ValueError(f"alpha must be positive and finite, at least {ALPHA_MIN:g}, got {alpha}")
    if surrogate in DEFAULT_BETA:
        beta = DEFAULT_BETA[surrogate] if beta is None else float(beta)
        if not (beta >= 0 and math.isfinite(beta)):
            raise ValueError(f"surrogate_beta must be >= 0 and finite, got {beta}")
    elif beta is not None:
        raise ValueError(f"surrogate {surrogate!r} takes no surrogate_beta (only "
                         f"{', '.join(DEFAULT_BETA)} do), got {beta}")
    else:
        beta = 0.0
    return alpha, beta


_DECAY_CACHE: dict = {}


def _constant_decay(k: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A 0-dim tensor holding a constant decay, kept per (value, device, dtype).

    Building it every call would be a blocking host-to-device copy per LIF layer
    and step on CUDA. The ops only read it. Under torch.compile it is built in
    the graph instead (a constant there).
    """
    if torch.compiler.is_compiling():
        return torch.tensor(k, device=device, dtype=dtype)
    key = (k, device, dtype)
    t = _DECAY_CACHE.get(key)
    if t is None:
        if len(_DECAY_CACHE) >= 256:  # many distinct constants: don't grow without bound
            _DECAY_CACHE.clear()
        t = _DECAY_CACHE[key] = torch.tensor(k, device=device, dtype=dtype)
    return t


@dataclass(frozen=True)
class NeuronSpec:
    """A LIF layer's firing parameters: validated once, when built, then handed as
    they are to every kernel call (``lif_multistep(x, spec=...)``).

    ``v_reset=None`` is the soft reset; ``alpha``/``beta`` default to the
    surrogate's (``beta``: piecewise_leaky_relu's c, else unused). The decay
    (k = 1/tau) is not part of it: it may be a learnt tensor, given per call.
    """

    v_threshold: float = 1.0
    v_reset: float | None = 0.0
    decay_input: bool = True
    detach_reset: bool = False
    surrogate: str = "sigmoid"
    alpha: float | None = None
    beta: float | None = None
    # The op's scalar arguments, derived once: (v_threshold, v_r, hard_reset,
    # decay_input, detach_reset, surrogate id, alpha, beta).
    kernel_args: tuple = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        alpha, beta = check_surrogate(self.surrogate, self.alpha, self.beta)
        v_threshold = float(self.v_threshold)
        hard_reset = self.v_reset is not None
        v_r = float(self.v_reset) if hard_reset else 0.0
        if not (math.isfinite(v_threshold) and math.isfinite(v_r)):
            raise ValueError("v_threshold and v_reset must be finite")
        if v_threshold <= v_r:
            raise ValueError(
                f"v_threshold ({v_threshold}) must be greater than "
                f"{'v_reset' if hard_reset else '0 (soft reset)'} ({v_r})"
            )
        # beta stays None for a surrogate without one (the kernel then gets 0).
        for name, value in (("v_threshold", v_threshold), ("alpha", alpha),
                            ("beta", beta if self.surrogate in DEFAULT_BETA else None),
                            ("v_reset", None if self.v_reset is None else float(self.v_reset)),
                            ("decay_input", bool(self.decay_input)),
                            ("detach_reset", bool(self.detach_reset))):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "kernel_args", (
            v_threshold, v_r, hard_reset, self.decay_input, self.detach_reset,
            SURROGATES.index(self.surrogate), alpha, beta))


# NeuronSpec's defaults, which lif_multistep's firing keywords share: a call
# with spec= must leave those keywords at them.
_FIRING_DEFAULTS = tuple(f.default for f in fields(NeuronSpec) if f.init)


def lif_multistep(
    x: torch.Tensor,
    v0: torch.Tensor | None = None,
    *,
    tau: float | torch.Tensor = 2.0,
    decay: float | torch.Tensor | None = None,
    v_threshold: float = 1.0,
    v_reset: float | None = 0.0,
    decay_input: bool = True,
    detach_reset: bool = False,
    surrogate: str = "sigmoid",
    alpha: float | None = None,
    surrogate_beta: float | None = None,
    return_v: bool = False,
    backend: str = "auto",
    spec: NeuronSpec | None = None,
    _smooth: bool = False,
):
    """Multi-step LIF over time-first ``x: [T, *]`` (SpikingJelly semantics).

    Returns spikes ``[T, *]`` in ``x.dtype``; with ``return_v`` also the final
    membrane ``[*]`` (feed it back as ``v0`` to stream over chunks of time).
    ``tau`` may be a tensor (learnable), of one value or one per neuron
    (broadcasting to ``x.shape[1:]``, e.g. ``[C, 1, 1]`` for one tau per
    channel of ``[T, B, C, H, W]``); ``decay`` (= 1/tau) overrides ``tau``.
    ``v_reset=None`` selects the soft reset. ``surrogate_beta`` is the
    surrogate's second parameter (piecewise_leaky_relu's c, default 0.01).
    A ``spec`` (``NeuronSpec``, validated when built) replaces the firing
    arguments ``v_threshold`` .. ``surrogate_beta``, which then must be left
    at their defaults; neuron modules pass theirs so a call validates nothing
    twice. See README "LIFMultiStep".
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError("x must have at least 1 dim: [T, *neurons]")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError("x has T = 0 time steps; need T >= 1")
    if spec is None:
        spec = NeuronSpec(v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha, surrogate_beta)
    elif (v_threshold, v_reset, decay_input, detach_reset, surrogate, alpha, surrogate_beta) != _FIRING_DEFAULTS:
        raise ValueError("pass the firing parameters either in spec= or as keywords, not both")
    elif not isinstance(spec, NeuronSpec):
        raise TypeError(f"spec must be a tcl_fast NeuronSpec, got {type(spec).__name__}")
    k = validate_decay(tau, decay, spec.decay_input)
    neuron_shape = x.shape[1:]
    if v0 is not None:
        if not isinstance(v0, torch.Tensor):
            raise TypeError(f"v0 must be a torch.Tensor or None, got {type(v0).__name__}")
        if v0.shape != neuron_shape:
            raise ValueError(f"v0 must have shape {tuple(neuron_shape)} (x.shape[1:]), got {tuple(v0.shape)}")
        if v0.device != x.device:
            raise ValueError(f"v0 is on {v0.device} but x is on {x.device}")
        if v0.dtype != x.dtype:
            raise TypeError(f"v0 must have x's dtype {x.dtype}, got {v0.dtype}")
    k = _decay_on_device(k, x.device)
    if isinstance(k, torch.Tensor):
        if k.dim() > 0 and _broadcast_shape(k.shape, neuron_shape) != neuron_shape:
            raise ValueError(f"a per-neuron tau/decay must broadcast to the neuron dims x.shape[1:] = "
                             f"{tuple(neuron_shape)}, got shape {tuple(k.shape)}")
    backend = resolve_backend(backend, x.device, x.dtype)

    if backend == "torch":
        spikes, v_last = lif_multistep_reference(
            x, v0, k, spec.v_threshold, spec.v_reset, spec.decay_input, spec.detach_reset,
            spec.surrogate, spec.alpha, smooth=_smooth, beta=spec.beta,
        )
        return _emit(spikes, v_last, return_v, _smooth)

    k = _kernel_decay(k, x)
    params = (*spec.kernel_args, _smooth)
    # One copy at most (non-contiguous / channels_last); None: start at v_r.
    x_c = x.contiguous()
    v0_c = None if v0 is None else v0.contiguous()
    if backend == "triton":  # its op takes [T, N] and a decay of one element or [N]
        T = x.shape[0]
        k = k.expand(neuron_shape).contiguous().view(-1) if k.dim() > 0 else k
        spikes, v_last = _lif_triton(x_c.view(T, -1), None if v0_c is None else v0_c.view(-1), k, *params)
        spikes, v_last = spikes.view(x.shape), v_last.view(neuron_shape)
    else:  # the C++/CUDA op takes [T, *neurons] as it is: no view nodes for autograd
        spikes, v_last = _lif_op(x_c, v0_c, k, *params)
    return _emit(spikes, v_last, return_v, _smooth)


def _decay_on_device(k, device: torch.device):
    """A validated decay (``validate_decay``) for x on ``device``: a tensor there,
    or a float. A one-value CPU tensor that needs no gradient becomes its value,
    which ``_constant_decay`` moves to the GPU once per value (``float()`` of a
    CPU tensor waits for no device). Any other tensor on another device is
    refused: copied at every call, through pageable memory, it would block the
    host each time, and its gradient would need a copy back."""
    if not isinstance(k, torch.Tensor) or k.device == device or torch.compiler.is_compiling():
        return k  # compiled: the copy is a node of the graph (_kernel_decay), not a host wait
    if k.device.type == "cpu" and k.numel() == 1 and not k.requires_grad:
        return float(k)
    raise ValueError(
        f"the tau/decay tensor is on {k.device} but x is on {device}: move it to x's device once "
        "(a module's parameter or buffer moves with .to(device)); a copy at every call would block "
        + ("the host" if k.device.type == "cpu" else "both devices"))


def accumulation_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the C++/CUDA kernels compute in, and take decay/scale/shift in, for ``x``."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _kernel_decay(k, x: torch.Tensor) -> torch.Tensor:
    """A validated decay (float or tensor) as the C++/CUDA/Triton ops take it: x's
    accumulation dtype and device, one value or in a per-channel/neuron layout."""
    if isinstance(k, torch.Tensor):
        return lane_param(k.to(device=x.device, dtype=accumulation_dtype(x)), x.shape[1:], "tau/decay")
    return _constant_decay(float(k), x.device, accumulation_dtype(x))


def lane_param(t: torch.Tensor, neuron_shape: torch.Size, name: str) -> torch.Tensor:
    """A per-channel / per-neuron kernel parameter (a decay, a BN scale or shift) in
    the layout the C++/CUDA kernels index (csrc/lif_common.h lane_layout): 0-dim
    for one value; kept as it is (contiguous, leading 1s dropped) when all its
    dims but one are 1, so a ``[C, 1, 1]`` per-channel value is never expanded
    or saved at the neurons' size; else expanded to ``neuron_shape``. Autograd
    sums the gradient back to ``t``'s shape. A ``t`` that does not broadcast to
    ``neuron_shape`` raises ``ValueError`` naming ``name``, the caller's argument."""
    if t.dim() == 0:
        return t
    if t.numel() == 1:
        return t.reshape(())
    given, extra = tuple(t.shape), t.dim() - len(neuron_shape)
    if extra > 0 and all(size == 1 for size in t.shape[:extra]):  # leading 1s: dropped
        t = t.reshape(t.shape[extra:])
    if _broadcast_shape(t.shape, neuron_shape) != neuron_shape:
        raise ValueError(f"{name} must broadcast to the neuron dims x.shape[1:] = {tuple(neuron_shape)} "
                         f"(one value, one per channel or one per neuron), got shape {given}")
    if sum(size != 1 for size in t.shape) == 1:
        return t.contiguous()
    return t.expand(neuron_shape).contiguous()


def _broadcast_shape(a, b):
    try:
        return torch.broadcast_shapes(a, b)
    except RuntimeError:
        return None


def lif_affine_multistep(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, v0: torch.Tensor | None = None,
                         *, decay: float | torch.Tensor, spec: NeuronSpec, addend: torch.Tensor | None = None,
                         return_v: bool = False):
    """``lif_multistep(x * scale + shift [+ addend], v0, decay=decay, spec=spec)``
    with the affine applied inside the C++/CUDA kernel, so ``x * scale + shift``
    is never stored: a BatchNorm folded into the LIF (``tcl_fast.nn.bn_lif``);
    ``addend`` (x's shape; cast to x's dtype) is a residual charged with it.

    ``x: [T, *neurons]`` float, on a device whose C++/CUDA kernel is built;
    ``scale``/``shift``: x's accumulation dtype (float32; float64 for float64
    ``x``), one per channel (``[C, 1, ...]`` broadcasting to ``x.shape[1:]``) or
    per neuron; ``decay`` one value, or per channel in the same layout.
    Differentiable in ``x``, ``v0``, ``decay``, ``scale``, ``shift`` and ``addend``.
    """
    if not isinstance(spec, NeuronSpec):
        raise TypeError(f"spec must be a tcl_fast NeuronSpec, got {type(spec).__name__}")
    if x.dim() < 2 or x.dtype not in _FLOAT_DTYPES:
        raise ValueError(f"x must be a float tensor [T, *neurons], got {x.dtype} {tuple(x.shape)}")
    neuron_shape = x.shape[1:]
    acc = accumulation_dtype(x)
    backend = resolve_backend("auto", x.device, x.dtype)
    if backend not in ("cpp", "cuda"):
        raise RuntimeError(f"lif_affine_multistep needs the C++/CUDA kernels for {x.dtype} {x.device.type} "
                           f"tensors (resolved backend: {backend})")
    k = _kernel_decay(_decay_on_device(validate_decay(decay=decay, decay_input=spec.decay_input), x.device), x)
    args = (x.contiguous(), None if v0 is None else v0.contiguous(), k,
            lane_param(scale.to(acc), neuron_shape, "scale"), lane_param(shift.to(acc), neuron_shape, "shift"),
            None if addend is None else addend.to(x.dtype).contiguous(), *spec.kernel_args, False)
    if torch.compiler.is_compiling() or torch.is_grad_enabled():
        spikes, v_last = torch.ops.tcl_fast.lif_affine_forward(*args)
    else:
        with torch._C._AutoDispatchBelowAutograd():
            spikes, v_last = torch.ops.tcl_fast.lif_affine_forward.default(*args)
    return _emit(spikes, v_last, return_v, False)


def _emit(spikes, v_last, return_v, smooth):
    # Inside tcl_fast.pack_spikes(), ops that save these 0/1 spikes keep them as
    # bits (smooth test-mode "spikes" are not 0/1).
    if not smooth:
        mark_spikes(spikes)
    return (spikes, v_last) if return_v else spikes
