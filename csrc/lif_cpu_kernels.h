// The CPU LIF kernels as templates over the storage type S, shared by the
// per-dtype translation units (lif_cpu_<dtype>.cpp, each instantiating one S so
// the build compiles them in parallel) and the op registrations in lif_cpu.cpp.
// Parallel over blocks of neurons (at::parallel_for, OpenMP in torch builds);
// inside a block the time loop runs over a group of neighbouring neurons (kLanes,
// or wider groups for large N) whose per-step loop vectorises (see lif_math.h).
#pragma once

#include <ATen/Parallel.h>

#include "lif_common.h"
#include "lif_isa.h"
#include "lif_threads.h"
#include "lif_tuning.h"

namespace tcl_fast {
namespace lif {
namespace cpu {

// bfloat16 storage with conversions in plain integer arithmetic, so the lane
// loops vectorise (c10::BFloat16's conversions do not); round to nearest even,
// NaN kept NaN, exactly like c10. The drivers find its store_as overload by
// argument-dependent lookup.
struct BFloat16Bits {
  uint16_t bits;
  inline __attribute__((always_inline)) explicit operator float() const {
    return __builtin_bit_cast(float, static_cast<uint32_t>(bits) << 16);
  }
};

inline __attribute__((always_inline)) uint16_t bfloat16_bits_of(float f) {
  const uint32_t u = __builtin_bit_cast(uint32_t, f);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  const uint32_t nan_mask = 0u - static_cast<uint32_t>((u & 0x7FFFFFFFu) > 0x7F800000u);
  return static_cast<uint16_t>((((u >> 16) | 0x40u) & nan_mask) | (rounded & ~nan_mask));
}

// Writes the bits straight into the tensor: no temporary struct in the lane loop.
inline __attribute__((always_inline)) void store_as(BFloat16Bits& dst, float value) {
  dst.bits = bfloat16_bits_of(value);
}
static_assert(sizeof(BFloat16Bits) == sizeof(at::BFloat16), "bfloat16 storage");

// Whether with_kernel_storage takes float64: the CPU ops build it, the CUDA
// thread-mapping test ops do not (the GPU kernels have no float64).
enum class Float64 : bool { kRejected = false, kSupported = true };

// Calls f with a value of the kernels' storage type for x's dtype (bfloat16:
// BFloat16Bits, the others their own type); float64 only where the caller
// builds it, else a clear error naming the op.
template <Float64 WithDouble, typename F>
void with_kernel_storage(const at::Tensor& x, const char* name, F&& f) {
  constexpr bool with_double = WithDouble == Float64::kSupported;
  switch (x.scalar_type()) {
    case at::kFloat: f(float{}); return;
    case at::kHalf: f(c10::Half{}); return;
    case at::kBFloat16: f(BFloat16Bits{}); return;
    case at::kDouble:
      if constexpr (with_double) {
        f(double{});
        return;
      }
      break;
    default: break;
  }
  TORCH_CHECK(false, name, ": x must be ",
              with_double ? "floating point" : "float32, float16 or bfloat16", " only, got ",
              x.scalar_type());
}

template <typename S>
const S* data_as(const at::Tensor& t) { return static_cast<const S*>(t.const_data_ptr()); }
template <typename S>
S* mutable_data_as(at::Tensor& t) { return static_cast<S*>(t.mutable_data_ptr()); }
template <typename S>
const S* optional_data_as(const std::optional<at::Tensor>& t) {
  return t.has_value() ? data_as<S>(*t) : nullptr;
}

// Neurons per vectorised group. Wide groups when T >= 8 and there are enough
// of them to share out: each row access is then a long contiguous run and the
// per-group work (membrane setup, loop control) is spread over more neurons.
// Timed side by side (bench_lif.py, cpp vs cpp-narrow, 2 cores, 2^16 and 2^20
// neurons, float32 and bfloat16): at T = 8..32 forward 0.54-0.86x the time of
// 128-neuron groups, forward+backward 0.64-1.04x; at T = 4 and 2^20 neurons
// wide groups were slower, so T < 8 stays narrow: forward 1.25x (float32) and
// 1.74x (bfloat16) the time, forward+backward 1.04-1.07x (bench_lif.py --T 4
// --neurons 1048576 --dtypes float32 bfloat16 --backends cpp cpp-wide;
// results/lif_wide_t4_cpu.json; the cpu_groups knob wide forces them). The backward
// keeps its 16-step h chunk (and dh/dk with a learnable tau) on the stack:
// 64 KiB each.
constexpr int kLanes = 128;  // narrow groups: small N or T, and the ends of wide ones
constexpr int kForwardWideLanes = 4096;
template <typename A>
constexpr int kBackwardWideLanes = static_cast<int>(65536 / (kTimeChunk * sizeof(A)));
constexpr int64_t kGroupsPerTask = 16;  // narrow groups per parallel work item
constexpr int64_t kWideGroupsPerThread = 4;  // fewer than this per thread: go narrow
constexpr int64_t kWideMinSteps = 8;
static_assert(kForwardWideLanes % kLanes == 0 && kBackwardWideLanes<float> % kLanes == 0 &&
                  kBackwardWideLanes<double> % kLanes == 0,
              "a wide group's tail runs as narrow groups");

// Whether a kernel over T steps of N neurons runs wide groups of `wide`
// neurons. The cpu_groups knob (lif_tuning.h) narrow forces 128; wide drops
// the T rule (not the N one) so the benchmarks can time what T < 8 would give.
inline bool use_wide_groups(int64_t T, int64_t N, int wide) {
  const CpuGroups groups = tuning().cpu_groups.load(std::memory_order_relaxed);
  if (groups == CpuGroups::kNarrow) return false;
  const bool enough_neurons = N >= int64_t(wide) * kWideGroupsPerThread * at::get_num_threads();
  return enough_neurons && (T >= kWideMinSteps || groups == CpuGroups::kWide);
}

// Runs f(width, g0, g1) in parallel over the groups of N neurons, width a
// std::integral_constant: kWide wide groups one per work item when
// use_wide_groups says so, else kLanes-neuron groups kGroupsPerTask at a time.
template <int kWide, typename F>
void parallel_over_groups(int64_t T, int64_t N, F&& f) {
  if (use_wide_groups(T, N, kWide)) {
    at::parallel_for(0, (N + kWide - 1) / kWide, 1, [&](int64_t g0, int64_t g1) {
      f(std::integral_constant<int, kWide>{}, g0, g1);
    });
  } else {
    at::parallel_for(0, (N + kLanes - 1) / kLanes, kGroupsPerTask, [&](int64_t g0, int64_t g1) {
      f(std::integral_constant<int, kLanes>{}, g0, g1);
    });
  }
}

// The group loops are compiled three times, for AVX-512, AVX2+FMA and the
// build's baseline ISA, and cpu_isa() picks one at run time, so a portable
// build still runs 16- or 8-wide where the CPU allows. The backward is
// compute-bound (the sigmoid surrogate's exp and divide): AVX-512 took the
// sigmoid backward from 6.6 to 5.2 ms at T=8, 2^20 neurons on 2 cores, fused
// multiply-adds in its gradient math (lif_math.h mul_add) from 4.5 to about
// 3.3 ms (benchmarks/bench_lif_backward.py). The baseline x86-64 build has no
// FMA, where each fmaf would be a library call that stops the lane loop
// vectorising, so it runs the unfused arithmetic. Hand-made versions rather
// than target_clones because the fused / unfused choice is a template argument.
// CpuIsa is in lif_tuning.h, whose cpu_isa knob caps it.

#if TCL_CPU_MULTI_ISA  // lif_isa.h
#define TCL_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,fma")))
#define TCL_TARGET_AVX2 __attribute__((target("avx2,fma")))
#else
#define TCL_TARGET_AVX512
#define TCL_TARGET_AVX2
#endif

// Whether the baseline build itself has FMA (non-x86 targets such as aarch64,
// or an x86 build with -mfma / -march=native).
#if defined(__FMA__) || defined(__aarch64__) || defined(__ARM_FEATURE_FMA)
constexpr bool kBaselineHasFma = true;
#else
constexpr bool kBaselineHasFma = false;
#endif

// The widest ISA this CPU runs, capped by the cpu_isa knob (lif_tuning.h) so
// tests and benchmarks can run the narrower builds on a wide CPU.
CpuIsa cpu_isa();

// Calls f with std::integral_constant<CpuIsa, cpu_isa()>.
template <typename F>
void with_cpu_isa(F&& f) {
  switch (cpu_isa()) {
#if TCL_CPU_MULTI_ISA
    case CpuIsa::kAvx512: f(std::integral_constant<CpuIsa, CpuIsa::kAvx512>{}); return;
    case CpuIsa::kAvx2Fma: f(std::integral_constant<CpuIsa, CpuIsa::kAvx2Fma>{}); return;
#endif
    default: f(std::integral_constant<CpuIsa, CpuIsa::kBaseline>{}); return;
  }
}

// The bodies are inlined into one wrapper per ISA (below); no lambdas inside
// them: a lambda's body is a separate function that would not get the target.
// Groups g0..g1 of W neurons. Narrow groups (W = kLanes): a last group cut
// short by N runs one neuron at a time. Wide groups: the caller passes full
// groups only; its wrapper hands a last group cut short to the narrow groups'
// wrapper, so each wide instantiation holds one copy of the neuron loop, not
// three (wide, 128 and 1 lanes), which cut the compile time of the kernel
// files (docs/benchmarks.md, build). Lanewise (per-neuron decay / input
// affine, lif_math.h) runs narrow groups only: built for one width, not two.
template <int W, typename S, typename A, int SG, bool DecayInput, bool HardReset, bool Smooth,
          bool Lanewise>
inline __attribute__((always_inline)) void forward_groups_body(
    const S* x, const S* v0, S* spikes, S* v_last, int64_t T, int64_t N, int64_t g0, int64_t g1,
    const Params<A>& p, const LaneParams<A>& lanes) {
#define TCL_FORWARD_GROUP(LANES)                                                                 \
  forward_neurons<A, SG, DecayInput, HardReset, Smooth, LANES, false, 1, Lanewise>(             \
      x + n, at_neuron(v0, n), spikes + n, v_last + n, T, N, p, lanes.at(n))
  for (int64_t g = g0; g < g1; ++g) {
    int64_t n = g * W;
    if (W != kLanes || n + W <= N) {
      TCL_FORWARD_GROUP(W);
      continue;
    }
    if constexpr (W == kLanes) {
      for (; n < N; ++n) TCL_FORWARD_GROUP(1);
    }
  }
#undef TCL_FORWARD_GROUP
}

template <int W, typename S, typename A, int SG, bool DecayInput, bool HardReset, bool Smooth,
          bool DecayGrad, bool Lanewise, bool Fused>
inline __attribute__((always_inline)) void backward_groups_body(
    const S* grad_spikes, const S* grad_v_last, const S* x, const S* v0, S* grad_x, S* grad_v0,
    A* grad_decay_partial, A* v_chunk, int64_t T, int64_t N, int64_t g0, int64_t g1,
    const Params<A>& p, SurrogateRowFn<A> sg_row, const LaneParams<A>& lanes) {
#define TCL_BACKWARD_GROUP(LANES)                                                                  \
  backward_neurons<A, SG, DecayInput, HardReset, Smooth, LANES, false, DecayGrad, 1, Fused,       \
                   Lanewise>(                                                                      \
      grad_spikes + n, at_neuron(grad_v_last, n), x + n, at_neuron(v0, n), grad_x + n,            \
      at_neuron(grad_v0, n), at_neuron(grad_decay_partial, n), at_neuron(v_chunk, n), T, N, p,    \
      sg_row, lanes.at(n))
  for (int64_t g = g0; g < g1; ++g) {  // as forward_groups_body
    int64_t n = g * W;
    if (W != kLanes || n + W <= N) {
      TCL_BACKWARD_GROUP(W);
      continue;
    }
    if constexpr (W == kLanes) {
      for (; n < N; ++n) TCL_BACKWARD_GROUP(1);
    }
  }
#undef TCL_BACKWARD_GROUP
}

// The surrogate gradients of one row (sg[l] = ds/du at h[l]): the only code
// built once per surrogate; the backward drivers call it through a pointer
// (SG = kSurrogateByRow, lif_math.h).
template <typename A, int SG, bool Fused>
inline __attribute__((always_inline)) void surrogate_row_body(const A* __restrict__ h,
                                                               A* __restrict__ sg, int n,
                                                               const Params<A>& params) {
  const Params<A> p = params;  // a local copy: the stores to sg cannot alias it
  TCL_SIMD
  for (int l = 0; l < n; ++l) sg[l] = surrogate_grad<A, SG, Fused>(h[l], p);
}

// One wrapper per ISA, each with its own target; the body inlines into it.
#define TCL_SURROGATE_ROW_FOR(suffix, target, fused)                                            \
  template <typename A, int SG>                                                                 \
  target void surrogate_row_##suffix(const A* h, A* sg, int n, const Params<A>& p) {            \
    surrogate_row_body<A, SG, fused>(h, sg, n, p);                                              \
  }
// A wide wrapper's last group cut short by N: the narrow wrapper's groups from
// there on (noinline, so it stays one function rather than a copy in each).
#define TCL_FORWARD_GROUPS_FOR(suffix, target)                                                   \
  template <int W, typename S, typename A, int SG, bool DecayInput, bool HardReset, bool Smooth, \
            bool Lanewise>                                                                       \
  target __attribute__((noinline)) void forward_groups_##suffix(                                 \
      const S* x, const S* v0, S* spikes, S* v_last, int64_t T, int64_t N, int64_t g0,          \
      int64_t g1, const Params<A>& p, const LaneParams<A>& lanes) {                              \
    const int64_t full_end = W == kLanes || g1 <= N / W ? g1 : N / W;                           \
    forward_groups_body<W, S, A, SG, DecayInput, HardReset, Smooth, Lanewise>(                   \
        x, v0, spikes, v_last, T, N, g0, full_end, p, lanes);                                    \
    if constexpr (W != kLanes) {                                                                 \
      if (full_end < g1)                                                                         \
        forward_groups_##suffix<kLanes, S, A, SG, DecayInput, HardReset, Smooth, Lanewise>(      \
            x, v0, spikes, v_last, T, N, full_end * (W / kLanes), (N + kLanes - 1) / kLanes, p,  \
            lanes);                                                                              \
    }                                                                                            \
  }
