"""Triton kernels for the off-diagonal log-sum-exp of a self-similarity matrix.

For ``x: [N, D]`` the forward computes, without materialising the N x N matrix,

    lse_i = log sum_{j != i} exp(x_i . x_j / temperature)

one block of rows per program: it walks over column blocks, forms the tile
``x_rows @ x_cols^T`` with ``tl.dot`` and folds it into a running-max
log-sum-exp (base 2, as in FlashAttention), masking the diagonal.

The backward recomputes the tiles from the saved ``lse``. Queries and keys are
the same matrix and s is symmetric, so for a block of rows b

    dx_b = (1/temperature) sum_j (g_b P_bj + g_j P_jb) x_j,   P_ij = exp(s_ij - lse_i)

collects the row and the column contributions in one pass with no atomics.

Both kernels are exposed as ``torch.library.triton_op`` operators with a
registered autograd formula, so they trace under ``torch.compile`` (under the
interpreter, where wrap_triton can't trace, they are opaque ``custom_op``s). On a GPU
tile sizes are autotuned; under ``TRITON_INTERPRET=1`` (CPU CI) one fixed
large tile is used so the interpreter stays tolerable.
"""
from __future__ import annotations

import functools
import math
import os

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from tcl_fast.ops import triton_device

_LOG2E = 1.0 / math.log(2.0)
# D up to this is handled as one tile column (the row tile stays in registers);
# wider D is walked in chunks of _CHUNK_D.
_MAX_SINGLE_BLOCK_D = 256
_CHUNK_D = 128
# Fixed tiles for the interpreter: few programs, each working on big numpy arrays.
_INTERPRET_BLOCK_M = 64
_INTERPRET_BLOCK_N = 64

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _interpreting() -> bool:
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@triton.jit
def _tile_dot(a, b_t, acc, ALLOW_TF32: tl.constexpr, UPCAST_DOT: tl.constexpr):
    # fp16/bf16 operands always use tensor cores; the flag only matters for fp32.
    if UPCAST_DOT:
        # The Triton interpreter mis-multiplies bfloat16 operands; fp32 operands
        # holding the same (already rounded) values give the GPU's result.
        a = a.to(tl.float32)
        b_t = b_t.to(tl.float32)
    if ALLOW_TF32:
        return tl.dot(a, b_t, acc, input_precision="tf32")
    else:
        return tl.dot(a, b_t, acc, input_precision="ieee")


@triton.jit
def _similarity_tile(X, rows, cols, row_ok, col_ok, q, D, stride_n,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                     ONE_D_CHUNK: tl.constexpr, ALLOW_TF32: tl.constexpr,
                     UPCAST_DOT: tl.constexpr):
    """Raw dot products x_rows . x_cols for one [BLOCK_M, BLOCK_N] tile (fp32)."""
    offs_d = tl.arange(0, BLOCK_D)
    s = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if ONE_D_CHUNK:
        k = tl.load(X + cols[:, None] * stride_n + offs_d[None, :],
                    mask=col_ok[:, None] & (offs_d[None, :] < D), other=0.0)
        s = _tile_dot(q, tl.trans(k), s, ALLOW_TF32, UPCAST_DOT)
    else:
        for d0 in range(0, D, BLOCK_D):
            dd = d0 + offs_d
            q_chunk = tl.load(X + rows[:, None] * stride_n + dd[None, :],
                              mask=row_ok[:, None] & (dd[None, :] < D), other=0.0)
            k_chunk = tl.load(X + cols[:, None] * stride_n + dd[None, :],
                              mask=col_ok[:, None] & (dd[None, :] < D), other=0.0)
            s = _tile_dot(q_chunk, tl.trans(k_chunk), s, ALLOW_TF32, UPCAST_DOT)
    return s


