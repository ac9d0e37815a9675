// CUDA kernels for the multi-step LIF: one thread per neuron looping over T,
// neighbouring threads on neighbouring neurons so every load and store of a
// time step is coalesced across the warp. The math is lif_math.h, shared with
// the CPU kernel.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "lif_cuda.h"
#include "lif_dispatch.h"
#include "lif_math.h"

namespace tcl_fast {
namespace lif {
namespace cuda {
namespace {

// torch builds define __CUDA_NO_HALF_CONVERSIONS__, so give the 16-bit types
// explicit float conversions that the shared drivers' static_casts can use.
struct Half {
  __half v;
  Half() = default;
  __host__ __device__ Half(float f) : v(__float2half_rn(f)) {}
  __host__ __device__ explicit operator float() const { return __half2float(v); }
};
struct BFloat16 {
  __nv_bfloat16 v;
  BFloat16() = default;
  __host__ __device__ BFloat16(float f) : v(__float2bfloat16_rn(f)) {}
  __host__ __device__ explicit operator float() const { return __bfloat162float(v); }
};
static_assert(sizeof(Half) == 2 && sizeof(BFloat16) == 2, "16-bit storage types");

constexpr int kThreads = 256;

// This thread's element of an optional per-neuron array. nullptr must stay
// nullptr: `nullptr + n` is a non-null wild pointer the drivers would read.
template <typename P>
__device__ __forceinline__ P* at_neuron(P* base, int64_t n) {
  return base ? base + n : nullptr;
}

template <typename S, bool DI, bool HR>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const S* __restrict__ x, const S* __restrict__ v0, S* __restrict__ spikes,
                   S* __restrict__ v_last, const float* __restrict__ decay, int64_t T, int64_t N,
                   Params<float> p) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  p.decay = *decay;
  forward_neurons<float, kSigmoid, DI, HR, false, 1>(x + n, at_neuron(v0, n), spikes + n, v_last + n,
                                                     T, N, p);
}

template <typename S, int SG, bool DI, bool HR>
__global__ void __launch_bounds__(kThreads)
    backward_kernel(const S* __restrict__ grad_spikes, const S* __restrict__ grad_v_last,
                    const S* __restrict__ x, const S* __restrict__ v0, S* __restrict__ grad_x,
                    S* __restrict__ grad_v0, float* __restrict__ grad_decay_partial,
                    float* __restrict__ v_chunk, const float* __restrict__ decay, int64_t T,
                    int64_t N, Params<float> p) {
  const int64_t n = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (n >= N) return;
  p.decay = *decay;
  backward_neurons<float, SG, DI, HR, false, 1>(
      grad_spikes + n, grad_v_last + n, x + n, at_neuron(v0, n), grad_x + n, grad_v0 + n,
      at_neuron(grad_decay_partial, n), at_neuron(v_chunk, n), T, N, p);
}

Params<float> params_of(const LaunchArgs& a) {
  Params<float> p;
  p.decay = 0.f;  // read from device memory by the kernel (it may be learnable)
  p.v_threshold = a.v_threshold;
  p.v_reset = a.v_reset;
  p.alpha = a.alpha;
  p.detach_reset = a.detach_reset;
  return p;
}

template <typename F>
void with_storage_type(DType d, F&& f) {
  switch (d) {
    case DType::kFloat32: f(float{}); break;
    case DType::kFloat16: f(Half{}); break;
    case DType::kBFloat16: f(BFloat16{}); break;
  }
}

const char* last_error() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

dim3 grid_for(int64_t N) { return dim3(static_cast<unsigned>((N + kThreads - 1) / kThreads)); }

}  // namespace

const char* forward(const LaunchArgs& a, const void* x, const void* v0, const float* decay,
                    void* spikes, void* v_last) {
  if (a.N == 0) return nullptr;
  const auto stream = static_cast<cudaStream_t>(a.stream);
  const Params<float> p = params_of(a);
  with_storage_type(a.dtype, [&](auto tag) {
    using S = decltype(tag);
    with_bool(a.decay_input, [&](auto di) {
      with_bool(a.hard_reset, [&](auto hr) {
        forward_kernel<S, decltype(di)::value, decltype(hr)::value>
            <<<grid_for(a.N), kThreads, 0, stream>>>(
                static_cast<const S*>(x), static_cast<const S*>(v0), static_cast<S*>(spikes),
                static_cast<S*>(v_last), decay, a.T, a.N, p);
      });
    });
  });
  return last_error();
}

const char* backward(const LaunchArgs& a, const void* grad_spikes, const void* grad_v_last,
                     const void* x, const void* v0, const float* decay, void* grad_x,
                     void* grad_v0, float* grad_decay_partial, float* v_chunk) {
  if (a.N == 0) return nullptr;
  const auto stream = static_cast<cudaStream_t>(a.stream);
  const Params<float> p = params_of(a);
  bool known_surrogate = true;
  with_storage_type(a.dtype, [&](auto tag) {
    using S = decltype(tag);
    known_surrogate = with_surrogate(a.surrogate, [&](auto sg) {
      with_bool(a.decay_input, [&](auto di) {
        with_bool(a.hard_reset, [&](auto hr) {
          backward_kernel<S, decltype(sg)::value, decltype(di)::value, decltype(hr)::value>
              <<<grid_for(a.N), kThreads, 0, stream>>>(
                  static_cast<const S*>(grad_spikes), static_cast<const S*>(grad_v_last),
                  static_cast<const S*>(x), static_cast<const S*>(v0), static_cast<S*>(grad_x),
                  static_cast<S*>(grad_v0), grad_decay_partial, v_chunk, decay, a.T, a.N, p);
        });
      });
    });
  });
  if (!known_surrogate) return "unknown surrogate id";
  return last_error();
}

}  // namespace cuda
}  // namespace lif
}  // namespace tcl_fast