#define TCL_BACKWARD_GROUPS_FOR(suffix, target, fused)                                           \
  template <int W, typename S, typename A, int SG, bool DecayInput, bool HardReset, bool Smooth, \
            bool DecayGrad, bool Lanewise>                                                       \
  target __attribute__((noinline)) void backward_groups_##suffix(                                \
      const S* grad_spikes, const S* grad_v_last, const S* x, const S* v0, S* grad_x,           \
      S* grad_v0, A* grad_decay_partial, A* v_chunk, int64_t T, int64_t N, int64_t g0,          \
      int64_t g1, const Params<A>& p, SurrogateRowFn<A> sg_row, const LaneParams<A>& lanes) {   \
    const int64_t full_end = W == kLanes || g1 <= N / W ? g1 : N / W;                           \
    backward_groups_body<W, S, A, SG, DecayInput, HardReset, Smooth, DecayGrad, Lanewise, fused>( \
        grad_spikes, grad_v_last, x, v0, grad_x, grad_v0, grad_decay_partial, v_chunk, T, N, g0, \
        full_end, p, sg_row, lanes);                                                             \
    if constexpr (W != kLanes) {                                                                 \
      if (full_end < g1)                                                                         \
        backward_groups_##suffix<kLanes, S, A, SG, DecayInput, HardReset, Smooth, DecayGrad,     \
                                 Lanewise>(                                                      \
            grad_spikes, grad_v_last, x, v0, grad_x, grad_v0, grad_decay_partial, v_chunk, T, N, \
            full_end * (W / kLanes), (N + kLanes - 1) / kLanes, p, sg_row, lanes);               \
    }                                                                                            \
  }
