// The CPU LIF kernels for c10::Half storage (one translation unit per dtype, so
// the build compiles them in parallel; see lif_cpu_kernels.h). Built on
// single-ISA targets (aarch64) only: on x86 a float16 CPU call runs the float32
// kernels on float32 copies (lif_cpu_kernels.h storage_build), and this unit
// compiles to nothing, without even parsing torch's headers.
#include "lif_isa.h"

#if !TCL_CPU_MULTI_ISA
#include "lif_cpu_kernels.h"

namespace tcl_fast {
namespace lif {
namespace cpu {
TCL_LIF_CPU_DTYPE(c10::Half)
}  // namespace cpu
}  // namespace lif
}  // namespace tcl_fast
#endif
