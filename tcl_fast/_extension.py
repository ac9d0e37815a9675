"""Loads the compiled ``tcl_fast._C`` library and says what it provides.

Everything is probed once at import, so the answers are plain constants that
``torch.compile`` can trace through.
"""
from __future__ import annotations

import os

import torch

try:  # importing the module registers the tcl_fast:: ops with the dispatcher
    from tcl_fast import _C  # noqa: F401

    _LOAD_ERROR: Exception | None = None
except ImportError as exc:  # a source checkout that was never built, or a broken build
    _C = None
    _LOAD_ERROR = exc

_HAS_CPP = _C is not None
_HAS_CUDA_KERNELS = _HAS_CPP and torch._C._dispatch_has_kernel_for_dispatch_key(
    "tcl_fast::lif_forward", "CUDA"
)
try:
    import triton  # noqa: F401

    # Triton runs on a CUDA GPU, or on CPU tensors in its interpreter, which
    # must be switched on before any kernel is defined (tests/conftest.py).
    _HAS_TRITON = torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
except ImportError:
    _HAS_TRITON = False


def load_error() -> Exception | None:
    """Why ``tcl_fast._C`` could not be imported (None when it was)."""
    return _LOAD_ERROR


def has_cpp() -> bool:
    """True when the C++ CPU kernels are registered."""
    return _HAS_CPP


def has_cuda_kernels() -> bool:
    """True when the library was built with its CUDA kernels."""
    return _HAS_CUDA_KERNELS


def has_triton() -> bool:
    """True when Triton can run here (a CUDA GPU, or TRITON_INTERPRET=1 on CPU)."""
    return _HAS_TRITON