TCL_SURROGATE_ROW_FOR(baseline, , kBaselineHasFma)
TCL_FORWARD_GROUPS_FOR(baseline, )
TCL_BACKWARD_GROUPS_FOR(baseline, , kBaselineHasFma)
#if TCL_CPU_MULTI_ISA
TCL_SURROGATE_ROW_FOR(avx2, TCL_TARGET_AVX2, true)
TCL_FORWARD_GROUPS_FOR(avx2, TCL_TARGET_AVX2)
TCL_BACKWARD_GROUPS_FOR(avx2, TCL_TARGET_AVX2, true)
TCL_SURROGATE_ROW_FOR(avx512, TCL_TARGET_AVX512, true)
TCL_FORWARD_GROUPS_FOR(avx512, TCL_TARGET_AVX512)
TCL_BACKWARD_GROUPS_FOR(avx512, TCL_TARGET_AVX512, true)
#endif
#undef TCL_SURROGATE_ROW_FOR
#undef TCL_FORWARD_GROUPS_FOR
#undef TCL_BACKWARD_GROUPS_FOR

// The row function of surrogate `id` built for ISA I; nullptr for an unknown id.
template <CpuIsa I, typename A>
SurrogateRowFn<A> surrogate_row_fn(int64_t id) {
  SurrogateRowFn<A> fn = nullptr;
  with_surrogate(id, [&](auto sg) {
    constexpr int SG = decltype(sg)::value;
#if TCL_CPU_MULTI_ISA
    if constexpr (I == CpuIsa::kAvx512) fn = &surrogate_row_avx512<A, SG>;
    else if constexpr (I == CpuIsa::kAvx2Fma) fn = &surrogate_row_avx2<A, SG>;
    else fn = &surrogate_row_baseline<A, SG>;
#else
    fn = &surrogate_row_baseline<A, SG>;
#endif
  });
  return fn;
}

