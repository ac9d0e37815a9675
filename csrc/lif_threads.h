// What one CUDA thread of the LIF kernels does, as host+device code, and how
// the launcher picks the thread's width. lif_cuda_kernels.cuh launches these; the CPU
// build runs the same thread mapping in a loop (the tcl_fast_testing ops in
// lif_thread_mapping_test_ops.cpp), so the packed row access and the
// neuron-to-thread mapping are tested on machines without a GPU.
#pragma once

#include <stdint.h>

#include <initializer_list>
#include <type_traits>

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

// The neurons per thread the launcher uses: the packed width when possible.
template <typename S>
inline int forward_thread_lanes(int64_t N, const void* x, const void* spikes) {
  return rows_packable(N, kForwardLanes<S>, sizeof(S), {x, spikes}) ? kForwardLanes<S> : 1;
}
// The cuda_bwd_lanes knob (lif_tuning.h) 2 or 1 caps the backward's packed
// width: fewer lanes, fewer registers per thread, more threads resident.
// bench_lif.py times the widths side by side.
inline int backward_lanes_cap() {
  return tuning().cuda_bwd_lanes.load(std::memory_order_relaxed);
}

// The learnable-decay gradient needs a second 16-step register buffer: that
// rarer case keeps one neuron per thread. Else the widest of 4, 2 neurons
// whose rows are aligned.
template <typename S>
inline int backward_thread_lanes(int64_t N, bool need_decay_grad, const void* grad_spikes,
                                 const void* x, const void* grad_x) {
  if (need_decay_grad) return 1;
  for (int lanes = backward_lanes_cap(); lanes > 1; lanes /= 2)
    if (rows_packable(N, lanes, sizeof(S), {grad_spikes, x, grad_x})) return lanes;
  return 1;
}

// Calls f with the width the launcher picked (forward_thread_lanes /
// backward_thread_lanes) as a compile-time constant, so the CUDA launcher and
// its CPU run instantiate the same threads. The backward also gets DecayGrad,
// whether that width computes the decay gradient (only one lane does).
template <typename S, typename F>
inline void with_forward_width(int lanes, F&& f) {
  if (lanes == kForwardLanes<S>) f(std::integral_constant<int, kForwardLanes<S>>{});
  else f(std::integral_constant<int, 1>{});
}
template <typename F>
inline void with_backward_width(int lanes, F&& f) {
  if (lanes == kBackwardLanes) f(std::integral_constant<int, kBackwardLanes>{}, std::false_type{});
  else if (lanes == 2) f(std::integral_constant<int, 2>{}, std::false_type{});
  else f(std::integral_constant<int, 1>{}, std::true_type{});
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
                   Lanewise ? 1 : kBackwardTimeBatch, true, Lanewise>(
      grad_spikes + n, at_neuron(grad_v_last, n), x + n, at_neuron(v0, n), grad_x + n,
      at_neuron(grad_v0, n), at_neuron(grad_decay_partial, n), at_neuron(v_chunk, n), T, N, p,
      nullptr, lanes.at(n));
}

}  // namespace lif
}  // namespace tcl_fast
