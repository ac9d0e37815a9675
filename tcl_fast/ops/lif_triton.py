"""Multi-step LIF in Triton: forward and backward kernels plus op registration.

Math and floating-point order mirror ``csrc/lif_math.h`` (see that file for the
semantics). Layout is time-first ``[T, N]``; one program owns ``BLOCK``
neurons and walks time inside the kernel with the membrane in registers.

The backward, like the C++/CUDA kernels, saves nothing but the inputs: it
re-runs the forward recursion, parks ``h[t]`` in a scratch buffer that only the
same program reads back, then walks time in reverse. When ``x`` is already in
the accumulation dtype (float32/float64) the scratch *is* ``grad_x``: step
``t`` of the reverse walk reads ``h[t-1]`` before it overwrites ``grad_x[t]``,
so no extra ``[T, N]`` buffer is allocated. fp16/bf16 inputs need a separate
float32 scratch because ``h`` must not be rounded to the input dtype.

Ops (registered with ``torch.library.triton_op`` so they trace under
``torch.compile(fullgraph=True)``):

* ``tcl_fast::lif_forward_triton(x2d, v0, decay, ...) -> (spikes, v_last)``
* ``tcl_fast::lif_backward_triton(grad_spikes, grad_v_last | None, x2d, v0, decay, ...,
  need_decay_grad) -> (grad_x, grad_v0 ([0] without v0), grad_decay ([0] unless needed))``

The accumulation dtype is ``decay``'s dtype: float32, or float64 for float64
``x`` (float64 runs in the interpreter and on GPUs with fp64 support).
"""
from __future__ import annotations

import os

import torch
from torch.autograd.function import once_differentiable

from tcl_fast.ops import triton_device

try:
    import triton
    import triton.language as tl

    _TRITON_IMPORT_ERROR: Exception | None = None
except ImportError as exc:  # the module stays importable; calls raise
    triton = None
    tl = None
    _TRITON_IMPORT_ERROR = exc

__all__ = ["lif_forward_triton", "lif_triton_available"]


