// The CPU LIF kernels for double storage (one translation unit per dtype, so
// the build compiles them in parallel; see lif_cpu_kernels.h).
//
// float64 is the gradcheck and reference dtype, the only one with smooth mode
// (a driver per surrogate), so -O1 (the pragma precedes the includes): 35 s of
// CPU to compile instead of 56 s at -O2. Its lane loops are `omp simd` loops,
// which GCC vectorises at -O1 too; the rounding is the same (no fast-math at
// any level).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("O1")
#endif
#include "lif_cpu_kernels.h"

namespace tcl_fast {
namespace lif {
namespace cpu {
TCL_LIF_CPU_DTYPE(double)
}  // namespace cpu
}  // namespace lif
}  // namespace tcl_fast
