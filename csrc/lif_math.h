// Multi-step LIF neuron math, shared by the CPU (lif_cpu_kernels.h) and CUDA
// (lif_cuda_kernels.cuh) kernels so that the CPU tests exercise the GPU's arithmetic.
//
// Everything here is a __host__ __device__ inline function of one neuron at
// one time step, in the accumulation type A (float, or double on the CPU).
// No torch headers: this file must stay cheap for nvcc to compile.
//
// Semantics (SpikingJelly multi-step LIF, time-first). With k = 1/tau and
// v_r = v_reset (0 for a soft reset):
//   charge   decay_input:  h = v + (x - (v - v_r)) * k
//            otherwise:    h = v - (v - v_r) * k + x
//   fire     s = (h >= v_th)                      (u = h - v_th)
//   reset    hard: v' = s * v_r + (1 - s) * h;   soft: v' = h - s * v_th
// Backward uses ds/dh := surrogate(u). With `smooth` set, the forward fires
// s = G(u) where G is the surrogate's primitive (G' = surrogate); the analytic
// backward is then the exact derivative, which lets float64 gradcheck verify
// the whole chain rule. It is a test mode, not a training mode.
#pragma once

#include <math.h>

#include <stdint.h>

#include <cmath>
#include <stdexcept>

#if defined(__CUDACC__)
#define TCL_HD __host__ __device__ __forceinline__
#define TCL_UNROLL _Pragma("unroll")
// Unrolled time loops let a GPU thread issue several steps' loads before the
// first one returns (memory-level parallelism; the steps' loads are independent).
#define TCL_TIME_UNROLL _Pragma("unroll 4")
#define TCL_SIMD
#else
// always_inline: each of the CPU kernel's ISA clones (lif_cpu_kernels.h) must get its own
// inlined, 8-wide copy of the drivers, not a call into the baseline build.
#define TCL_HD inline __attribute__((always_inline))
#define TCL_UNROLL
#define TCL_TIME_UNROLL
#if defined(_OPENMP)
#define TCL_SIMD _Pragma("omp simd")
#else
#define TCL_SIMD
#endif
#endif

