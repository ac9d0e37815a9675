"""Builds tcl_fast._C: the C++ CPU kernels always, the CUDA kernels when it can.

Environment:
  TCL_FAST_CPU_ONLY=1      skip the CUDA kernels even when nvcc and a CUDA torch exist
  TORCH_CUDA_ARCH_LIST     GPU archs to build (default here "8.0;9.0+PTX" when no GPU is visible)
  CUDA_HOME                CUDA toolkit (default: nvcc on PATH, else /usr/local/cuda)
"""
import os
import shutil

from setuptools import setup


def _default_cuda_home():
    """The toolkit root holding include/cuda_runtime.h. Torch guesses it from
    nvcc's path, which is wrong for a /usr/local/bin/nvcc wrapper or symlink."""
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc is not None:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates.append("/usr/local/cuda")
    for root in candidates:
        if os.path.exists(os.path.join(root, "include", "cuda_runtime.h")):
            return root
    return None


if not os.environ.get("CUDA_HOME") and not os.environ.get("CUDA_PATH") and _default_cuda_home():
    os.environ["CUDA_HOME"] = _default_cuda_home()  # must precede the cpp_extension import

import torch  # noqa: E402
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _cuda_build_wanted() -> bool:
    if os.environ.get("TCL_FAST_CPU_ONLY", "0") not in ("", "0"):
        print("tcl_fast: TCL_FAST_CPU_ONLY set, building the CPU kernels only")
        return False
    if torch.version.cuda is None:
        print("tcl_fast: torch is a CPU-only build, building the CPU kernels only")
        return False
    if CUDA_HOME is None:
        print("tcl_fast: no CUDA toolkit (nvcc) found, building the CPU kernels only")
        return False
    if not torch.cuda.is_available() and not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        # With no GPU to query, torch's arch detection fails (IndexError): pick
        # Ampere and Hopper, plus PTX so newer GPUs can JIT.
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
    return True


def _extension():
    csrc = os.path.join("csrc")
    # One translation unit per CPU dtype (mamba-style), so builds run them in parallel.
    cpu_sources = ("ops.cpp", "lif_cpu.cpp", "lif_cpu_float.cpp", "lif_cpu_double.cpp",
                   "lif_cpu_half.cpp", "lif_cpu_bfloat16.cpp", "lif_gpu_threads_cpu.cpp", "spike_pack.cpp")
    sources = [os.path.join(csrc, f) for f in cpu_sources]
    # -ffp-contract=off: no FMA contraction, so spikes match the reference bit for bit.
    # -fno-trapping-math: lets GCC if-convert the compares so the lane loops vectorise
    # (changes no value; only FP-exception semantics, which torch does not use).
    cxx = ["-O3", "-fopenmp", "-ffp-contract=off", "-fno-trapping-math"]
    kwargs = dict(include_dirs=[os.path.join(HERE, "csrc")], extra_link_args=["-fopenmp"])
    if _cuda_build_wanted():
        sources += [os.path.join(csrc, f) for f in ("lif_cuda_ops.cpp", "lif_cuda.cu", "lif_cuda_float.cu",
                                                    "lif_cuda_half.cu", "lif_cuda_bfloat16.cu")]
        # --fmad=false: the forward must round exactly like the CPU kernel and the
        # reference so spikes match bit for bit; the kernels are memory bound.
        nvcc = ["-O3", "--fmad=false", "-lineinfo"]
        return CUDAExtension("tcl_fast._C", sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
    return CppExtension("tcl_fast._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)


setup(ext_modules=[_extension()], cmdclass={"build_ext": BuildExtension})
