"""Loads the compiled ``tcl_fast._C`` library and says what it provides."""
from __future__ import annotations

import functools

import torch

try:  # importing the module registers the tcl_fast:: ops with the dispatcher
    from tcl_fast import _C  # noqa: F401

    _LOAD_ERROR: Exception | None = None
except ImportError as exc:  # a source checkout that was never built, or a broken build
    _C = None
    _LOAD_ERROR = exc


def load_error() -> Exception | None:
    """Why ``tcl_fast._C`` could not be imported (None when it was)."""
    return _LOAD_ERROR


def has_cpp() -> bool:
    """True when the C++ CPU kernels are registered."""
    return _C is not None


@functools.lru_cache(maxsize=None)
def has_cuda_kernels() -> bool:
    """True when the library was built with its CUDA kernels."""
    return _C is not None and torch._C._dispatch_has_kernel_for_dispatch_key(
        "tcl_fast::lif_forward", "CUDA"
    )


@functools.lru_cache(maxsize=None)
def has_triton() -> bool:
    """True when Triton can run here (a CUDA GPU, or TRITON_INTERPRET=1 on CPU)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    import os

    return torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