@triton.jit
def _supcon_lse_fwd_kernel(
    X, LSE, N, D, stride_n, scale_log2,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ONE_D_CHUNK: tl.constexpr, ALLOW_TF32: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = (pid * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = rows < N
    offs_d = tl.arange(0, BLOCK_D)
    q = tl.zeros([BLOCK_M, BLOCK_D], dtype=X.dtype.element_ty)
    if ONE_D_CHUNK:
        q = tl.load(X + rows[:, None] * stride_n + offs_d[None, :],
                    mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)

    running_max = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    running_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        cols = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        col_ok = cols < N
        s = _similarity_tile(X, rows, cols, row_ok, col_ok, q, D, stride_n,
                             BLOCK_M, BLOCK_N, BLOCK_D, ONE_D_CHUNK, ALLOW_TF32, UPCAST_DOT)
        s = s * scale_log2
        keep = col_ok[None, :] & (cols[None, :] != rows[:, None])
        s = tl.where(keep, s, float("-inf"))
        new_max = tl.maximum(running_max, tl.max(s, axis=1))
        # A row that has seen only masked entries keeps max -inf; shift by 0 there
        # so exp2(-inf - -inf) never produces NaN.
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)
        running_sum = running_sum * tl.exp2(running_max - shift) \
            + tl.sum(tl.exp2(s - shift[:, None]), axis=1)
        running_max = new_max

    lse = (running_max + tl.log2(running_sum)) * 0.6931471805599453
    tl.store(LSE + rows, lse, mask=row_ok)


@triton.jit
def _supcon_lse_bwd_kernel(
    X, LSE, G, G_SCALE, DX, N, D, stride_n, stride_dx, inv_temperature, scale_log2,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    ONE_D_CHUNK: tl.constexpr, ALLOW_TF32: tl.constexpr, UPCAST_DOT: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_d = tl.program_id(1)  # which chunk of output columns (always 0 when ONE_D_CHUNK)
    rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = rows < N
    out_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    out_d_ok = out_d < D
    q = tl.zeros([BLOCK_M, BLOCK_D], dtype=X.dtype.element_ty)
    if ONE_D_CHUNK:
        q = tl.load(X + rows[:, None] * stride_n + out_d[None, :],
                    mask=row_ok[:, None] & out_d_ok[None, :], other=0.0)
    lse_rows = tl.load(LSE + rows, mask=row_ok, other=0.0) * 1.4426950408889634
    g_rows = tl.load(G + rows, mask=row_ok, other=0.0)

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        cols = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        col_ok = cols < N
        s = _similarity_tile(X, rows, cols, row_ok, col_ok, q, D, stride_n,
                             BLOCK_M, BLOCK_N, BLOCK_D, ONE_D_CHUNK, ALLOW_TF32, UPCAST_DOT)
        s = s * scale_log2
        lse_cols = tl.load(LSE + cols, mask=col_ok, other=0.0) * 1.4426950408889634
        g_cols = tl.load(G + cols, mask=col_ok, other=0.0)
        weights = g_rows[:, None] * tl.exp2(s - lse_rows[:, None]) \
            + g_cols[None, :] * tl.exp2(s - lse_cols[None, :])
        keep = col_ok[None, :] & (cols[None, :] != rows[:, None])
        weights = tl.where(keep, weights, 0.0)
        k_out = tl.load(X + cols[:, None] * stride_n + out_d[None, :],
                        mask=col_ok[:, None] & out_d_ok[None, :], other=0.0)
        acc = _tile_dot(weights.to(k_out.dtype), k_out, acc, ALLOW_TF32, UPCAST_DOT)

    g_scale = tl.load(G_SCALE)
    dx = acc * (inv_temperature * g_scale)
    tl.store(DX + rows[:, None] * stride_dx + out_d[None, :], dx.to(DX.dtype.element_ty),
             mask=row_ok[:, None] & out_d_ok[None, :])


def _configs(pairs):
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s)
        for m, n, w, s in pairs
    ]


# Autotuned variants (GPU only: the autotuner times each config on the device).
# Built on first use: older Triton's (3.2) autotuner asks for a GPU driver as
# soon as it is built, which would fail the import on a CPU machine.
@functools.cache
def _autotuned(kind: str):
    if kind == "fwd":
        pairs = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 128, 8, 2),
                 (64, 64, 4, 3), (64, 128, 4, 3), (64, 64, 4, 4), (128, 32, 4, 4)]
        kernel = _supcon_lse_fwd_kernel
    else:
        pairs = [(64, 64, 4, 2), (64, 64, 4, 3), (64, 128, 8, 2), (128, 64, 8, 2),
                 (128, 64, 8, 3), (128, 128, 8, 2), (64, 32, 4, 3), (32, 64, 4, 3)]
        kernel = _supcon_lse_bwd_kernel
    return triton.autotune(configs=_configs(pairs), key=["N", "D", "BLOCK_D"])(kernel)


def _define_op(name: str):
    """``triton_op`` on a GPU (torch.compile sees the kernels); an opaque
    ``custom_op`` under the interpreter, whose kernels wrap_triton can't trace."""
    if _interpreting():
        return torch.library.custom_op(name, mutates_args=())
    return triton_op(name, mutates_args=())


def _block_d(d: int) -> tuple[int, bool]:
    if d <= _MAX_SINGLE_BLOCK_D:
        return max(16, triton.next_power_of_2(d)), True
    return _CHUNK_D, False


def _dot_precision_flag(x: torch.Tensor, allow_tf32: bool) -> bool:
    # "ieee" only exists to keep fp32 exact; fp16/bf16 operands are exact in
    # tf32 anyway, and asking for it keeps them on the tensor-core path.
    return allow_tf32 or x.dtype != torch.float32


def _check_input(x: torch.Tensor) -> None:
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"triton supcon kernels take float16, bfloat16 or float32, got {x.dtype}")