template <CpuIsa I, int W, typename S, typename A, int SG, bool DecayInput, bool HardReset,
          bool Smooth, bool Lanewise>
void forward_groups(const S* x, const S* v0, S* spikes, S* v_last, int64_t T, int64_t N, int64_t g0,
                    int64_t g1, const Params<A>& p, const LaneParams<A>& lanes) {
#define TCL_FORWARD_GROUPS(suffix)                                                             \
  forward_groups_##suffix<W, S, A, SG, DecayInput, HardReset, Smooth, Lanewise>(              \
      x, v0, spikes, v_last, T, N, g0, g1, p, lanes)
#if TCL_CPU_MULTI_ISA
  if constexpr (I == CpuIsa::kAvx512) return TCL_FORWARD_GROUPS(avx512);
  if constexpr (I == CpuIsa::kAvx2Fma) return TCL_FORWARD_GROUPS(avx2);
#endif
  TCL_FORWARD_GROUPS(baseline);
#undef TCL_FORWARD_GROUPS
}

template <CpuIsa I, int W, typename S, typename A, int SG, bool DecayInput, bool HardReset,
          bool Smooth, bool DecayGrad, bool Lanewise>
void backward_groups(const S* grad_spikes, const S* grad_v_last, const S* x, const S* v0,
                     S* grad_x, S* grad_v0, A* grad_decay_partial, A* v_chunk, int64_t T, int64_t N,
                     int64_t g0, int64_t g1, const Params<A>& p, SurrogateRowFn<A> sg_row,
                     const LaneParams<A>& lanes) {
#define TCL_BACKWARD_GROUPS(suffix)                                                               \
  backward_groups_##suffix<W, S, A, SG, DecayInput, HardReset, Smooth, DecayGrad, Lanewise>(     \
      grad_spikes, grad_v_last, x, v0, grad_x, grad_v0, grad_decay_partial, v_chunk, T, N, g0, g1, \
      p, sg_row, lanes)
