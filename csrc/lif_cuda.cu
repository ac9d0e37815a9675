// The launchers behind lif_cuda.h: pick the kernels of x's dtype (compiled in
// lif_cuda_<dtype>.cu from lif_cuda_kernels.cuh).
#include "lif_cuda_kernels.cuh"

namespace tcl_fast {
namespace lif {
namespace cuda {

// An error already set before the launch is named as pending, not as this op's.
LaunchResult forward(const LaunchArgs& a, const void* x, const void* v0, const float* decay,
                     void* spikes, void* v_last) {
  if (const char* pending = last_error()) return {pending, true};
  if (a.N == 0) return {};
  with_storage_type(a.dtype, [&](auto tag) {
    launch_forward<decltype(tag)>(a, x, v0, decay, spikes, v_last);
  });
  return {last_error(), false};
}

LaunchResult backward(const LaunchArgs& a, const void* grad_spikes, const void* grad_v_last,
                      const void* x, const void* v0, const float* decay, void* grad_x,
                      void* grad_v0, float* grad_decay_partial, float* v_chunk) {
  if (const char* pending = last_error()) return {pending, true};
  if (a.N == 0) return {};
  bool known_surrogate = true;
  with_storage_type(a.dtype, [&](auto tag) {
    known_surrogate = launch_backward<decltype(tag)>(a, grad_spikes, grad_v_last, x, v0, decay,
                                                     grad_x, grad_v0, grad_decay_partial, v_chunk);
  });
  if (!known_surrogate) return {"unknown surrogate id", false};
  return {last_error(), false};
}

}  // namespace cuda
}  // namespace lif
}  // namespace tcl_fast