@_define_op("tcl_fast::supcon_lse_triton")
def supcon_lse_triton(x: torch.Tensor, inv_temperature: float, allow_tf32: bool) -> torch.Tensor:
    """float32 ``lse[i] = log sum_{j != i} exp(x_i . x_j * inv_temperature)``; -inf when N = 1."""
    _check_input(x)
    x = x.contiguous()
    n, d = x.shape
    lse = torch.empty(n, dtype=torch.float32, device=x.device)
    block_d, one_chunk = _block_d(d)
    allow_tf32 = _dot_precision_flag(x, allow_tf32)
    args = (x, lse, n, d, x.stride(0), inv_temperature * _LOG2E)
    with triton_device.launch_device(x):
        if _interpreting():
            grid = (triton.cdiv(n, _INTERPRET_BLOCK_M),)
            _supcon_lse_fwd_kernel[grid](  # an opaque custom_op here: no wrap_triton (torch 2.6 rejects it)
                *args, BLOCK_M=_INTERPRET_BLOCK_M, BLOCK_N=_INTERPRET_BLOCK_N, BLOCK_D=block_d,
                ONE_D_CHUNK=one_chunk, ALLOW_TF32=allow_tf32,
                UPCAST_DOT=x.dtype == torch.bfloat16,
            )
        else:
            def grid(meta):
                return (triton.cdiv(n, meta["BLOCK_M"]),)

            wrap_triton(_autotuned("fwd"))[grid](
                *args, BLOCK_D=block_d, ONE_D_CHUNK=one_chunk, ALLOW_TF32=allow_tf32, UPCAST_DOT=False,
            )
    return lse


@_define_op("tcl_fast::supcon_lse_triton_backward")
def supcon_lse_triton_backward(
    x: torch.Tensor, lse: torch.Tensor, grad_lse: torch.Tensor, inv_temperature: float,
    allow_tf32: bool,
) -> torch.Tensor:
    """Gradient of ``sum_i grad_lse[i] * lse[i]`` with respect to ``x`` (dtype of ``x``)."""
    _check_input(x)
    x = x.contiguous()
    n, d = x.shape
    grad = grad_lse.to(torch.float32)
    # The weights g * P are cast to x's dtype for the tensor-core dot. Typical g
    # is 1/N-sized and P ~ 1/N, which underflows float16; divide g by its
    # largest magnitude here and multiply the scale back in the kernel epilogue.
    # (A device tensor, so no host sync.)
    g_scale = grad.abs().amax().clamp_min(torch.finfo(torch.float32).tiny).reshape(1)
    grad = (grad / g_scale).contiguous()
    grad_x = torch.empty_like(x)
    block_d, one_chunk = _block_d(d)
    allow_tf32 = _dot_precision_flag(x, allow_tf32)
    args = (x, lse.contiguous(), grad, g_scale, grad_x, n, d, x.stride(0), grad_x.stride(0),
            inv_temperature, inv_temperature * _LOG2E)
    with triton_device.launch_device(x):
        if _interpreting():
            grid = (triton.cdiv(n, _INTERPRET_BLOCK_M), triton.cdiv(d, block_d))
            _supcon_lse_bwd_kernel[grid](  # as in the forward
                *args, BLOCK_M=_INTERPRET_BLOCK_M, BLOCK_N=_INTERPRET_BLOCK_N, BLOCK_D=block_d,
                ONE_D_CHUNK=one_chunk, ALLOW_TF32=allow_tf32,
                UPCAST_DOT=x.dtype == torch.bfloat16,
            )
        else:
            def grid(meta):
                return (triton.cdiv(n, meta["BLOCK_M"]), triton.cdiv(d, block_d))

            wrap_triton(_autotuned("bwd"))[grid](
                *args, BLOCK_D=block_d, ONE_D_CHUNK=one_chunk, ALLOW_TF32=allow_tf32, UPCAST_DOT=False,
            )
    return grad_x


def _setup_context(ctx, inputs, output):
    x, inv_temperature, allow_tf32 = inputs
    ctx.save_for_backward(x, output)
    ctx.inv_temperature = inv_temperature
    ctx.allow_tf32 = allow_tf32


def _backward(ctx, grad_lse):
    x, lse = ctx.saved_tensors
    grad_x = supcon_lse_triton_backward(x, lse, grad_lse, ctx.inv_temperature, ctx.allow_tf32)
    return grad_x, None, None


supcon_lse_triton.register_autograd(_backward, setup_context=_setup_context)


if _interpreting():
    # triton_op uses the op body as its fake; the interpreter's custom_op needs
    # shape-only fakes for FakeTensor tracing (opcheck, torch.compile).
    @supcon_lse_triton.register_fake
    def _(x, inv_temperature, allow_tf32):
        return x.new_empty(x.shape[0], dtype=torch.float32)

    @supcon_lse_triton_backward.register_fake
    def _(x, lse, grad_lse, inv_temperature, allow_tf32):
        return torch.empty_like(x)