#if TCL_CPU_MULTI_ISA
  if constexpr (I == CpuIsa::kAvx512) return TCL_BACKWARD_GROUPS(avx512);
  if constexpr (I == CpuIsa::kAvx2Fma) return TCL_BACKWARD_GROUPS(avx2);
#endif
  TCL_BACKWARD_GROUPS(baseline);
#undef TCL_BACKWARD_GROUPS
}

// Which ISAs S's kernels are built for. A call the build has no kernel for runs
// the float32 kernels on float32 copies instead (lif_cpu.cpp runs_via_float32),
// which gives the same values: the 16-bit kernels compute in float32 and round
// once at each store, as the copy back does (tests/ops/test_lif.py holds the
// bfloat16 kernels to it bit for bit; scripts/lif_outputs_ab.py compares builds).
//  - kEveryIsa: float32, float64 (its one build, below), and every storage type
//    on single-ISA targets (aarch64).
//  - kSimdOnly: bfloat16 on x86, the CPU training dtype (autocast's default on
//    the CPU): AVX2 and AVX-512 only. The baseline ISA's lane loops convert in
//    scalar code anyway, and its build was a quarter of the file's compile time.
//  - kNone: float16 on x86. Training on the CPU in float16 is not offered (the
//    CLI's --amp fp16 needs a GPU; torch's CPU autocast defaults to bfloat16),
//    and its kernels were a fifth of the build's compile time (docs/benchmarks.md,
//    build). A float16 CPU call still works, through float32.
enum class StorageBuild { kEveryIsa, kSimdOnly, kNone };
template <typename S>
constexpr StorageBuild storage_build() {
  if constexpr (!TCL_CPU_MULTI_ISA || sizeof(S) != 2) return StorageBuild::kEveryIsa;
  else if constexpr (std::is_same<S, c10::Half>::value) return StorageBuild::kNone;
  else return StorageBuild::kSimdOnly;
}

