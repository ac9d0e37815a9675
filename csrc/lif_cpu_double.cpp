// The CPU LIF kernels for double storage (one translation unit per dtype, so
// the build compiles them in parallel; see lif_cpu_kernels.h).
#include "lif_cpu_kernels.h"

namespace tcl_fast {
namespace lif {
namespace cpu {
TCL_LIF_CPU_DTYPE(double)
}  // namespace cpu
}  // namespace lif
}  // namespace tcl_fast
