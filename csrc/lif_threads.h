// What one CUDA thread of the LIF kernels does, as host+device code, and how
// the launcher picks the thread's width. lif_cuda_kernels.cuh launches these; the CPU
// build runs the same thread mapping in a loop (the tcl_fast_testing ops in
// lif_thread_mapping_test_ops.cpp), so the packed row access and the
// neuron-to-thread mapping are tested on machines without a GPU.
#pragma once

#include <stdint.h>

#include <initializer_list>
#include <type_traits>

#include "lif_dispatch.h"
#include "lif_math.h"
#include "lif_tuning.h"

namespace tcl_fast {
namespace lif {

// This thread's element of an optional per-neuron array. nullptr must stay
// nullptr: `nullptr + n` is a non-null wild pointer the drivers would read.
template <typename P>
TCL_HD P* at_neuron(P* base, int64_t n) {
  return base ? base + n : nullptr;
}

// A thread runs LANES neighbouring neurons with one packed (vector) access per
// row when the rows are aligned, else one neuron. Forward packs 16 bytes; the
// backward packs kBackwardLanes (4, lif_tuning.h) neurons: its 16-step chunk
// of h lives in registers.
template <typename S>
constexpr int kForwardLanes = 16 / static_cast<int>(sizeof(S));  // 4 float32, 8 float16/bfloat16

// Every row of a [T, N] tensor starts aligned to a packed row iff N is a
// multiple of the lanes and each base pointer is aligned to a packed row.
inline bool rows_packable(int64_t N, int lanes, int64_t elem_size,
                          std::initializer_list<const void*> ptrs) {
  if (lanes == 1) return true;
  if (N % lanes != 0) return false;
  for (const void* ptr : ptrs)
    if (reinterpret_cast<uintptr_t>(ptr) % static_cast<uintptr_t>(lanes * elem_size) != 0)
      return false;
  return true;
}

// Threads per block of every LIF kernel launch.
constexpr int kBlockThreads = 256;

// The cuda_packed knob (lif_tuning.h) off forces one neuron per thread:
// bench_lif.py times both layouts side by side, and it is an escape hatch.
inline bool packing_enabled() { return tuning().cuda_packed.load(std::memory_order_relaxed); }

// The cuda_bwd_lanes knob (lif_tuning.h) 2 or 1 caps the backward's packed
// width: fewer lanes, fewer registers per thread, more threads resident.
// bench_lif.py times the widths side by side.
inline int backward_lanes_cap() {
  return tuning().cuda_bwd_lanes.load(std::memory_order_relaxed);
}

inline int64_t blocks_for(int64_t N, int lanes) {
  const int64_t threads = (N + lanes - 1) / lanes;
  return (threads + kBlockThreads - 1) / kBlockThreads;
}

// How a LIF kernel is launched: lif_cuda_kernels.cuh launches it, the CPU run
// of the threads (lif_thread_mapping_test_ops.cpp) loops over it; both get it
// from forward_plan / backward_plan, the one place these choices are made.
struct LaunchPlan {
  int lanes = 1;            // neurons per thread (packed rows when > 1)
  bool lanewise = false;    // per-neuron decay / input affine: the Lanewise drivers
  bool decay_grad = false;  // this width computes the decay gradient (one lane, asked for)
  int64_t blocks = 0;       // of kBlockThreads threads
};

// The widest packed width, from `widest` halving down to `narrowest` (the
// widths the kernels are built for), whose rows are
// aligned and whose grid still gives every multiprocessor a block; else one
// neuron per thread. Packing divides the threads by the lanes: 65,536 float32
// neurons in 4 lanes are 64 blocks, half of a 132-SM GPU idle, each thread
// walking all T steps, where one lane gives 256 blocks. sm_count <= 0 (not
// known) leaves the grid size out of it.
inline int choose_lanes(int widest, int narrowest, int64_t N, int sm_count, int64_t elem_size,
                        std::initializer_list<const void*> ptrs) {
  for (int lanes = widest; lanes > 1 && lanes >= narrowest; lanes /= 2) {
    if (!rows_packable(N, lanes, elem_size, ptrs)) continue;
    if (sm_count > 0 && blocks_for(N, lanes) < sm_count) continue;
    return lanes;
  }
  return 1;
}

// Forward: 16 bytes of neurons per thread (kForwardLanes) or one; one with
// per-neuron parameters (lanewise), whose few values stay in registers.
template <typename S>
inline LaunchPlan forward_plan(int64_t N, bool lanewise, int sm_count, const void* x,
                               const void* spikes) {
  LaunchPlan plan;
  plan.lanewise = lanewise;
  if (!lanewise && packing_enabled())
    plan.lanes = choose_lanes(kForwardLanes<S>, kForwardLanes<S>, N, sm_count, sizeof(S), {x, spikes});
  plan.blocks = blocks_for(N, plan.lanes);
  return plan;
}

// Backward: 4, else 2 (capped by cuda_bwd_lanes), else one neuron per thread.
// The learnable-decay gradient needs a second 16-step register buffer: that
// rarer case, and the lanewise one, keep one neuron per thread.
template <typename S>
inline LaunchPlan backward_plan(int64_t N, bool lanewise, bool need_decay_grad, int sm_count,
                                const void* grad_spikes, const void* x, const void* grad_x) {
  LaunchPlan plan;
  plan.lanewise = lanewise;
  if (!lanewise && !need_decay_grad && packing_enabled())
    plan.lanes = choose_lanes(backward_lanes_cap(), 2, N, sm_count, sizeof(S), {grad_spikes, x, grad_x});
  plan.decay_grad = need_decay_grad && plan.lanes == 1;
  plan.blocks = blocks_for(N, plan.lanes);
  return plan;
}

// Calls f with the plan's width as a compile-time constant, so the CUDA
// launcher and its CPU run instantiate the same threads: forward f(width,
// lanewise, decay_input, hard_reset); backward f(width, decay_grad, lanewise,
// decay_input, hard_reset), DecayGrad whether that width may compute the decay
// gradient (only one lane does). Lanewise threads run one lane: the packed
// Lanewise widths are never instantiated.
template <typename S, typename F>
inline void with_forward_plan(const LaunchPlan& plan, bool decay_input, bool hard_reset, F&& f) {
  with_driver_switches(plan.lanewise, decay_input, hard_reset, [&](auto lw, auto di, auto hr) {
    if constexpr (decltype(lw)::value) {
      f(std::integral_constant<int, 1>{}, lw, di, hr);
    } else {
      if (plan.lanes == kForwardLanes<S>) f(std::integral_constant<int, kForwardLanes<S>>{}, lw, di, hr);
      else f(std::integral_constant<int, 1>{}, lw, di, hr);
    }
  });
}
template <typename F>
inline void with_backward_plan(const LaunchPlan& plan, bool decay_input, bool hard_reset, F&& f) {
  with_driver_switches(plan.lanewise, decay_input, hard_reset, [&](auto lw, auto di, auto hr) {
    if constexpr (decltype(lw)::value) {
      f(std::integral_constant<int, 1>{}, std::true_type{}, lw, di, hr);
    } else {
      if (plan.lanes == kBackwardLanes) f(std::integral_constant<int, kBackwardLanes>{}, std::false_type{}, lw, di, hr);
      else if (plan.lanes == 2) f(std::integral_constant<int, 2>{}, std::false_type{}, lw, di, hr);
      else f(std::integral_constant<int, 1>{}, std::true_type{}, lw, di, hr);
    }
  });
}

// Rows a thread loads before it computes on them (lif_math.h's TB and RB):
// its loads in flight. One-lane threads take more steps per batch, so a thread
// still has about 32 bytes in flight.
template <int LANES>
constexpr int kForwardTimeBatch = LANES == 1 ? 8 : 4;
constexpr int kBackwardTimeBatch = 4;

// Lanewise (per-neuron decay, input affine; lif_math.h): one neuron per
// thread, whose few per-neuron values stay in registers.
template <typename S, int LANES, bool DecayInput, bool HardReset, bool Lanewise = false>
TCL_HD void forward_thread(int64_t thread, const S* __restrict__ x, const S* __restrict__ v0,
                           S* __restrict__ spikes, S* __restrict__ v_last, int64_t T, int64_t N,
                           const Params<float>& p, const LaneParams<float>& lanes) {
  static_assert(!(Lanewise && LANES > 1), "Lanewise threads run one neuron");
  const int64_t n = thread * LANES;
  if (n >= N) return;
  forward_neurons<float, kSigmoid, DecayInput, HardReset, false, LANES, (LANES > 1),
                  kForwardTimeBatch<LANES>, Lanewise>(
      x + n, at_neuron(v0, n), spikes + n, v_last + n, T, N, p, lanes.at(n));
}

// DecayGrad: this instance may compute the decay gradient (LANES == 1 only).
template <typename S, int LANES, bool DecayGrad, int SG, bool DecayInput, bool HardReset,
          bool Lanewise = false>
TCL_HD void backward_thread(int64_t thread, const S* __restrict__ grad_spikes,
                            const S* __restrict__ grad_v_last, const S* __restrict__ x,
                            const S* __restrict__ v0, S* __restrict__ grad_x,
                            S* __restrict__ grad_v0, float* __restrict__ grad_decay_partial,
                            float* __restrict__ v_chunk, int64_t T, int64_t N,
                            const Params<float>& p, const LaneParams<float>& lanes) {
  static_assert(!(Lanewise && LANES > 1), "Lanewise threads run one neuron");
  const int64_t n = thread * LANES;
  if (n >= N) return;
  backward_neurons<float, SG, DecayInput, HardReset, false, LANES, (LANES > 1), DecayGrad,
                   kBackwardTimeBatch, true, Lanewise>(
      grad_spikes + n, at_neuron(grad_v_last, n), x + n, at_neuron(v0, n), grad_x + n,
      at_neuron(grad_v0, n), at_neuron(grad_decay_partial, n), at_neuron(v_chunk, n), T, N, p,
      nullptr, lanes.at(n));
}

}  // namespace lif
}  // namespace tcl_fast
