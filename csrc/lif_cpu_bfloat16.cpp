// The CPU LIF kernels for BFloat16Bits storage (one translation unit per dtype, so
// the build compiles them in parallel; see lif_cpu_kernels.h).
#include "lif_cpu_kernels.h"

namespace tcl_fast {
namespace lif {
namespace cpu {
TCL_LIF_CPU_DTYPE(BFloat16Bits)
}  // namespace cpu
}  // namespace lif
}  // namespace tcl_fast