// Whether a call on S storage runs through float32 on this CPU (capped by the
// cpu_isa knob).
template <typename S>
bool runs_via_float32_on_this_cpu() {
  constexpr StorageBuild b = storage_build<S>();
  return b == StorageBuild::kNone || (b == StorageBuild::kSimdOnly && cpu_isa() == CpuIsa::kBaseline);
}

// Calls f with std::integral_constant<CpuIsa, ...>: cpu_isa() for the
// training dtypes; float64 (gradcheck and reference checks) is built for the
// baseline ISA only, a third of its compile time; bfloat16 for the SIMD ISAs
// only (storage_build).
template <typename S, typename F>
void with_cpu_isa_for(F&& f) {
  if constexpr (std::is_same<S, double>::value) {
    f(std::integral_constant<CpuIsa, CpuIsa::kBaseline>{});
  } else if constexpr (storage_build<S>() == StorageBuild::kSimdOnly) {
    with_cpu_isa([&](auto isa) {
      if constexpr (decltype(isa)::value == CpuIsa::kBaseline) {
        TORCH_CHECK(false, "tcl_fast::lif: internal error: 16-bit storage on the baseline ISA must run "
                    "through float32 (runs_via_float32)");
      } else {
        f(isa);
      }
    });
  } else {
    with_cpu_isa(f);
  }
}

template <typename S, typename A, int SG, bool DecayInput, bool HardReset, bool Smooth, bool Lanewise>
void forward_cpu_typed(const at::Tensor& x, const std::optional<at::Tensor>& v0, at::Tensor& spikes,
                       at::Tensor& v_last, const Params<A>& p, const LaneParams<A>& lanes) {
  const int64_t T = x.size(0), N = num_neurons(x);
  const S* x_p = data_as<S>(x);
  const S* v0_p = optional_data_as<S>(v0);
  S* spikes_p = mutable_data_as<S>(spikes);
  S* v_last_p = mutable_data_as<S>(v_last);
  // Smooth (test) mode and Lanewise: 128-neuron groups only, to build them once.
  constexpr int kWide = Smooth || Lanewise ? kLanes : kForwardWideLanes;
  with_cpu_isa_for<S>([&](auto isa) {
    constexpr CpuIsa I = decltype(isa)::value;
    parallel_over_groups<kWide>(T, N, [&](auto width, int64_t g0, int64_t g1) {
      forward_groups<I, decltype(width)::value, S, A, SG, DecayInput, HardReset, Smooth, Lanewise>(
          x_p, v0_p, spikes_p, v_last_p, T, N, g0, g1, p, lanes);
    });
  });
}

