"""Builds tcl_fast._C: the C++ CPU kernels always, the CUDA kernels when it can.

The CUDA kernels are built when a GPU is visible, or when asked for with
TORCH_CUDA_ARCH_LIST or TCL_FAST_CUDA=1 (CI does, so their compile is proven on
a machine without a GPU); otherwise the build is CPU-only and takes a few
minutes on 2 cores (`pip install -v` shows each compile step).

Environment:
  TCL_FAST_CUDA=1          build the CUDA kernels even without a visible GPU (archs "8.0;9.0+PTX")
  TCL_FAST_CPU_ONLY=1      skip the CUDA kernels even when a GPU is visible
  TORCH_CUDA_ARCH_LIST     GPU archs to build; setting it also asks for the CUDA kernels
  CUDA_HOME                CUDA toolkit (default: nvcc on PATH, else /usr/local/cuda)
"""
import os
import shutil
import sys
import sysconfig

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
    asked = os.environ.get("TCL_FAST_CUDA", "0") not in ("", "0") or bool(os.environ.get("TORCH_CUDA_ARCH_LIST"))
    if not torch.cuda.is_available():
        if not asked:
            print("tcl_fast: no GPU visible, building the CPU kernels only "
                  "(TCL_FAST_CUDA=1 or TORCH_CUDA_ARCH_LIST builds the CUDA kernels too)")
            return False
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            # With no GPU to query, torch's arch detection fails (IndexError): pick
            # Ampere and Hopper, plus PTX so newer GPUs can JIT.
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"
    return True


def _extension():
    csrc = os.path.join("csrc")
    # One translation unit per CPU dtype (mamba-style), so builds run them in parallel;
    # ops_unity.cpp compiles the schemas, registrations and helpers (ops, lif_cpu,
    # lif_common, lif_tuning, spike_pack) as one unit, parsing torch's headers once.
    # Longest first: ninja starts them in this order, so no long file starts last.
    # lif_cpu_half.cpp compiles to nothing on x86 (float16 runs through float32 there).
    cpu_sources = ("lif_cpu_float.cpp", "lif_cpu_bfloat16.cpp", "lif_cpu_double.cpp",
                   "lif_thread_mapping_test_ops.cpp", "ops_unity.cpp", "lif_cpu_half.cpp")
    sources = [os.path.join(csrc, f) for f in cpu_sources]
    # -ffp-contract=off: no FMA contraction, so spikes match the reference bit for bit.
    # -fno-trapping-math: lets GCC if-convert the compares so the lane loops vectorise
    # (changes no value; only FP-exception semantics, which torch does not use).
    # -g0: Python's build flags ask for debug info, which made _C.so six times larger
    # and the compile slower; nobody steps through these kernels in a debugger.
    # -O2 -funswitch-loops, not -O3: of what -O3 adds, loop unswitching (a copy of
    # the backward's chunk loops per optional input, v0, grad_v_last, addend, given
    # or not) is what the kernels' speed needs: at plain -O2 the float32 backward
    # took 1.3-1.5x the -O3 time, and -O3 without unswitching as well. This pair
    # compiles the float32 kernels in 63 s of CPU against 85 s at -O3 (A/B in
    # docs/benchmarks.md, build).
    cxx = ["-O2", "-funswitch-loops", "-g0", "-fopenmp", "-ffp-contract=off", "-fno-trapping-math"]
    kwargs = dict(include_dirs=[os.path.join(HERE, "csrc")], extra_link_args=["-fopenmp"])
    if _cuda_build_wanted():
        sources += [os.path.join(csrc, f) for f in ("lif_cuda_ops.cpp", "lif_cuda.cu", "lif_cuda_float.cu",
                                                    "lif_cuda_half.cu", "lif_cuda_bfloat16.cu")]
        # --fmad=false: the forward must round exactly like the CPU kernel and the
        # reference so spikes match bit for bit; the kernels are memory bound.
        nvcc = ["-O3", "--fmad=false", "-lineinfo"]
        return CUDAExtension("tcl_fast._C", sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **kwargs)
    return CppExtension("tcl_fast._C", sources, extra_compile_args={"cxx": cxx}, **kwargs)


class PersistentBuildExtension(BuildExtension):
    """torch's ninja build with its object files kept in one folder under the source
    tree, build/temp.<platform>-<python>, whatever pip asks for.

    `pip install -e` builds in a new temporary folder each time, so the README's
    second command (`pip install -e ".[test,dvs]"` after `pip install -e .`) compiled
    everything again. With the folder kept, ninja sees the same commands and the
    objects newer than their sources and headers (it tracks the headers through the
    compiler's depfiles), so a reinstall only links, and a source change recompiles
    only the files it touches. A wheel build (`pip install .`) used this folder
    already (setuptools' default build_temp); now both kinds share it.
    """

    def finalize_options(self):
        super().finalize_options()
        self.build_temp = os.path.join(
            HERE, "build", f"temp.{sysconfig.get_platform()}-{sys.implementation.cache_tag}")


setup(ext_modules=[_extension()], cmdclass={"build_ext": PersistentBuildExtension})
