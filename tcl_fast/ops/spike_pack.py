"""Spikes stored as bits: pack a 0/1 tensor to 1 bit per element and back.

Layout (every implementation): the tensor is read flat in memory order
(it must be contiguous); element ``i`` is bit ``i % 8`` (least significant
first) of byte ``i // 8``. A tail of ``N % 8`` elements fills the low bits of
the last byte; its high bits are 0. ``pack`` writes bit 1 for every element
that is not zero (``-0.0`` packs as 0), ``unpack`` writes exactly 1 or +0 in
the requested dtype, so a tensor that held only 0 and 1 comes back bit for bit.

Implementations, chosen by :func:`pack_bits` / :func:`unpack_bits`:

* C++ (``torch.ops.tcl_fast.pack_spikes`` / ``unpack_spikes``, csrc/spike_pack.cpp)
  on CPU tensors, when the compiled library has them;
* Triton (below) on CUDA tensors, or on CPU tensors under the interpreter when
  asked for explicitly (tests);
* the pure-PyTorch reference otherwise, and as the oracle in tests.
"""
from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl

    _TRITON_IMPORT_ERROR: Exception | None = None
except ImportError as exc:
    triton = None
    tl = None
    _TRITON_IMPORT_ERROR = exc

from tcl_fast import _extension  # noqa: F401  (loads tcl_fast._C, which registers the ops)
from tcl_fast.ops import triton_device

__all__ = ["pack_bits", "unpack_bits", "pack_bits_reference", "unpack_bits_reference",
           "pack_backend", "packed_nbytes"]

PACK_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def packed_nbytes(numel: int) -> int:
    return (numel + 7) // 8


# --------------------------------------------------------------- reference ----
_WEIGHTS: dict = {}


def _bit_weights(device) -> torch.Tensor:
    w = _WEIGHTS.get(device)
    if w is None:
        w = _WEIGHTS[device] = torch.tensor([1 << i for i in range(8)], dtype=torch.uint8, device=device)
    return w


def pack_bits_reference(x: torch.Tensor) -> torch.Tensor:
    """[N] (any shape, contiguous) -> uint8 [ceil(N/8)]; plain PyTorch."""
    flat = x.reshape(-1) != 0
    n = flat.numel()
    pad = packed_nbytes(n) * 8 - n
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    bits = flat.view(-1, 8).to(torch.uint8) * _bit_weights(x.device)
    return bits.sum(dim=1, dtype=torch.uint8)


def unpack_bits_reference(bits: torch.Tensor, numel: int, dtype: torch.dtype) -> torch.Tensor:
    """uint8 [ceil(N/8)] -> flat [N] of 0/1 in ``dtype``; plain PyTorch."""
    shifts = torch.arange(8, dtype=torch.uint8, device=bits.device)
    flat = (bits.unsqueeze(1) >> shifts) & 1
    return flat.reshape(-1)[:numel].to(dtype)


# ------------------------------------------------------------------ Triton ----
def _triton_interpreting() -> bool:
    if triton is not None and hasattr(triton, "knobs"):
        return bool(triton.knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET") == "1"


_TRITON_BLOCK = 1024  # bytes per program: 8192 elements

if _TRITON_IMPORT_ERROR is None:

    @triton.jit
    def _pack_kernel(x_ptr, out_ptr, N, NBYTES, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        byte = pid * BLOCK + tl.arange(0, BLOCK)
        bit = tl.arange(0, 8)
        idx = byte.to(tl.int64)[:, None] * 8 + bit[None, :]
        x = tl.load(x_ptr + idx, mask=idx < N, other=0.0)
        b = (x != 0).to(tl.int32) << bit[None, :]
        tl.store(out_ptr + byte, tl.sum(b, axis=1).to(tl.uint8), mask=byte < NBYTES)

    @triton.jit
    def _unpack_kernel(bits_ptr, out_ptr, N, NBYTES, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        byte = pid * BLOCK + tl.arange(0, BLOCK)
        bit = tl.arange(0, 8)
        b = tl.load(bits_ptr + byte, mask=byte < NBYTES, other=0).to(tl.int32)
        v = (b[:, None] >> bit[None, :]) & 1
        idx = byte.to(tl.int64)[:, None] * 8 + bit[None, :]
        # via float32: the interpreter turns an int straight into bfloat16's raw bits
        tl.store(out_ptr + idx, v.to(tl.float32).to(out_ptr.dtype.element_ty), mask=idx < N)


def triton_pack_available(device) -> bool:
    if _TRITON_IMPORT_ERROR is not None:
        return False
    device = torch.device(device)
    if device.type == "cuda":
        return not _triton_interpreting()
    return device.type == "cpu" and _triton_interpreting()


def pack_bits_triton(x: torch.Tensor) -> torch.Tensor:
    if x.dtype not in PACK_DTYPES:
        raise TypeError(f"pack_bits: unsupported dtype {x.dtype}")
    x = x.contiguous()
    n = x.numel()
    nbytes = packed_nbytes(n)
    out = torch.empty(nbytes, dtype=torch.uint8, device=x.device)
    if nbytes:
        with triton_device.launch_device(x):
            _pack_kernel[(triton.cdiv(nbytes, _TRITON_BLOCK),)](x, out, n, nbytes, BLOCK=_TRITON_BLOCK)
    return out


def unpack_bits_triton(bits: torch.Tensor, numel: int, dtype: torch.dtype) -> torch.Tensor:
    if dtype not in PACK_DTYPES:
        raise TypeError(f"unpack_bits: unsupported dtype {dtype}")
    out = torch.empty(numel, dtype=dtype, device=bits.device)
    nbytes = packed_nbytes(numel)
    if nbytes:
        with triton_device.launch_device(bits):
            _unpack_kernel[(triton.cdiv(nbytes, _TRITON_BLOCK),)](bits, out, numel, nbytes,
                                                                  BLOCK=_TRITON_BLOCK)
    return out


# ---------------------------------------------------------------- dispatch ----
def _has_cpp_pack() -> bool:
    return hasattr(torch.ops.tcl_fast, "pack_spikes") and hasattr(torch.ops.tcl_fast, "unpack_spikes")


def pack_backend(device) -> str:
    """Which implementation :func:`pack_bits` uses for tensors on ``device``."""
    device = torch.device(device)
    if device.type == "cpu" and _has_cpp_pack():
        return "cpp"
    if device.type == "cuda" and triton_pack_available(device):
        return "triton"
    return "torch"


def pack_bits(x: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """Pack a contiguous 0/1 tensor to uint8 ``[ceil(N/8)]`` (see module doc)."""
    backend = backend or pack_backend(x.device)
    if backend == "cpp":
        return torch.ops.tcl_fast.pack_spikes(x.contiguous())
    if backend == "triton":
        return pack_bits_triton(x)
    if backend == "torch":
        return pack_bits_reference(x.contiguous())
    raise ValueError(f"unknown pack backend {backend!r}")


def unpack_bits(bits: torch.Tensor, numel: int, dtype: torch.dtype, backend: str | None = None) -> torch.Tensor:
    """The flat ``[numel]`` tensor of 0/1 in ``dtype`` that ``bits`` packs."""
    backend = backend or pack_backend(bits.device)
    if backend == "cpp":
        return torch.ops.tcl_fast.unpack_spikes(bits, numel, dtype)
    if backend == "triton":
        return unpack_bits_triton(bits, numel, dtype)
    if backend == "torch":
        return unpack_bits_reference(bits, numel, dtype)
    raise ValueError(f"unknown pack backend {backend!r}")