// SG: a surrogate id (smooth mode), or kSurrogateByRow with the surrogate's id
// in surrogate_id. Returns false for an unknown surrogate id.
template <typename S, typename A, int SG, bool DecayInput, bool HardReset, bool Smooth, bool Lanewise>
bool backward_cpu_typed(const at::Tensor& grad_spikes, const std::optional<at::Tensor>& grad_v_last,
                        const at::Tensor& x, const std::optional<at::Tensor>& v0, at::Tensor& grad_x,
                        S* grad_v0_p /* nullptr without v0 */, A* grad_decay_partial, A* v_chunk,
                        const Params<A>& p, int64_t surrogate_id, const LaneParams<A>& lanes) {
  const int64_t T = x.size(0), N = num_neurons(x);
  const S* grad_spikes_p = data_as<S>(grad_spikes);
  const S* grad_v_last_p = optional_data_as<S>(grad_v_last);
  const S* x_p = data_as<S>(x);
  const S* v0_p = optional_data_as<S>(v0);
  S* grad_x_p = mutable_data_as<S>(grad_x);
  constexpr int kWide = Smooth || Lanewise ? kLanes : kBackwardWideLanes<A>;  // as forward
  bool known = true;
  // Without a learnable tau the per-step dh/dk buffer is compiled out.
  with_cpu_isa_for<S>([&](auto isa) {
    constexpr CpuIsa I = decltype(isa)::value;
    SurrogateRowFn<A> sg_row = nullptr;
    if constexpr (SG == kSurrogateByRow) {
      sg_row = surrogate_row_fn<I, A>(surrogate_id);
      if (sg_row == nullptr) {
        known = false;
        return;
      }
    }
    with_bool(grad_decay_partial != nullptr, [&](auto dg) {
      constexpr bool DecayGrad = decltype(dg)::value;
      parallel_over_groups<kWide>(T, N, [&](auto width, int64_t g0, int64_t g1) {
        constexpr int W = decltype(width)::value;
        backward_groups<I, W, S, A, SG, DecayInput, HardReset, Smooth, DecayGrad, Lanewise>(
            grad_spikes_p, grad_v_last_p, x_p, v0_p, grad_x_p, grad_v0_p, grad_decay_partial,
            v_chunk, T, N, g0, g1, p, sg_row, lanes);
      });
    });
  });
  return known;
}

// Smooth (test) mode is built for float64 only, to keep compile time down;
// with per-neuron parameters (Lanewise) for the sigmoid surrogate only.
template <typename S>
constexpr bool smooth_supported() { return std::is_same<S, double>::value; }
template <bool Lanewise, int SG>
constexpr bool smooth_built() { return !Lanewise || SG == kSigmoid; }

// The per-channel arrays of a call (LaneParams) and p.decay for a shared decay;
// returns whether any per-neuron parameter is given (the Lanewise drivers).
template <typename A>
bool lane_params(const at::Tensor& x, const at::Tensor& decay, const OptionalAffine& affine,
                 Params<A>& p, LaneParams<A>& lanes) {
  lanes = lane_params_of<A>(x, decay, affine);
  if (!lanes.decay) p.decay = decay.data_ptr<A>()[0];
  return lanes.decay || lanes.scale || lanes.shift;
}

// One dtype's whole forward / backward (S: the storage type with_kernel_storage picks).
// The backward returns false for an unknown surrogate id.
template <typename S>
void forward_dtype(const at::Tensor& x, const std::optional<at::Tensor>& v0,
                   const at::Tensor& decay, const OptionalAffine& affine, at::Tensor& spikes,
                   at::Tensor& v_last, const OpScalars& a) {
  using A = std::conditional_t<std::is_same<S, double>::value, double, float>;
  auto p = make_params<A>(a);
  LaneParams<A> lanes;
  const bool lanewise = lane_params<A>(x, decay, affine, p, lanes);
  with_driver_switches(lanewise, a.decay_input, a.hard_reset, [&](auto lw, auto di, auto hr) {
    constexpr bool Lanewise = decltype(lw)::value;
    constexpr bool DecayInput = decltype(di)::value, HardReset = decltype(hr)::value;
    if constexpr (smooth_supported<S>()) {
      if (a.smooth) {
        bool built = true;
        const bool known = with_surrogate(a.surrogate, [&](auto sg) {
          constexpr int SG = decltype(sg)::value;
          if constexpr (smooth_built<Lanewise, SG>())
            forward_cpu_typed<S, A, SG, DecayInput, HardReset, true, Lanewise>(
                x, v0, spikes, v_last, p, lanes);
          else built = false;
        });
        TORCH_CHECK(known, "tcl_fast::lif: unknown surrogate id ", a.surrogate);
        TORCH_CHECK(built, kSmoothLanewiseError);
        return;
      }
    }
    // Without smooth mode the forward does not depend on the surrogate.
    forward_cpu_typed<S, A, kSigmoid, DecayInput, HardReset, false, Lanewise>(
        x, v0, spikes, v_last, p, lanes);
  });
}