def _interpreter_on() -> bool:
    if triton is not None and hasattr(triton, "knobs"):
        return bool(triton.knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET") == "1"


# Decided once: @triton.jit builds an interpreted or a compiled kernel at
# decoration time, so flipping TRITON_INTERPRET later does not change them.
_INTERPRET = triton is not None and _interpreter_on()


def lif_triton_available(device: torch.device | str | None = None) -> bool:
    """Whether the Triton LIF kernels can run on ``device`` (default: any)."""
    if _TRITON_IMPORT_ERROR is not None:
        return False
    if _INTERPRET:  # the interpreter runs the kernels on the host
        return True
    if device is None:
        return torch.cuda.is_available()
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


if _TRITON_IMPORT_ERROR is None:

    # ---------------------------------------------------------------- math ----
    # Each helper is one function of csrc/lif_math.h, same operation order.
    # Scalars (v_th, v_r, alpha, k) are already in the accumulation dtype.

    @triton.jit
    def _surrogate_grad(u, alpha, beta, SURROGATE: tl.constexpr):
        if SURROGATE == 0:  # sigmoid
            sig = 1.0 / (1.0 + tl.exp(-alpha * u))
            g = alpha * sig * (1.0 - sig)
        elif SURROGATE == 1:  # atan
            z = 1.5707963267948966 * alpha * u
            g = (alpha * 0.5) / (1.0 + z * z)
        elif SURROGATE == 2:  # triangle, alpha = gamma
            g = tl.maximum(alpha - tl.abs(u), 0.0) / (alpha * alpha)
        elif SURROGATE == 3:  # rectangle, alpha = width
            g = tl.where(tl.abs(u) < 0.5 * alpha, 1.0 / alpha, tl.zeros_like(u))
        elif SURROGATE == 4:  # super_spike
            d = 1.0 + tl.abs(u)
            g = alpha / (d * d)
        elif SURROGATE == 5:  # fast_sigmoid, alpha = slope
            d = alpha * tl.abs(u) + 1.0
            g = 1.0 / (d * d)
        elif SURROGATE == 6:  # erf
            z = alpha * u
            g = alpha * 0.5641895835477563 * tl.exp(-(z * z))
        elif SURROGATE == 7:  # soft_sign
            d = 1.0 / alpha + tl.abs(u)
            g = 1.0 / (2.0 * alpha * (d * d))
        elif SURROGATE == 8:  # piecewise_leaky_relu, alpha = w, beta = c
            g = tl.where(tl.abs(u) < alpha, 0.5 / alpha, tl.zeros_like(u) + beta)
        else:  # piecewise_exp
            g = alpha * 0.5 * tl.exp(-alpha * tl.abs(u))
        return g

    @triton.jit
    def _atan(z):
        # Portable atan (Triton's interpreter has no libdevice); used only by the
        # smooth test mode. |z| > 1 folds to pi/2 - atan(1/|z|); two half-angle
        # steps atan(r) = 2 atan(r / (1 + sqrt(1 + r^2))) bring r <= tan(pi/16)
        # ~ 0.2, where the Taylor series to r^23 is exact to double precision.
        a = tl.abs(z)
        big = a > 1.0
        r = tl.where(big, 1.0 / tl.maximum(a, 1.0), a)
        r = r / (1.0 + tl.sqrt(1.0 + r * r))
        r = r / (1.0 + tl.sqrt(1.0 + r * r))
        r2 = r * r
        p = -1.0 / 23.0
        p = p * r2 + 1.0 / 21.0
        p = p * r2 - 1.0 / 19.0
        p = p * r2 + 1.0 / 17.0
        p = p * r2 - 1.0 / 15.0
        p = p * r2 + 1.0 / 13.0
        p = p * r2 - 1.0 / 11.0
        p = p * r2 + 1.0 / 9.0
        p = p * r2 - 1.0 / 7.0
        p = p * r2 + 1.0 / 5.0
        p = p * r2 - 1.0 / 3.0
        p = p * r2 + 1.0
        res = 4.0 * (r * p)
        res = tl.where(big, 1.5707963267948966 - res, res)
        return tl.where(z < 0.0, -res, res)

    @triton.jit
    def _surrogate_primitive(u, alpha, beta, SURROGATE: tl.constexpr):
        if SURROGATE == 0:
            p = 1.0 / (1.0 + tl.exp(-alpha * u))
        elif SURROGATE == 1:
            p = _atan(1.5707963267948966 * alpha * u) * 0.3183098861837907 + 0.5
        elif SURROGATE == 2:
            c = tl.minimum(tl.maximum(u, -alpha), alpha)
            g2 = 2.0 * alpha * alpha
            p = tl.where(c < 0.0, (alpha + c) * (alpha + c) / g2,
                         1.0 - (alpha - c) * (alpha - c) / g2)
        elif SURROGATE == 3:
            p = tl.minimum(tl.maximum(u / alpha + 0.5, 0.0), 1.0)
        elif SURROGATE == 4:
            p = alpha * u / (1.0 + tl.abs(u)) + 0.5
        elif SURROGATE == 5:
            p = u / (1.0 + alpha * tl.abs(u)) + 0.5
        elif SURROGATE == 6:
            p = tl.erf(alpha * u) * 0.5 + 0.5
        elif SURROGATE == 7:
            p = (alpha * u / (1.0 + alpha * tl.abs(u))) * 0.5 + 0.5
        elif SURROGATE == 8:
            p = tl.where(tl.abs(u) < alpha, u / (2.0 * alpha) + 0.5,
                         tl.where(u < 0.0, beta * (u + alpha), beta * (u - alpha) + 1.0))
        else:
            p = tl.where(u < 0.0, 0.5 * tl.exp(alpha * u), 1.0 - 0.5 * tl.exp(-alpha * u))
        return p

    @triton.jit
    def _charge(v, x, k, v_r, DECAY_INPUT: tl.constexpr):
        if DECAY_INPUT:
            h = v + (x - (v - v_r)) * k
        else:
            h = v - (v - v_r) * k + x
        return h

    @triton.jit
    def _fire(h, v_th, alpha, beta, SURROGATE: tl.constexpr, SMOOTH: tl.constexpr):
        if SMOOTH:
            s = _surrogate_primitive(h - v_th, alpha, beta, SURROGATE)
        else:
            s = (h >= v_th).to(h.dtype)
        return s

    @triton.jit
    def _reset(h, s, v_th, v_r, HARD_RESET: tl.constexpr):
        if HARD_RESET:
            v = s * v_r + (1.0 - s) * h
        else:
            v = h - s * v_th
        return v

    @triton.jit
    def _initial_membrane(v0_ptr, offs, mask, v_r, HAS_V0: tl.constexpr, BLOCK: tl.constexpr):
        if HAS_V0:
            v = tl.load(v0_ptr + offs, mask=mask, other=0.0).to(v_r.dtype)
        else:  # no v0 given: every membrane starts at v_reset (0 for a soft reset)
            v = tl.full([BLOCK], 0.0, v_r.dtype) + v_r
        return v

    @triton.jit
    def _grad_h(grad_s, grad_v, h, s, v_th, v_r, alpha, beta, SURROGATE: tl.constexpr,
                HARD_RESET: tl.constexpr, DETACH_RESET: tl.constexpr):
        sg = _surrogate_grad(h - v_th, alpha, beta, SURROGATE)
        if HARD_RESET:
            if DETACH_RESET:
                dv_dh = 1.0 - s
            else:
                dv_dh = (1.0 - s) + (v_r - h) * sg
        else:
            if DETACH_RESET:
                dv_dh = 1.0
            else:
                dv_dh = 1.0 - v_th * sg
        return grad_s * sg + grad_v * dv_dh

    @triton.jit
    def _load_decay(decay_ptr, offs, mask, DECAY_PER_NEURON: tl.constexpr):
        # One decay for all neurons, or [N], one each (a learnt tau per channel, expanded).
        if DECAY_PER_NEURON:
            return tl.load(decay_ptr + offs, mask=mask, other=0.5)
        else:
            return tl.load(decay_ptr)

    # ------------------------------------------------------------- kernels ----
    # Python floats reach a compiled kernel as fp32; annotating them fp64 keeps
    # v_threshold = 0.3 exact for float64 input. tl.full casts them to the
    # accumulation dtype (and turns the interpreter's Python floats into
    # tensors of that dtype, rounded once like torch rounds a Python scalar).

    @triton.jit
    def _lif_fwd_kernel(
        x_ptr, v0_ptr, decay_ptr, spikes_ptr, v_last_ptr, T, N,
        v_threshold: tl.float64, v_reset: tl.float64, alpha: tl.float64, beta: tl.float64,
        HAS_V0: tl.constexpr, HARD_RESET: tl.constexpr, DECAY_INPUT: tl.constexpr,
        SURROGATE: tl.constexpr, SMOOTH: tl.constexpr, DECAY_PER_NEURON: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        k = _load_decay(decay_ptr, offs, mask, DECAY_PER_NEURON)
        v_th = tl.full([], v_threshold, k.dtype)
        v_r = tl.full([], v_reset, k.dtype)
        a = tl.full([], alpha, k.dtype)
        b = tl.full([], beta, k.dtype)

        v = _initial_membrane(v0_ptr, offs, mask, v_r, HAS_V0, BLOCK)
        x_ptrs = x_ptr + offs
        s_ptrs = spikes_ptr + offs
        for _ in range(T):
            x = tl.load(x_ptrs, mask=mask, other=0.0).to(k.dtype)
            h = _charge(v, x, k, v_r, DECAY_INPUT)
            s = _fire(h, v_th, a, b, SURROGATE, SMOOTH)
            v = _reset(h, s, v_th, v_r, HARD_RESET)
            tl.store(s_ptrs, s.to(spikes_ptr.dtype.element_ty), mask=mask)
            x_ptrs += N
            s_ptrs += N
        tl.store(v_last_ptr + offs, v.to(v_last_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _lif_bwd_kernel(
        grad_spikes_ptr, grad_v_last_ptr, x_ptr, v0_ptr, decay_ptr,
        grad_x_ptr, grad_v0_ptr, grad_decay_ptr, scratch_ptr, T, N,
        v_threshold: tl.float64, v_reset: tl.float64, alpha: tl.float64, beta: tl.float64,
        HAS_V0: tl.constexpr, HAS_GRAD_V: tl.constexpr, HARD_RESET: tl.constexpr,
        DECAY_INPUT: tl.constexpr, DETACH_RESET: tl.constexpr,
        SURROGATE: tl.constexpr, SMOOTH: tl.constexpr, NEED_DECAY_GRAD: tl.constexpr,
        H_IN_GRAD_X: tl.constexpr, DECAY_PER_NEURON: tl.constexpr, BLOCK: tl.constexpr,
    ):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        k = _load_decay(decay_ptr, offs, mask, DECAY_PER_NEURON)
        v_th = tl.full([], v_threshold, k.dtype)
        v_r = tl.full([], v_reset, k.dtype)
        a = tl.full([], alpha, k.dtype)
        b = tl.full([], beta, k.dtype)
        if H_IN_GRAD_X:
            h_base = grad_x_ptr
        else:
            h_base = scratch_ptr

        # 1) re-run the forward, keeping h[t] (exact: same ops as the forward)
        v0 = _initial_membrane(v0_ptr, offs, mask, v_r, HAS_V0, BLOCK)
        v = v0
        x_ptrs = x_ptr + offs
        h_ptrs = h_base + offs
        for _ in range(T):
            x = tl.load(x_ptrs, mask=mask, other=0.0).to(k.dtype)
            h = _charge(v, x, k, v_r, DECAY_INPUT)
            s = _fire(h, v_th, a, b, SURROGATE, SMOOTH)
            v = _reset(h, s, v_th, v_r, HARD_RESET)
            tl.store(h_ptrs, h.to(h_base.dtype.element_ty), mask=mask)
            x_ptrs += N
            h_ptrs += N

        # 2) walk time in reverse. Each step reads h[t-1] (to rebuild v[t-1])
        # before it writes grad_x[t], which is what lets h live in grad_x.
        last = tl.cast(T - 1, tl.int64) * N
        h_ptrs = h_base + last + offs
        x_ptrs = x_ptr + last + offs
        gs_ptrs = grad_spikes_ptr + last + offs
        gx_ptrs = grad_x_ptr + last + offs
        h = tl.load(h_ptrs, mask=mask, other=0.0).to(k.dtype)
        if HAS_GRAD_V:
            grad_v = tl.load(grad_v_last_ptr + offs, mask=mask, other=0.0).to(k.dtype)
        else:  # no gradient from the final membrane: nothing to read
            grad_v = tl.zeros([BLOCK], dtype=k.dtype)
        grad_k = tl.zeros([BLOCK], dtype=k.dtype)
        for i in range(T):
            has_prev = i < T - 1
            h_prev = tl.load(h_ptrs - N, mask=mask & has_prev, other=0.0).to(k.dtype)
            s = _fire(h, v_th, a, b, SURROGATE, SMOOTH)
            grad_s = tl.load(gs_ptrs, mask=mask, other=0.0).to(k.dtype)
            gh = _grad_h(grad_s, grad_v, h, s, v_th, v_r, a, b, SURROGATE, HARD_RESET, DETACH_RESET)
            if NEED_DECAY_GRAD:  # dL/dk += gh * dh/dk, dh/dk needs v[t-1]
                s_prev = _fire(h_prev, v_th, a, b, SURROGATE, SMOOTH)
                v_prev = tl.where(has_prev, _reset(h_prev, s_prev, v_th, v_r, HARD_RESET), v0)
                if DECAY_INPUT:
                    x = tl.load(x_ptrs, mask=mask, other=0.0).to(k.dtype)
                    grad_k += gh * (x - (v_prev - v_r))
                else:
                    grad_k += gh * -(v_prev - v_r)
            if DECAY_INPUT:
                gx = gh * k
            else:
                gx = gh
            tl.store(gx_ptrs, gx.to(grad_x_ptr.dtype.element_ty), mask=mask)
            grad_v = gh * (1.0 - k)
            h = h_prev
            h_ptrs -= N
            x_ptrs -= N
            gs_ptrs -= N
            gx_ptrs -= N
        if HAS_V0:
            tl.store(grad_v0_ptr + offs, grad_v.to(grad_v0_ptr.dtype.element_ty), mask=mask)
        if NEED_DECAY_GRAD:  # per-neuron partial sums; the host adds them up
            tl.store(grad_decay_ptr + offs, grad_k, mask=mask)

    # ---------------------------------------------------------- autotuning ----
    if _INTERPRET:
        # One big block, no autotuner: autotuning in the interpreter is far too
        # slow, and older Triton's (3.2) autotuner asks for a GPU driver as soon
        # as it is built, which the interpreter on a CPU machine doesn't have.
        _lif_fwd, _lif_bwd = _lif_fwd_kernel, _lif_bwd_kernel
        _LAUNCH_META = {"BLOCK": 1024}
        def _wrap(kernel):
            # The ops are opaque custom_ops here (below): launch the kernel as
            # it is (torch 2.6's wrap_triton rejects an interpreted kernel).
            return kernel
    else:
        _CONFIGS = [
            triton.Config({"BLOCK": block}, num_warps=warps)
            for block, warps in ((128, 1), (128, 4), (256, 2), (256, 4), (512, 4),
                                 (512, 8), (1024, 4), (1024, 8))
        ]
        # T is in the key: it sets how much work each program does.
        _lif_fwd = triton.autotune(configs=_CONFIGS, key=["N", "T"])(_lif_fwd_kernel)
        _lif_bwd = triton.autotune(configs=_CONFIGS, key=["N", "T"])(_lif_bwd_kernel)
        _LAUNCH_META = {}  # BLOCK comes from the autotuner
        _wrap = torch.library.wrap_triton

    def _grid(meta):
        return (triton.cdiv(meta["N"], meta["BLOCK"]),)

    # --------------------------------------------------------------- ops -------
    # On GPU the ops are triton_ops: under torch.compile AOTAutograd decomposes
    # them into the kernel launches that Inductor can see and schedule. Under
    # TRITON_INTERPRET=1 wrap_triton hands back the raw kernel (nothing to
    # trace), so there they are opaque custom ops with a separate fake kernel.
    #
    # enable_fp_fusion=False: no fma contraction on GPU, so h (and thus the
    # spikes) round exactly like PyTorch's separate ops and like the forward.
    def _define_op(name, fake):
        def register(impl):
            if not _INTERPRET:
                return torch.library.triton_op(name, impl, mutates_args=())
            op = torch.library.custom_op(name, impl, mutates_args=())
            op.register_fake(fake)
            return op

        return register

    def _lif_forward_fake(x2d, v0, decay, *params):
        return torch.empty_like(x2d), x2d.new_empty(x2d.shape[1:])

    def _lif_backward_fake(grad_spikes, grad_v_last, x2d, v0, decay, *params):
        grad_v0_shape = x2d.shape[1:] if v0 is not None else (0,)
        need_decay_grad = params[-1]
        grad_decay = torch.empty_like(decay) if need_decay_grad else decay.new_empty(0)
        return torch.empty_like(x2d), x2d.new_empty(grad_v0_shape), grad_decay

    @_define_op("tcl_fast::lif_forward_triton", _lif_forward_fake)
    def _lif_forward_op(
        x2d: torch.Tensor, v0: torch.Tensor | None, decay: torch.Tensor, v_threshold: float,
        v_reset: float, hard_reset: bool, decay_input: bool, detach_reset: bool,
        surrogate_id: int, alpha: float, beta: float, smooth: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        T, N = x2d.shape
        spikes = torch.empty_like(x2d)
        v_last = x2d.new_empty(x2d.shape[1:])
        if N > 0:
            with triton_device.launch_device(x2d):
                _wrap(_lif_fwd)[_grid](
                    x2d, x2d if v0 is None else v0, decay, spikes, v_last, T, N,
                    v_threshold, v_reset, alpha, beta, HAS_V0=v0 is not None, HARD_RESET=hard_reset,
                    DECAY_INPUT=decay_input, SURROGATE=surrogate_id,
                    SMOOTH=smooth, DECAY_PER_NEURON=decay.dim() > 0, enable_fp_fusion=False,
                    **_LAUNCH_META,
                )
        return spikes, v_last

    @_define_op("tcl_fast::lif_backward_triton", _lif_backward_fake)
    def _lif_backward_op(
        grad_spikes: torch.Tensor, grad_v_last: torch.Tensor | None, x2d: torch.Tensor,
        v0: torch.Tensor | None, decay: torch.Tensor, v_threshold: float, v_reset: float,
        hard_reset: bool, decay_input: bool, detach_reset: bool, surrogate_id: int,
        alpha: float, beta: float, smooth: bool, need_decay_grad: bool,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        T, N = x2d.shape
        grad_x = torch.empty_like(x2d)
        # Like the C++ op: grad_v0 is empty without v0, and grad_v_last None
        # means no gradient from the final membrane.
        grad_v0 = x2d.new_empty(x2d.shape[1:] if v0 is not None else (0,))
        h_in_grad_x = x2d.dtype == decay.dtype
        # Unused buffers get read-only placeholders (the constexpr flags compile
        # their accesses away), so no tensor is passed twice or cloned as mutated.
        scratch = decay if h_in_grad_x else torch.empty(
            (T, N), dtype=decay.dtype, device=x2d.device)
        grad_decay_parts = torch.empty(
            (N if need_decay_grad else 1,), dtype=decay.dtype, device=x2d.device)
        if N > 0:
            with triton_device.launch_device(x2d):
                _wrap(_lif_bwd)[_grid](
                    grad_spikes, x2d if grad_v_last is None else grad_v_last, x2d,
                    x2d if v0 is None else v0, decay, grad_x,
                    grad_v0, grad_decay_parts, scratch, T, N, v_threshold,
                    v_reset, alpha, beta, HAS_V0=v0 is not None, HAS_GRAD_V=grad_v_last is not None,
                    HARD_RESET=hard_reset, DECAY_INPUT=decay_input,
                    DETACH_RESET=detach_reset, SURROGATE=surrogate_id, SMOOTH=smooth,
                    NEED_DECAY_GRAD=need_decay_grad,
                    H_IN_GRAD_X=h_in_grad_x, DECAY_PER_NEURON=decay.dim() > 0, enable_fp_fusion=False,
                    **_LAUNCH_META,
                )
        if not need_decay_grad:
            grad_decay = decay.new_empty(0)  # like the C++ op: no fill kernel for a discarded value
        elif decay.dim() > 0:  # one decay per neuron: its gradient is that neuron's part
            grad_decay = grad_decay_parts.view(decay.shape)
        elif N > 0:
            grad_decay = grad_decay_parts.sum().reshape(decay.shape)
        else:
            grad_decay = torch.zeros_like(decay)
        return grad_x, grad_v0, grad_decay

    def _setup_context(ctx, inputs, output):
        x2d, v0, decay, *params = inputs
        ctx.save_for_backward(x2d, v0, decay)
        ctx.params = params
        ctx.set_materialize_grads(False)  # unused outputs' gradients arrive as None (see lif.py)

    @once_differentiable  # first-order only, as the C++ op (lif.py)
    def _backward(ctx, grad_spikes, grad_v_last):
        x2d, v0, decay = ctx.saved_tensors
        grad_spikes = torch.zeros_like(x2d) if grad_spikes is None else grad_spikes.contiguous()
        if grad_v_last is not None:
            grad_v_last = grad_v_last.contiguous()
        need_decay_grad = ctx.needs_input_grad[2]
        grad_x, grad_v0, grad_decay = torch.ops.tcl_fast.lif_backward_triton(
            grad_spikes, grad_v_last, x2d, v0, decay, *ctx.params, need_decay_grad)
        return (grad_x, None if v0 is None else grad_v0,
                grad_decay if need_decay_grad else None,
                None, None, None, None, None, None, None, None, None)

    torch.library.register_autograd(
        "tcl_fast::lif_forward_triton", _backward, setup_context=_setup_context)


def lif_forward_triton(x2d, v0, decay, v_threshold, v_reset, hard_reset, decay_input,
                       detach_reset, surrogate_id, alpha, beta, smooth):
    """LIF over ``x2d: [T, N]`` with Triton; returns ``(spikes [T, N], v_last [N])``.

    Arguments are already validated by ``tcl_fast.ops.lif.lif_multistep``:
    contiguous ``x2d``/``v0`` of one float dtype (``v0=None``: every membrane
    starts at ``v_reset``), ``decay`` in the accumulation dtype (float32,
    float64 for float64 ``x``): 0-dim, or ``[N]`` for one decay per neuron.
    """
    if _TRITON_IMPORT_ERROR is not None:
        raise RuntimeError(
            f"the Triton LIF backend needs the `triton` package: {_TRITON_IMPORT_ERROR}")
    if x2d.device.type != "cuda" and not _INTERPRET:
        raise RuntimeError(
            f"the Triton LIF backend runs on CUDA tensors (got {x2d.device.type}); for CPU "
            "tensors set TRITON_INTERPRET=1 before tcl_fast.ops.lif_triton is imported")
    return torch.ops.tcl_fast.lif_forward_triton(
        x2d, v0, decay, float(v_threshold), float(v_reset), bool(hard_reset),
        bool(decay_input), bool(detach_reset), int(surrogate_id), float(alpha), float(beta),
        bool(smooth))
