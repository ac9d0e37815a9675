// Plain launcher interface between the torch-facing registration
// (lif_cuda_ops.cpp) and the kernels (lif_cuda*.cu). No torch headers here, so
// nvcc compiles the .cu files in seconds rather than minutes.
#pragma once

#include <stdint.h>

#include "lif_math.h"  // OpScalars (no torch headers either)

namespace tcl_fast {
namespace lif {
namespace cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// The op's scalars (OpScalars, from the shared prologue) and where to run them.
struct LaunchArgs {
  OpScalars op;
  DType dtype;
  int64_t T;
  int64_t N;
  // Per-neuron parameters (device pointers, each nullable; lif_math.h): a
  // decay per neuron, the input affine of lif_affine_* and its gradient sums.
  // Any of decay/scale/shift set runs the Lanewise kernels.
  LaneParams<float> lanes;
  bool lanewise() const { return lanes.decay || lanes.scale || lanes.shift; }
  void* stream;  // cudaStream_t
  int sm_count;  // the device's multiprocessors: the launch plan sizes the grid by them
};

// What a launch reports: error nullptr on success, else the CUDA error string;
// pending: the error was already there before this op launched anything (an
// earlier kernel's or call's, reported here because CUDA reports errors late),
// so the op must not be blamed for it.
struct LaunchResult {
  const char* error = nullptr;
  bool pending = false;
};

// v0 may be nullptr (every membrane starts at v_reset). decay: device float32,
// one value (read when a.lanes.decay is nullptr).
LaunchResult forward(const LaunchArgs& a, const void* x, const void* v0, const float* decay,
                     void* spikes, void* v_last);

// grad_v_last, grad_v0 and grad_decay_partial: [N] or nullptr (no gradient in
// from the final membrane / none wanted); v_chunk: [ceil(T/16) - 1, N] float
// scratch (nullptr when T <= 16).
LaunchResult backward(const LaunchArgs& a, const void* grad_spikes, const void* grad_v_last,
                      const void* x, const void* v0, const float* decay, void* grad_x,
                      void* grad_v0, float* grad_decay_partial, float* v_chunk);

}  // namespace cuda
}  // namespace lif
}  // namespace tcl_fast
