"""Build SpikingJelly 2.0's native CUDA LIF operator into an installed SpikingJelly.

SpikingJelly's wheel ships no CUDA binaries; its own build (SJ_BUILD_NATIVE_CUDA=1)
compiles a dozen neuron extensions, too long for a short GPU lease. For a
side-by-side benchmark only the LIF one matters:

    python benchmarks/build_spikingjelly_native.py /path/to/spikingjelly-2.0.0   # unpacked sdist

builds ops/lif/native.cu against the torch here (flags as SpikingJelly's
setup.py: -O3 --fmad=false, this GPU's arch) and puts it where SpikingJelly
looks for it (spikingjelly/_ops/lif/_C.so plus _native_build.json), so
bench_lif.py's `spikingjelly-cuda` row appears. Needs a CUDA GPU or
TORCH_CUDA_ARCH_LIST, nvcc and a full CUDA toolkit.
"""
from __future__ import annotations

import json
import os
import runpy
import shutil
import sys
import tempfile


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not os.path.isfile(os.path.join(argv[0], "ops", "lif", "native.cu")):
        print(__doc__)
        print("error: give the unpacked SpikingJelly 2.x source folder (with ops/lif/native.cu)")
        return 2
    src = os.path.abspath(argv[0])
    import torch
    from torch.utils.cpp_extension import _get_cuda_arch_flags, load

    import spikingjelly

    dest = os.path.join(os.path.dirname(spikingjelly.__file__), "_ops", "lif")
    if not os.path.isdir(dest):
        print(f"error: {dest} missing: not SpikingJelly 2.x")
        return 2
    if torch.cuda.is_available():
        # Build for exactly this GPU, machine code plus PTX. SpikingJelly's loader
        # matches `code=sm_NN` / `code=compute_NN` with nothing after the digits,
        # so an inherited arch list such as "9.0a" (code=sm_90a) builds a binary
        # it then refuses ("no supported binary/PTX target").
        major, minor = torch.cuda.get_device_capability()
        os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}+PTX"
    arch_flags = _get_cuda_arch_flags()
    print("arch flags:", " ".join(arch_flags), "| TORCH_CUDA_ARCH_LIST =",
          os.environ.get("TORCH_CUDA_ARCH_LIST"))
    # ATen/cuda/CUDAContext.h wants cusparse.h etc.; a toolkit without them may
    # still have them from the nvidia-* pip packages torch depends on.
    extra = []
    try:
        import nvidia
        for root in nvidia.__path__:
            extra += sorted(os.path.join(root, d, "include") for d in os.listdir(root)
                            if os.path.isdir(os.path.join(root, d, "include")))
    except ImportError:
        pass
    build = tempfile.mkdtemp(prefix="sj_lif_native_")
    load(name="sj_lif_native", sources=[os.path.join(src, "ops", "lif", "native.cu")],
         extra_cuda_cflags=["-O3", "--fmad=false", *arch_flags],
         extra_include_paths=[os.path.join(src, "ops"), os.path.join(src, "ops", "lif"), *extra],
         build_directory=build, is_python_module=False, verbose=False)
    shutil.copy(os.path.join(build, "sj_lif_native.so"), os.path.join(dest, "_C.so"))
    abi = runpy.run_path(os.path.join(src, "ops", "__init__.py"))["_NATIVE_ABI"]
    with open(os.path.join(dest, "_native_build.json"), "w") as f:
        json.dump(dict(torch_version=str(torch.__version__), operator_abi=abi,
                       cuda_version=torch.version.cuda, cuda_arch_flags=arch_flags,
                       torch_cuda_arch_list=os.environ.get("TORCH_CUDA_ARCH_LIST")), f, indent=2)
    print(f"built SpikingJelly's native LIF into {dest}")
    if torch.cuda.is_available():
        # Ask SpikingJelly's own loader now, so a refusal shows here and not as a
        # missing benchmark row.
        from spikingjelly._ops.native_loader import _check_native_device
        _check_native_device(dict(cuda_arch_flags=arch_flags), torch.cuda.current_device())
        print("SpikingJelly's loader accepts it for this GPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
