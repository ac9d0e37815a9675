// The CUDA LIF kernels and their launch logic as templates over the storage
// type S; lif_cuda_<dtype>.cu each instantiate one S (so the build compiles
// them in parallel) and lif_cuda.cu picks one by dtype. One thread per group of
// neighbouring neurons looping over T, neighbouring threads on neighbouring
// neurons so every load and store of a time step is coalesced across the warp.
// The math is lif_math.h, shared with the CPU kernel. No torch headers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <type_traits>

#include "lif_cuda.h"
#include "lif_dispatch.h"
#include "lif_math.h"
#include "lif_threads.h"
#include "lif_tuning.h"

namespace tcl_fast {
namespace lif {
namespace cuda {

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

constexpr int kThreads = kBlockThreads;  // lif_threads.h

template <typename S, int LANES, bool DecayInput, bool HardReset, bool Lanewise>
__global__ void __launch_bounds__(kThreads)
    forward_kernel(const S* __restrict__ x, const S* __restrict__ v0, S* __restrict__ spikes,
                   S* __restrict__ v_last, const float* __restrict__ decay, int64_t T, int64_t N,
                   Params<float> p, LaneParams<float> lanes) {
  if (!lanes.decay) p.decay = *decay;
  forward_thread<S, LANES, DecayInput, HardReset, Lanewise>(
      static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, x, v0, spikes, v_last, T, N, p,
      lanes);
}

// A backward thread holds a 16-step chunk of h in registers (and, with one
// lane, the learnable-tau terms): left alone ptxas takes 120-164 registers,
// one block per multiprocessor. Capped at 128, two blocks fit; the 1- and
// 2-lane kernels then spill nothing, the 4-lane one 8-44 bytes.
constexpr int kBackwardMinBlocks = 2;

template <typename S, int LANES, bool DecayGrad, int SG, bool DecayInput, bool HardReset,
          bool Lanewise>
__global__ void __launch_bounds__(kThreads, kBackwardMinBlocks)
    backward_kernel(const S* __restrict__ grad_spikes, const S* __restrict__ grad_v_last,
                    const S* __restrict__ x, const S* __restrict__ v0, S* __restrict__ grad_x,
                    S* __restrict__ grad_v0, float* __restrict__ grad_decay_partial,
                    float* __restrict__ v_chunk, const float* __restrict__ decay, int64_t T,
                    int64_t N, Params<float> p, LaneParams<float> lanes) {
  if (!lanes.decay) p.decay = *decay;
  backward_thread<S, LANES, DecayGrad, SG, DecayInput, HardReset, Lanewise>(
      static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, grad_spikes, grad_v_last, x,
      v0, grad_x, grad_v0, grad_decay_partial, v_chunk, T, N, p, lanes);
}

inline Params<float> params_of(const LaunchArgs& a) {
  return make_params<float>(a.op);
}

inline const char* last_error() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

template <typename F>
void with_storage_type(DType d, F&& f) {
  switch (d) {
    case DType::kFloat32: f(float{}); break;
    case DType::kFloat16: f(Half{}); break;
    case DType::kBFloat16: f(BFloat16{}); break;
  }
}

inline dim3 grid_of(const LaunchPlan& plan) { return dim3(static_cast<unsigned>(plan.blocks)); }

template <typename S>
void launch_forward(const LaunchArgs& a, const void* x, const void* v0, const float* decay,
                    void* spikes, void* v_last) {
  const auto stream = static_cast<cudaStream_t>(a.stream);
  const Params<float> p = params_of(a);
  const LaunchPlan plan = forward_plan<S>(a.N, a.lanewise(), a.sm_count, x, spikes);
  with_forward_plan<S>(plan, a.op.decay_input, a.op.hard_reset, [&](auto width, auto lw, auto di, auto hr) {
    // decay_t: inside a generic lambda g++ (under nvcc) may see a captured
    // outer parameter's type as a reference.
    constexpr int L = std::decay_t<decltype(width)>::value;
    constexpr bool Lanewise = std::decay_t<decltype(lw)>::value;
    constexpr bool DecayInput = std::decay_t<decltype(di)>::value;
    constexpr bool HardReset = std::decay_t<decltype(hr)>::value;
    forward_kernel<S, L, DecayInput, HardReset, Lanewise><<<grid_of(plan), kThreads, 0, stream>>>(
        static_cast<const S*>(x), static_cast<const S*>(v0), static_cast<S*>(spikes),
        static_cast<S*>(v_last), decay, a.T, a.N, p, a.lanes);
  });
}

// Returns false (launching nothing) for an unknown surrogate id.
template <typename S>
bool launch_backward(const LaunchArgs& a, const void* grad_spikes, const void* grad_v_last,
                     const void* x, const void* v0, const float* decay, void* grad_x,
                     void* grad_v0, float* grad_decay_partial, float* v_chunk) {
  const auto stream = static_cast<cudaStream_t>(a.stream);
  const Params<float> p = params_of(a);
  const LaunchPlan plan = backward_plan<S>(a.N, a.lanewise(), grad_decay_partial != nullptr,
                                           a.sm_count, grad_spikes, x, grad_x);
  return with_surrogate(a.op.surrogate, [&](auto sg) {
    with_backward_plan(plan, a.op.decay_input, a.op.hard_reset,
                       [&](auto width, auto dg, auto lw, auto di, auto hr) {
      constexpr int SG = std::decay_t<decltype(sg)>::value;
      constexpr int L = std::decay_t<decltype(width)>::value;
      constexpr bool DecayGrad = std::decay_t<decltype(dg)>::value;
      constexpr bool Lanewise = std::decay_t<decltype(lw)>::value;
      constexpr bool DecayInput = std::decay_t<decltype(di)>::value;
      constexpr bool HardReset = std::decay_t<decltype(hr)>::value;
      backward_kernel<S, L, DecayGrad, SG, DecayInput, HardReset, Lanewise>
          <<<grid_of(plan), kThreads, 0, stream>>>(
          static_cast<const S*>(grad_spikes), static_cast<const S*>(grad_v_last),
          static_cast<const S*>(x), static_cast<const S*>(v0), static_cast<S*>(grad_x),
          static_cast<S*>(grad_v0), plan.decay_grad ? grad_decay_partial : nullptr, v_chunk,
          decay, a.T, a.N, p, a.lanes);
    });
  });
}

#define TCL_LIF_CUDA_DTYPE(S)                                                                  \
  template void launch_forward<S>(const LaunchArgs&, const void*, const void*, const float*,   \
                                  void*, void*);                                               \
  template bool launch_backward<S>(const LaunchArgs&, const void*, const void*, const void*,   \
                                   const void*, const float*, void*, void*, float*, float*);
#define TCL_LIF_CUDA_EXTERN(S)                                                                 \
  extern template void launch_forward<S>(const LaunchArgs&, const void*, const void*,          \
                                         const float*, void*, void*);                          \
  extern template bool launch_backward<S>(const LaunchArgs&, const void*, const void*,         \
                                          const void*, const void*, const float*, void*,       \
                                          void*, float*, float*);
TCL_LIF_CUDA_EXTERN(float)
TCL_LIF_CUDA_EXTERN(Half)
TCL_LIF_CUDA_EXTERN(BFloat16)

}  // namespace cuda
}  // namespace lif
}  // namespace tcl_fast
