// The kernels' tuning knobs: switches for benchmarks and tests that change how
// the kernels run, never what they compute. Each starts from its TCL_FAST_*
// environment variable, read once at first use; tcl_fast.ops.tuning() changes
// them for the whole process (the _set_tuning op, csrc/ops.cpp). No torch
// headers, so the CUDA launchers (nvcc) read them too; lif_tuning.cpp holds
// the values, their names and their one validator each.
#pragma once

#include <atomic>
#include <string>
#include <string_view>

namespace tcl_fast {
namespace lif {

// The CPU kernels' builds, narrowest first (lif_cpu_kernels.h).
enum class CpuIsa : int { kBaseline = 0, kAvx2Fma = 1, kAvx512 = 2 };

// How the CPU kernels group neurons: kAuto wide groups for large N and T >= 8
// (lif_cpu_kernels.h use_wide_groups), kNarrow always 128 neurons, kWide
// wide groups at any T.
enum class CpuGroups : int { kAuto = 0, kNarrow = 1, kWide = 2 };

// Neurons per CUDA backward thread when their rows are aligned (lif_threads.h);
// the cuda_bwd_lanes knob caps it at 2 or 1.
constexpr int kBackwardLanes = 4;

// Atomic so a knob set from one Python thread while another runs kernels is
// no data race; the kernels load each once per call.
struct Tuning {
  std::atomic<CpuIsa> cpu_isa{CpuIsa::kAvx512};  // a cap: the widest build to run
  std::atomic<CpuGroups> cpu_groups{CpuGroups::kAuto};
  std::atomic<int> cuda_bwd_lanes{kBackwardLanes};  // or 2 or 1
  std::atomic<bool> cuda_packed{true};  // false: one neuron per CUDA thread
};

// The process's knobs; the first call reads the environment and throws
// (c10::ValueError) on a value the knob's validator rejects, as every later
// call does until the variable is fixed.
const Tuning& tuning();

// The ops behind tcl_fast.ops.tuning: a knob's value as text, and setting one
// from text through the same validator as its environment variable.
std::string get_tuning(std::string_view knob);
void set_tuning(std::string_view knob, std::string_view value);

}  // namespace lif
}  // namespace tcl_fast
