// The CUDA LIF kernels for BFloat16 storage (one translation unit per dtype, so the
// build compiles them in parallel; see lif_cuda_kernels.cuh).
#include "lif_cuda_kernels.cuh"

namespace tcl_fast {
namespace lif {
namespace cuda {
TCL_LIF_CUDA_DTYPE(BFloat16)
}  // namespace cuda
}  // namespace lif
}  // namespace tcl_fast