template <typename S>
bool backward_dtype(const at::Tensor& grad_spikes, const std::optional<at::Tensor>& grad_v_last,
                    const at::Tensor& x, const std::optional<at::Tensor>& v0,
                    const at::Tensor& decay, const OptionalAffine& affine, BackwardBuffers& out,
                    const OpScalars& a) {
  using A = std::conditional_t<std::is_same<S, double>::value, double, float>;
  auto p = make_params<A>(a);
  LaneParams<A> lanes;
  const bool lanewise = lane_params<A>(x, decay, affine, p, lanes);
  lanes.grad_scale = out.grad_scale_ptr<A>();
  lanes.grad_shift = out.grad_shift_ptr<A>();
  lanes.grad_addend = out.grad_addend_ptr();
  A* grad_decay_partial = out.decay_partial_ptr<A>();
  A* v_chunk = out.v_chunk_ptr<A>();
  S* grad_v0_p = static_cast<S*>(out.grad_v0_ptr());
  bool known = true;
  with_driver_switches(lanewise, a.decay_input, a.hard_reset, [&](auto lw, auto di, auto hr) {
    constexpr bool Lanewise = decltype(lw)::value;
    constexpr bool DecayInput = decltype(di)::value, HardReset = decltype(hr)::value;
    if constexpr (smooth_supported<S>()) {
      if (a.smooth) {  // the surrogate's primitive fires inline: one driver per surrogate
        bool built = true;
        known = with_surrogate(a.surrogate, [&](auto sg) {
          constexpr int SG = decltype(sg)::value;
          if constexpr (smooth_built<Lanewise, SG>())
            backward_cpu_typed<S, A, SG, DecayInput, HardReset, true, Lanewise>(
                grad_spikes, grad_v_last, x, v0, out.grad_x, grad_v0_p, grad_decay_partial,
                v_chunk, p, a.surrogate, lanes);
          else built = false;
        });
        TORCH_CHECK(built, kSmoothLanewiseError);
        return;
      }
    }
    // The default surrogate (SpikingJelly's too) keeps its math inline in the
    // driver: through the row function its backward took 1.1-1.2x the time
    // (benchmarks/ab_lif_backward.sh). The others share one driver.
    if (a.surrogate == kSigmoid) {
      known = backward_cpu_typed<S, A, kSigmoid, DecayInput, HardReset, false, Lanewise>(
          grad_spikes, grad_v_last, x, v0, out.grad_x, grad_v0_p, grad_decay_partial, v_chunk,
          p, a.surrogate, lanes);
      return;
    }
    known = backward_cpu_typed<S, A, kSurrogateByRow, DecayInput, HardReset, false, Lanewise>(
        grad_spikes, grad_v_last, x, v0, out.grad_x, grad_v0_p, grad_decay_partial, v_chunk, p,
        a.surrogate, lanes);
  });
  return known;
}

// Each storage type is compiled in its own lif_cpu_<dtype>.cpp.
#define TCL_LIF_CPU_DTYPE(S)                                                                    \
  template void forward_dtype<S>(const at::Tensor&, const std::optional<at::Tensor>&,           \
                                 const at::Tensor&, const OptionalAffine&, at::Tensor&,         \
                                 at::Tensor&, const OpScalars&);                                \
  template bool backward_dtype<S>(const at::Tensor&, const std::optional<at::Tensor>&,           \
                                  const at::Tensor&, const std::optional<at::Tensor>&,          \
                                  const at::Tensor&, const OptionalAffine&, BackwardBuffers&,   \
                                  const OpScalars&);
#define TCL_LIF_CPU_EXTERN(S)                                                                   \
  extern template void forward_dtype<S>(const at::Tensor&, const std::optional<at::Tensor>&,    \
                                        const at::Tensor&, const OptionalAffine&, at::Tensor&,  \
                                        at::Tensor&, const OpScalars&);                         \
  extern template bool backward_dtype<S>(const at::Tensor&, const std::optional<at::Tensor>&,    \
                                         const at::Tensor&, const std::optional<at::Tensor>&,   \
                                         const at::Tensor&, const OptionalAffine&,              \
                                         BackwardBuffers&, const OpScalars&);
TCL_LIF_CPU_EXTERN(float)
TCL_LIF_CPU_EXTERN(double)
TCL_LIF_CPU_EXTERN(c10::Half)
TCL_LIF_CPU_EXTERN(BFloat16Bits)

}  // namespace cpu
}  // namespace lif
}  // namespace tcl_fast