namespace tcl_fast {
namespace lif {

// Order fixed: Python passes these ids (tcl_fast/ops/lif_reference.py SURROGATES;
// a test checks the two lists agree).
enum Surrogate : int {
  kSigmoid = 0,
  kATan = 1,
  kTriangle = 2,
  kRectangle = 3,
  kSuperSpike = 4,
  kFastSigmoid = 5,
  kErf = 6,
  kSoftSign = 7,
  kPiecewiseLeakyReLU = 8,
  kPiecewiseExp = 9,
};
constexpr int kNumSurrogates = 10;

// exp for float in plain arithmetic (Cody-Waite reduction + Cephes' degree-6
// polynomial, ~1 ulp) so that the CPU lane loops vectorise without fast-math;
// the GPU runs the same code, keeping both devices' surrogate values identical.
TCL_HD float tcl_bits_to_float(int32_t bits) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(bits);
#else
  return __builtin_bit_cast(float, bits);
#endif
}
// a * b + c with one rounding, float or double: on the GPU CUDA's fma
// overloads (__fmaf_rn / __fma_rn), on the host the builtins behind std::fma.
template <typename A>
TCL_HD A tcl_fma(A a, A b, A c) {
#if defined(__CUDA_ARCH__)
  return fma(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

// a * b + c, fused (one rounding) when Fused. The forward recursion never
// fuses: its rounding decides spikes, which must match the reference bit for
// bit (hence -ffp-contract=off / --fmad=false). The backward's gradient math
// (exp polynomial, surrogate, chain rule) is only tolerance-compared; fusing it
// halves its instructions and shortens its dependency chains (the sigmoid
// backward's timings: lif_cpu_kernels.h, benchmarks/bench_lif_backward.py).
// Fused = false gives exactly the unfused arithmetic (for CPUs without FMA,
// where fmaf would be a library call per element).
template <bool Fused, typename A>
TCL_HD A mul_add(A a, A b, A c) {
  if constexpr (Fused) return tcl_fma(a, b, c);
  else return a * b + c;
}

template <bool Fused = false>
TCL_HD float tcl_exp(float a) {
  a = a < -87.0f ? -87.0f : (a > 88.0f ? 88.0f : a);  // keep 2^n a normal float
  const float round_magic = 12582912.0f;                 // 1.5 * 2^23: adding it rounds to an integer
  const float n = mul_add<Fused>(a, 1.44269504088896341f, round_magic) - round_magic;
  // r = a - n ln2, with ln2 in two parts
  const float r = mul_add<Fused>(n, 2.12194440e-4f, mul_add<Fused>(n, -0.693359375f, a));
  float poly = 1.9875691500e-4f;
  poly = mul_add<Fused>(poly, r, 1.3981999507e-3f);
  poly = mul_add<Fused>(poly, r, 8.3334519073e-3f);
  poly = mul_add<Fused>(poly, r, 4.1665795894e-2f);
  poly = mul_add<Fused>(poly, r, 1.6666665459e-1f);
  poly = mul_add<Fused>(poly, r, 5.0000001201e-1f);
  const float exp_r = mul_add<Fused>(poly, r * r, r) + 1.0f;
  return exp_r * tcl_bits_to_float((static_cast<int32_t>(n) + 127) << 23);
}
template <bool Fused = false>
TCL_HD double tcl_exp(double a) { return exp(a); }
TCL_HD float tcl_atan(float a) { return atanf(a); }
TCL_HD double tcl_atan(double a) { return atan(a); }
TCL_HD float tcl_erf(float a) { return erff(a); }
TCL_HD double tcl_erf(double a) { return erf(a); }
template <typename A> TCL_HD A tcl_abs(A a) { return a < A(0) ? -a : a; }
template <typename A> TCL_HD A tcl_max(A a, A b) { return a > b ? a : b; }
template <typename A> TCL_HD A tcl_min(A a, A b) { return a < b ? a : b; }

template <typename A>
struct Params {
  A decay;        // k = 1 / tau
  A v_threshold;
  A v_reset;      // 0 for a soft reset
  A alpha;        // surrogate parameter (alpha, gamma, width, slope or w)
  A beta;         // second surrogate parameter (piecewise_leaky_relu's c), else 0
  bool detach_reset;
};

// The op's scalar arguments as its schema passes them (csrc/ops.cpp): one
// struct for the CPU ops, the CUDA launcher and the test ops, filled by the
// shared prologue (lif_common.h).
struct OpScalars {
  double v_threshold, v_reset, alpha, beta;
  bool hard_reset, decay_input, detach_reset, smooth;
  int64_t surrogate;
};

// The one place a Params is filled from the op's scalars. decay is read from
// its tensor by each kernel: it may be learnable, and on the GPU it lives in
// device memory.
template <typename A>
TCL_HD Params<A> make_params(const OpScalars& a) {
  Params<A> p;
  p.decay = A(0);
  p.v_threshold = static_cast<A>(a.v_threshold);
  p.v_reset = static_cast<A>(a.v_reset);
  p.alpha = static_cast<A>(a.alpha);
  p.beta = static_cast<A>(a.beta);
  p.detach_reset = a.detach_reset;
  return p;
}

// ---- surrogate gradients ds/du and their primitives G(u) -------------------
// Each takes u = h - v_threshold and the neuron's Params (alpha, beta).
template <typename A, int SG> struct SurrogateFn;

template <typename A> struct SurrogateFn<A, kSigmoid> {
  // sigma(alpha u)' = alpha * sigma * (1 - sigma)
  template <bool Fused>
  static TCL_HD A grad(A u, const Params<A>& p) {
    const A sig = A(1) / (A(1) + tcl_exp<Fused>(-p.alpha * u));
    return p.alpha * sig * (A(1) - sig);
  }
  static TCL_HD A primitive(A u, const Params<A>& p) { return A(1) / (A(1) + tcl_exp(-p.alpha * u)); }
};

template <typename A> struct SurrogateFn<A, kATan> {
  // G = atan(pi/2 alpha u) / pi + 1/2,  G' = (alpha/2) / (1 + (pi/2 alpha u)^2)
  template <bool Fused>
  static TCL_HD A grad(A u, const Params<A>& p) {
    const A z = A(1.5707963267948966) * p.alpha * u;
    return (p.alpha * A(0.5)) / mul_add<Fused>(z, z, A(1));
  }
  static TCL_HD A primitive(A u, const Params<A>& p) {
    return tcl_atan(A(1.5707963267948966) * p.alpha * u) * A(0.3183098861837907) + A(0.5);
  }
};

template <typename A> struct SurrogateFn<A, kTriangle> {
  // TET's triangle, alpha = gamma: (1/gamma^2) * max(0, gamma - |u|)
  template <bool Fused>
  static TCL_HD A grad(A u, const Params<A>& p) {
    return tcl_max(A(0), p.alpha - tcl_abs(u)) / (p.alpha * p.alpha);
  }
  static TCL_HD A primitive(A u, const Params<A>& p) {
    const A gamma = p.alpha;
    const A c = tcl_min(tcl_max(u, -gamma), gamma);
    const A g2 = A(2) * gamma * gamma;
    return c < A(0) ? (gamma + c) * (gamma + c) / g2 : A(1) - (gamma - c) * (gamma - c) / g2;
  }
};

template <typename A> struct SurrogateFn<A, kRectangle> {
  // alpha = width: 1/width inside |u| < width/2, else 0
  template <bool Fused>
  static TCL_HD A grad(A u, const Params<A>& p) {
    return tcl_abs(u) < A(0.5) * p.alpha ? A(1) / p.alpha : A(0);
  }
  static TCL_HD A primitive(A u, const Params<A>& p) {
    return tcl_min(A(1), tcl_max(A(0), u / p.alpha + A(0.5)));
  }
};

template <typename A> struct SurrogateFn<A, kSuperSpike> {
  // SpikingJelly's SuperSpike: alpha / (1 + |u|)^2;  G = alpha u / (1 + |u|) + 1/2
  template <bool Fused>
  static TCL_HD A grad(A u, const Params<A>& p) {
    const A d = A(1) + tcl_abs(u);
    return p.alpha / (d * d);
  }
  static TCL_HD A primitive(A u, const Params<A>& p) {
    return p.alpha * u / (A(1) + tcl_abs(u)) + A(0.5);
  }
};

template <typename A> struct SurrogateFn<A, kFastSigmoid> {
  // snnTorch's fast_sigmoid, alpha = slope: 1 / (slope |u| + 1)^2;  G = u / (1 + slope |u|) + 1/2
  template <bool Fused>
  static TCL_HD A grad(A u, const Params<A>& p) {
    const A d = mul_add<Fused>(p.alpha, tcl_abs(u), A(1));
    return A(1) / (d * d);
  }
  static TCL_HD A primitive(A u, const Params<A>& p) {
    return u / (A(1) + p.alpha * tcl_abs(u)) + A(0.5);
  }
};

template <typename A> struct SurrogateFn<A, kErf> {
  // alpha / sqrt(pi) * exp(-(alpha u)^2);  G = erf(alpha u) / 2 + 1/2
  template <bool Fused>
  static TCL_HD A grad(A u, const Params<A>& p) {
    const A z = p.alpha * u;
    return p.alpha * A(0.5641895835477563) * tcl_exp<Fused>(-(z * z));
  }
  static TCL_HD A primitive(A u, const Params<A>& p) { return tcl_erf(p.alpha * u) * A(0.5) + A(0.5); }
};

template <typename A> struct SurrogateFn<A, kSoftSign> {
  // 1 / (2 alpha (1/alpha + |u|)^2);  G = (alpha u / (1 + alpha |u|)) / 2 + 1/2
  template <bool Fused>
  static TCL_HD A grad(A u, const Params<A>& p) {
    const A d = A(1) / p.alpha + tcl_abs(u);
    return A(1) / (A(2) * p.alpha * (d * d));
  }
  static TCL_HD A primitive(A u, const Params<A>& p) {
    return (p.alpha * u / (A(1) + p.alpha * tcl_abs(u))) * A(0.5) + A(0.5);
  }
};

template <typename A> struct SurrogateFn<A, kPiecewiseLeakyReLU> {
  // alpha = w, beta = c: 1/(2w) inside |u| < w, else c
  template <bool Fused>
  static TCL_HD A grad(A u, const Params<A>& p) {
    return tcl_abs(u) < p.alpha ? A(0.5) / p.alpha : p.beta;
  }
  static TCL_HD A primitive(A u, const Params<A>& p) {
    if (tcl_abs(u) < p.alpha) return u / (A(2) * p.alpha) + A(0.5);
    return u < A(0) ? p.beta * (u + p.alpha) : p.beta * (u - p.alpha) + A(1);
  }
};

template <typename A> struct SurrogateFn<A, kPiecewiseExp> {
  // alpha/2 * exp(-alpha |u|);  G = exp(alpha u)/2 below 0, 1 - exp(-alpha u)/2 above
  template <bool Fused>
  static TCL_HD A grad(A u, const Params<A>& p) {
    return p.alpha * A(0.5) * tcl_exp<Fused>(-p.alpha * tcl_abs(u));
  }
  static TCL_HD A primitive(A u, const Params<A>& p) {
    return u < A(0) ? A(0.5) * tcl_exp(p.alpha * u) : A(1) - A(0.5) * tcl_exp(-p.alpha * u);
  }
};

// SG = kSurrogateByRow: the driver is not specialised per surrogate; each row's
// surrogate gradients come from a SurrogateRowFn (sg[l] = ds/du at h[l]), a
// small loop compiled per surrogate. The CPU kernels use it so that the large
// drivers are built once rather than once per surrogate (build time and size);
// the GPU kernels keep the surrogate inline (registers, no row buffer).
constexpr int kSurrogateByRow = -1;
template <typename A>
using SurrogateRowFn = void (*)(const A* h, A* sg, int n, const Params<A>& p);

// ---- one time step ---------------------------------------------------------
// k is the decay (1/tau) of this neuron: p.decay, or its own with a per-neuron
// decay (Lanewise drivers).
template <typename A, bool DecayInput>
TCL_HD A charge(A v, A x, A k, const Params<A>& p) {
  if (DecayInput) return v + (x - (v - p.v_reset)) * k;
  return v - (v - p.v_reset) * k + x;
}

template <typename A, int SG, bool Smooth>
TCL_HD A fire(A h, const Params<A>& p) {
  if constexpr (Smooth) return SurrogateFn<A, SG>::primitive(h - p.v_threshold, p);
  else return static_cast<A>(h >= p.v_threshold);  // branch-free: the lane loop must vectorise
}

template <typename A, bool HardReset>
TCL_HD A reset(A h, A s, const Params<A>& p) {
  if (HardReset) return s * p.v_reset + (A(1) - s) * h;
  return h - s * p.v_threshold;
}

// dh/dk at this step (for the learnable decay).
template <typename A, bool DecayInput>
TCL_HD A charge_grad_decay(A v_prev, A x, const Params<A>& p) {
  if (DecayInput) return x - (v_prev - p.v_reset);
  return -(v_prev - p.v_reset);
}

// Backward of one step. Inputs: grad_s (dL/ds[t]), grad_v (dL/dv[t] from the
// future), h[t], s[t] and sg = ds/dh at h[t] (the surrogate). Returns dL/dh[t];
// the caller derives
//   dL/dx[t]   = gh * (DecayInput ? k : 1)
//   dL/dv[t-1] = gh * (1 - k)
//   dL/dk     += gh * charge_grad_decay(v[t-1], x[t])
template <typename A, bool HardReset, bool Fused = true>
TCL_HD A grad_h_given_sg(A grad_s, A grad_v, A h, A s, A sg, const Params<A>& p) {
  const A through_reset = p.detach_reset ? A(0) : A(1);
  A dv_dh;
  if (HardReset) dv_dh = mul_add<Fused>(through_reset * (p.v_reset - h), sg, A(1) - s);
  else dv_dh = mul_add<Fused>(-through_reset * p.v_threshold, sg, A(1));
  return mul_add<Fused>(grad_s, sg, grad_v * dv_dh);
}

template <typename A, int SG, bool Fused = true>
TCL_HD A surrogate_grad(A h, const Params<A>& p) {
  return SurrogateFn<A, SG>::template grad<Fused>(h - p.v_threshold, p);
}

template <typename A, bool DecayInput>
TCL_HD A grad_x_from_h(A gh, A k) {
  return DecayInput ? gh * k : gh;
}

template <typename A>
TCL_HD A grad_v_prev_from_h(A gh, A k) {
  return gh * (A(1) - k);
}

// Store a value of the accumulation type into storage type S. A storage type
// can provide its own store_as overload (found by argument-dependent lookup),
// e.g. to write its bits directly so the lane loop vectorises.
template <typename S, typename A>
TCL_HD void store_as(S& dst, A value) { dst = static_cast<S>(value); }

// ---- row access ------------------------------------------------------------
// A driver reads and writes one row (LANES neighbouring neurons at one time
// step) at a time. Unpacked: one access per lane (the CPU kernel's vectorised
// lane loops). Packed: the row is a single aligned access of LANES * sizeof(S)
// bytes (4, 8 or 16), which on the GPU is one vector load or store per thread;
// the caller guarantees that alignment.
template <typename S, int LANES>
struct alignas(sizeof(S) * LANES) RowPack {
  S v[LANES];
};

// On the host (the CPU run of the GPU thread mapping, tests only), a misaligned
// packed access is a launcher bug; x86 would let it pass silently, so throw.
template <typename S, int LANES>
TCL_HD void check_packed(const void* ptr) {
#if !defined(__CUDA_ARCH__)
  if (reinterpret_cast<uintptr_t>(ptr) % sizeof(RowPack<S, LANES>) != 0)
    throw std::invalid_argument("tcl_fast: packed LIF row access is misaligned");
#else
  (void)ptr;
#endif
}

template <typename A, typename S, int LANES, bool Packed>
struct RowIn;
template <typename A, typename S, int LANES>
struct RowIn<A, S, LANES, false> {
  const S* __restrict__ p;
  TCL_HD explicit RowIn(const S* src) : p(src) {}
  TCL_HD A operator[](int l) const { return static_cast<A>(p[l]); }
};
template <typename A, typename S, int LANES>
struct RowIn<A, S, LANES, true> {
  RowPack<S, LANES> pk;
  TCL_HD explicit RowIn(const S* src) {
    check_packed<S, LANES>(src);
    pk = *reinterpret_cast<const RowPack<S, LANES>*>(src);
  }
  TCL_HD A operator[](int l) const { return static_cast<A>(pk.v[l]); }
};

template <typename S, int LANES, bool Packed>
struct RowOut;
template <typename S, int LANES>
struct RowOut<S, LANES, false> {
  S* __restrict__ p;
  TCL_HD explicit RowOut(S* dst) : p(dst) {}
  template <typename A>
  TCL_HD void set(int l, A value) { store_as(p[l], value); }
  TCL_HD void flush() {}
};
template <typename S, int LANES>
struct RowOut<S, LANES, true> {
  S* p;
  RowPack<S, LANES> pk;
  TCL_HD explicit RowOut(S* dst) : p(dst) { check_packed<S, LANES>(dst); }
  template <typename A>
  TCL_HD void set(int l, A value) { store_as(pk.v[l], value); }
  TCL_HD void flush() { *reinterpret_cast<RowPack<S, LANES>*>(p) = pk; }
};

// ---- whole-sequence drivers -------------------------------------------------
template <typename A>
struct LaneParams {
  // Inputs, each nullable, indexed by the neuron's channel c = (n / inner) % channels:
  // one per channel of a [B, C, H, W] layout (inner = H * W, channels = C), or
  // one per neuron (inner = 1, channels = N).
  const A* decay = nullptr;  // nullptr: p.decay for all
  const A* scale = nullptr;  // input affine x * scale + shift; nullptr: 1
  const A* shift = nullptr;  // nullptr: 0
  int64_t inner = 1, channels = 1;
  int64_t n0 = 0;            // the group's first neuron
  // An addend of x's shape and storage type S, charged with the affine input
  // (a residual: x * scale + shift + addend); nullable. Its gradient g goes to
  // grad_addend (same shape; nullable). Indexed from neuron 0: the driver adds n0.
  const void* addend = nullptr;
  void* grad_addend = nullptr;
  // Outputs, per neuron (nullable, from n0 on): sums over t of g * x and of g.
  A* grad_scale = nullptr;
  A* grad_shift = nullptr;
  // The parameters of the group or thread that starts at neuron n.
  TCL_HD LaneParams at(int64_t n) const {
    LaneParams q = *this;
    q.n0 = n;
    q.grad_scale = grad_scale ? grad_scale + n : nullptr;
    q.grad_shift = grad_shift ? grad_shift + n : nullptr;
    return q;
  }
};

// A Lanewise driver's addend and its gradient from its first neuron on (nullptr
// for the scalar drivers, which never read them).
template <bool Lanewise, typename S, typename A>
TCL_HD const S* lane_addend(const LaneParams<A>& q) {
  if constexpr (Lanewise) return q.addend ? static_cast<const S*>(q.addend) + q.n0 : nullptr;
  else return nullptr;
}
template <bool Lanewise, typename S, typename A>
TCL_HD S* lane_grad_addend(const LaneParams<A>& q) {
  if constexpr (Lanewise) return q.grad_addend ? static_cast<S*>(q.grad_addend) + q.n0 : nullptr;
  else return nullptr;
}

// A Lanewise driver's per-neuron decay, scale and shift, read once before the
// time loop; the scalar drivers keep one decay and no affine (LANES 1 array,
// never read).
template <typename A, int LANES, bool Lanewise>
struct LaneValues {
  static constexpr int kN = Lanewise ? LANES : 1;
  A k[kN], scale[kN], shift[kN];
  TCL_HD LaneValues(const LaneParams<A>& q, const Params<A>& p) {
    if constexpr (Lanewise) {
      // Runs of lanes rather than lane by lane (at T = 4 a per-lane walk took
      // longer than the group's steps): with inner > 1 a run of lanes shares
      // one channel; with inner == 1 (channels last) a run reads consecutive
      // channels.
      int64_t c = (q.n0 / q.inner) % q.channels, r = q.n0 % q.inner;
      for (int l = 0; l < LANES;) {
        if (q.inner == 1) {
          const int run = static_cast<int>(tcl_min<int64_t>(LANES - l, q.channels - c));
          TCL_SIMD
          for (int i = 0; i < run; ++i) {
            k[l + i] = q.decay ? q.decay[c + i] : p.decay;
            scale[l + i] = q.scale ? q.scale[c + i] : A(1);
            shift[l + i] = q.shift ? q.shift[c + i] : A(0);
          }
          l += run;
          c += run;
        } else {
          const int run = static_cast<int>(tcl_min<int64_t>(LANES - l, q.inner - r));
          const A kc = q.decay ? q.decay[c] : p.decay;
          const A sc = q.scale ? q.scale[c] : A(1), sh = q.shift ? q.shift[c] : A(0);
          TCL_SIMD
          for (int i = 0; i < run; ++i) {
            k[l + i] = kc;
            scale[l + i] = sc;
            shift[l + i] = sh;
          }
          l += run;
          r = 0;
          ++c;
        }
        if (c == q.channels) c = 0;
      }
    }
  }
  TCL_HD A decay(int l, const Params<A>& p) const {
    if constexpr (Lanewise) return k[l];
    else return p.decay;
  }
  // What neuron l charges with at a step whose input is x (and addend[i]).
  template <typename S>
  TCL_HD A input(int l, A x, const S* addend, int64_t i) const {
    if constexpr (Lanewise) {
      const A affine = x * scale[l] + shift[l];
      return addend ? affine + static_cast<A>(addend[i]) : affine;
    } else {
      return x;
    }
  }
};
// A driver runs LANES neighbouring neurons over all T steps; v0 == nullptr
// means every membrane starts at v_reset.
//
// Lanewise drivers also take per-channel or per-neuron parameters
// (LaneParams, each nullable): a decay (a learnt tau per channel), and an
// input affine, the neuron charging with x * scale + shift instead of x (a
// BatchNorm folded into the LIF: y stays the only tensor saved), whose
// backward returns dL/dx = g * scale and the per-neuron sums over time of g
// and g * x (the scale's and shift's gradients), g = dL/d(x * scale + shift).
// They are separate instantiations so the scalar drivers, which run every
// plain LIF layer, stay as they are: reading the decay from a lane array cost
// the scalar path 1.02-1.11x its time (benchmarks/ab_lif_backward.sh, 5 rounds).
//
// Neuron l of the group reads x[t * stride + l]. A CUDA thread calls it with a few packed lanes
// (or one), neighbouring threads on neighbouring neurons so a warp's accesses
// are coalesced (lif_threads.h); the CPU kernel with a block of 128 unpacked
// lanes so the inner lane loop vectorises and the block's rows stay in cache
// while time advances.

// Backward keeps h for a chunk of kTimeChunk steps in registers (CUDA) or L1
// (CPU): it re-runs the forward recursion instead of saving h in forward.
constexpr int kTimeChunk = 16;

// TB ("time batch", GPU threads): load TB rows, then compute and store them.
// The loads of a batch are then in flight together; left to the compiler, a
// packed store (through a reinterpret_cast) may alias the next step's load and
// pins every load behind the previous step's store: one load in flight per
// thread, latency-bound. The CPU kernel keeps TB = 1.
template <typename A, int SG, bool DecayInput, bool HardReset, bool Smooth, int LANES,
          bool Packed = false, int TB = 1, bool Lanewise = false, typename S>
TCL_HD void forward_neurons(const S* __restrict__ x, const S* __restrict__ v0,
                            S* __restrict__ spikes, S* __restrict__ v_last, int64_t T,
                            int64_t stride, const Params<A>& p,
                            const LaneParams<A>& lanes = LaneParams<A>{}) {
  static_assert(!(Lanewise && Packed), "Lanewise drivers read unpacked rows");
  A v[LANES];
  const LaneValues<A, LANES, Lanewise> lv(lanes, p);
  const S* __restrict__ addend = lane_addend<Lanewise, S>(lanes);
  TCL_SIMD
  for (int l = 0; l < LANES; ++l) v[l] = v0 ? static_cast<A>(v0[l]) : p.v_reset;
  int64_t t = 0;
  if constexpr (TB > 1) {
    for (; t + TB <= T; t += TB) {
      // xb: the charged input (Lanewise: x * scale + shift + addend), so the
      // addend's loads are in flight with x's, not one per step in the compute.
      A xb[TB][LANES];
      TCL_UNROLL
      for (int j = 0; j < TB; ++j) {
        const RowIn<A, S, LANES, Packed> xt(x + (t + j) * stride);
        TCL_UNROLL
        for (int l = 0; l < LANES; ++l) xb[j][l] = lv.input(l, xt[l], addend, (t + j) * stride + l);
      }
      TCL_UNROLL
      for (int j = 0; j < TB; ++j) {
        RowOut<S, LANES, Packed> st(spikes + (t + j) * stride);
        TCL_UNROLL
        for (int l = 0; l < LANES; ++l) {
          const A h = charge<A, DecayInput>(v[l], xb[j][l], lv.decay(l, p), p);
          const A s = fire<A, SG, Smooth>(h, p);
          v[l] = reset<A, HardReset>(h, s, p);
          st.set(l, s);
        }
        st.flush();
      }
    }
  }
  TCL_TIME_UNROLL
  for (; t < T; ++t) {
    const RowIn<A, S, LANES, Packed> xt(x + t * stride);
    RowOut<S, LANES, Packed> st(spikes + t * stride);
    TCL_SIMD
    for (int l = 0; l < LANES; ++l) {
      const A h = charge<A, DecayInput>(v[l], lv.input(l, xt[l], addend, t * stride + l), lv.decay(l, p), p);
      const A s = fire<A, SG, Smooth>(h, p);
      v[l] = reset<A, HardReset>(h, s, p);
      st.set(l, s);
    }
    st.flush();
  }
  TCL_SIMD
  for (int l = 0; l < LANES; ++l) store_as(v_last[l], v[l]);
}

// grad_v_last and grad_v0 are nullable (no gradient flows in from the final
// membrane / nobody wants the initial membrane's). grad_decay_partial
// (nullable) receives this group's sum over time of dL/dh * dh/dk per neuron
// (with a per-neuron decay, that neuron's whole decay gradient); a caller that
// never wants it sets DecayGrad = false, which drops the per-step dh/dk buffer
// (registers on the GPU). v_chunk is scratch of ceil(T/kTimeChunk) - 1 rows
// (row stride `stride`) holding the membrane at the start of each later chunk.
//
// RB > 1 (GPU threads): the chunk's x rows are all loaded before the recompute,
// and the walk back loads RB rows of grad_spikes before it computes on them,
// for the same reason as forward's TB. RB must divide kTimeChunk.
// Fused: the gradient math uses fused multiply-adds (see mul_add).
// SG = kSurrogateByRow (CPU, not Smooth): sg_row_fn fills each row's surrogate
// gradients before the row's walk back.
template <typename A, int SG, bool DecayInput, bool HardReset, bool Smooth, int LANES,
          bool Packed = false, bool DecayGrad = true, int RB = 1, bool Fused = true,
          bool Lanewise = false, typename S>
TCL_HD void backward_neurons(const S* __restrict__ grad_spikes, const S* __restrict__ grad_v_last,
                             const S* __restrict__ x, const S* __restrict__ v0,
                             S* __restrict__ grad_x, S* __restrict__ grad_v0,
                             A* __restrict__ grad_decay_partial, A* __restrict__ v_chunk,
                             int64_t T, int64_t stride, const Params<A>& p,
                             SurrogateRowFn<A> sg_row_fn = nullptr,
                             const LaneParams<A>& lanes = LaneParams<A>{}) {
  static_assert(!(Lanewise && Packed), "Lanewise drivers read unpacked rows");
  constexpr bool kByRow = SG == kSurrogateByRow;
  static_assert(!(kByRow && Smooth), "smooth mode needs the surrogate's primitive inline");
  const int64_t num_chunks = (T + kTimeChunk - 1) / kTimeChunk;
  A v[LANES];
  const LaneValues<A, LANES, Lanewise> lv(lanes, p);
  const S* __restrict__ addend = lane_addend<Lanewise, S>(lanes);
  S* __restrict__ grad_addend = lane_grad_addend<Lanewise, S>(lanes);
  // Pass 1 (only when T spans several chunks): checkpoint the membrane.
  if (num_chunks > 1) {
    TCL_SIMD
    for (int l = 0; l < LANES; ++l) v[l] = v0 ? static_cast<A>(v0[l]) : p.v_reset;
    for (int64_t c = 0; c + 1 < num_chunks; ++c) {
      TCL_TIME_UNROLL
      for (int64_t t = c * kTimeChunk; t < (c + 1) * kTimeChunk; ++t) {
        const RowIn<A, S, LANES, Packed> xt(x + t * stride);
        TCL_SIMD
        for (int l = 0; l < LANES; ++l) {
          const A h = charge<A, DecayInput>(v[l], lv.input(l, xt[l], addend, t * stride + l), lv.decay(l, p),
                                            p);
          v[l] = reset<A, HardReset>(h, fire<A, SG, Smooth>(h, p), p);
        }
      }
      TCL_SIMD
      for (int l = 0; l < LANES; ++l) v_chunk[c * stride + l] = v[l];
    }
  }
  const bool need_decay_grad = DecayGrad && grad_decay_partial != nullptr;
  // grad_v_last == nullptr: the final membrane gets no gradient (it is not
  // used), which spares reading a tensor of zeros.
  A gv[LANES], gk[LANES];
  A gsc[Lanewise ? LANES : 1], gsh[Lanewise ? LANES : 1];  // the affine's sums (Lanewise)
  TCL_SIMD
  for (int l = 0; l < LANES; ++l) {
    gv[l] = grad_v_last ? static_cast<A>(grad_v_last[l]) : A(0);
    gk[l] = A(0);
  }
  if constexpr (Lanewise) {
    TCL_SIMD
    for (int l = 0; l < LANES; ++l) gsc[l] = gsh[l] = A(0);
  }
  // Pass 2: chunks in reverse; recompute h inside the chunk, then walk back.
  for (int64_t c = num_chunks - 1; c >= 0; --c) {
    const int64_t t0 = c * kTimeChunk;
    const int64_t len = (T - t0) < kTimeChunk ? (T - t0) : kTimeChunk;
    A h[kTimeChunk][LANES];
    A dh_dk[DecayGrad ? kTimeChunk : 1][LANES];
    // RB > 1 and Lanewise: the chunk's x as loaded, for the scale's gradient
    // (sum of g * x), so the walk back re-reads nothing.
    A x_chunk[Lanewise && RB > 1 ? kTimeChunk : 1][LANES];
    TCL_SIMD
    for (int l = 0; l < LANES; ++l)
      v[l] = c > 0 ? v_chunk[(c - 1) * stride + l] : (v0 ? static_cast<A>(v0[l]) : p.v_reset);
    if constexpr (RB > 1) {
      // h[j] holds the charged input at t0 + j (x, or Lanewise x * scale +
      // shift + addend: the addend's loads in flight with x's) until the
      // recompute below turns it into h.
      TCL_UNROLL
      for (int j = 0; j < kTimeChunk; ++j) {
        if (j < len) {
          const RowIn<A, S, LANES, Packed> xt(x + (t0 + j) * stride);
          TCL_UNROLL
          for (int l = 0; l < LANES; ++l) {
            if constexpr (Lanewise) x_chunk[j][l] = xt[l];
            h[j][l] = lv.input(l, xt[l], addend, (t0 + j) * stride + l);
          }
        }
      }
    }
    TCL_UNROLL
    for (int j = 0; j < kTimeChunk; ++j) {
      if (j < len) {
        const S* __restrict__ xrow = x + (t0 + j) * stride;  // read here only when RB == 1
        TCL_SIMD
        for (int l = 0; l < LANES; ++l) {
          const A xv = RB > 1 ? h[j][l] : lv.input(l, static_cast<A>(xrow[l]), addend, (t0 + j) * stride + l);
          const A hv = charge<A, DecayInput>(v[l], xv, lv.decay(l, p), p);
          if constexpr (DecayGrad)
            dh_dk[j][l] = need_decay_grad ? charge_grad_decay<A, DecayInput>(v[l], xv, p) : A(0);
          h[j][l] = hv;
          v[l] = reset<A, HardReset>(hv, fire<A, SG, Smooth>(hv, p), p);
        }
      }
    }
    static_assert(kTimeChunk % RB == 0, "RB must divide kTimeChunk");
    TCL_UNROLL
    for (int j0 = kTimeChunk - RB; j0 >= 0; j0 -= RB) {
      A gs[RB][LANES];
      if constexpr (RB > 1) {
        TCL_UNROLL
        for (int i = 0; i < RB; ++i) {
          if (j0 + i < len) {
            const RowIn<A, S, LANES, Packed> gst(grad_spikes + (t0 + j0 + i) * stride);
            TCL_UNROLL
            for (int l = 0; l < LANES; ++l) gs[i][l] = gst[l];
          }
        }
      }
      TCL_UNROLL
      for (int i = RB - 1; i >= 0; --i) {
        const int j = j0 + i;
        if (j < len) {
          const S* __restrict__ gsrow = grad_spikes + (t0 + j) * stride;  // RB == 1 only
          RowOut<S, LANES, Packed> gxt(grad_x + (t0 + j) * stride);
          A sg_row[kByRow ? LANES : 1];
          if constexpr (kByRow) sg_row_fn(h[j], sg_row, LANES, p);
          TCL_SIMD
          for (int l = 0; l < LANES; ++l) {
            const A hv = h[j][l];
            const A g = RB > 1 ? gs[i][l] : static_cast<A>(gsrow[l]);
            A sg;
            if constexpr (kByRow) sg = sg_row[l];
            else sg = surrogate_grad<A, SG, Fused>(hv, p);
            const A gh = grad_h_given_sg<A, HardReset, Fused>(g, gv[l], hv,
                                                              fire<A, SG, Smooth>(hv, p), sg, p);
            const A gin = grad_x_from_h<A, DecayInput>(gh, lv.decay(l, p));  // dL/d(charged input)
            if constexpr (Lanewise) {
              // back through x * scale + shift; x from the chunk's loads (RB > 1), else
              // re-read (the CPU's RB = 1: this chunk's rows are in cache)
              gxt.set(l, gin * lv.scale[l]);
              if (grad_addend) store_as(grad_addend[(t0 + j) * stride + l], gin);
              gsh[l] += gin;
              A x_in;
              if constexpr (RB > 1) x_in = x_chunk[j][l];
              else x_in = static_cast<A>(x[(t0 + j) * stride + l]);
              gsc[l] = mul_add<Fused>(gin, x_in, gsc[l]);
            } else {
              gxt.set(l, gin);
            }
            if constexpr (DecayGrad) gk[l] = mul_add<Fused>(gh, dh_dk[j][l], gk[l]);
            gv[l] = grad_v_prev_from_h(gh, lv.decay(l, p));
          }
          gxt.flush();
        }
      }
    }
  }
  if (grad_v0) {  // nullptr: no v0 was given, so nobody wants its gradient
    TCL_SIMD
    for (int l = 0; l < LANES; ++l) store_as(grad_v0[l], gv[l]);
  }
  if (need_decay_grad) {
    TCL_SIMD
    for (int l = 0; l < LANES; ++l) grad_decay_partial[l] = gk[l];
  }
  if constexpr (Lanewise) {
    if (lanes.grad_scale) {
      TCL_SIMD
      for (int l = 0; l < LANES; ++l) lanes.grad_scale[l] = gsc[l];
    }
    if (lanes.grad_shift) {
      TCL_SIMD
      for (int l = 0; l < LANES; ++l) lanes.grad_shift[l] = gsh[l];
    }
  }
}

}  // namespace lif
}  // namespace tcl_fast
