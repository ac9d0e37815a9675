"""What the build produced: CI sets TCL_FAST_EXPECT_CUDA_KERNELS=1 where nvcc
exists, so a CUDA compile or link failure that setup.py swallowed shows here."""
import os

import pytest
import torch

from tcl_fast import _extension


def test_cpp_kernels_loaded():
    assert _extension.has_cpp(), f"tcl_fast._C failed to load: {_extension.load_error()}"
    assert torch._C._dispatch_has_kernel_for_dispatch_key("tcl_fast::lif_forward", "CPU")


@pytest.mark.skipif(os.environ.get("TCL_FAST_EXPECT_CUDA_KERNELS") != "1",
                    reason="set TCL_FAST_EXPECT_CUDA_KERNELS=1 where the CUDA kernels must have been built")
def test_cuda_kernels_built():
    assert torch.version.cuda is not None, "torch is a CPU-only build"
    assert _extension.has_cuda_kernels(), "tcl_fast._C was built without its CUDA kernels"
