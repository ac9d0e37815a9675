// Multi-step LIF neuron math, shared by the CPU (lif_cpu.cpp) and CUDA
// (lif_cuda.cu) kernels so that the CPU tests exercise the GPU's arithmetic.
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

#if defined(__CUDACC__)
#define TCL_HD __host__ __device__ __forceinline__
#else
#define TCL_HD inline
#endif

namespace tcl_fast {
namespace lif {

// Order fixed: Python passes these ids (tcl_fast/ops/lif.py SURROGATES).
enum Surrogate : int { kSigmoid = 0, kATan = 1, kTriangle = 2, kRectangle = 3 };
constexpr int kNumSurrogates = 4;

TCL_HD float tcl_exp(float a) { return expf(a); }
TCL_HD double tcl_exp(double a) { return exp(a); }
TCL_HD float tcl_atan(float a) { return atanf(a); }
TCL_HD double tcl_atan(double a) { return atan(a); }
template <typename A> TCL_HD A tcl_abs(A a) { return a < A(0) ? -a : a; }
template <typename A> TCL_HD A tcl_max(A a, A b) { return a > b ? a : b; }
template <typename A> TCL_HD A tcl_min(A a, A b) { return a < b ? a : b; }

template <typename A>
struct Params {
  A decay;        // k = 1 / tau
  A v_threshold;
  A v_reset;      // 0 for a soft reset
  A alpha;        // surrogate parameter (alpha, gamma or width)
  bool detach_reset;
};

// ---- surrogate gradients ds/du and their primitives G(u) -------------------
template <typename A, int SG> struct SurrogateFn;

template <typename A> struct SurrogateFn<A, kSigmoid> {
  // sigma(alpha u)' = alpha * sigma * (1 - sigma)
  static TCL_HD A grad(A u, A alpha) {
    const A sig = A(1) / (A(1) + tcl_exp(-alpha * u));
    return alpha * sig * (A(1) - sig);
  }
  static TCL_HD A primitive(A u, A alpha) { return A(1) / (A(1) + tcl_exp(-alpha * u)); }
};

template <typename A> struct SurrogateFn<A, kATan> {
  // G = atan(pi/2 alpha u) / pi + 1/2,  G' = (alpha/2) / (1 + (pi/2 alpha u)^2)
  static TCL_HD A grad(A u, A alpha) {
    const A z = A(1.5707963267948966) * alpha * u;
    return (alpha * A(0.5)) / (A(1) + z * z);
  }
  static TCL_HD A primitive(A u, A alpha) {
    return tcl_atan(A(1.5707963267948966) * alpha * u) * A(0.3183098861837907) + A(0.5);
  }
};

template <typename A> struct SurrogateFn<A, kTriangle> {
  // TET's triangle, alpha = gamma: (1/gamma^2) * max(0, gamma - |u|)
  static TCL_HD A grad(A u, A gamma) {
    return tcl_max(A(0), gamma - tcl_abs(u)) / (gamma * gamma);
  }
  static TCL_HD A primitive(A u, A gamma) {
    const A c = tcl_min(tcl_max(u, -gamma), gamma);
    const A g2 = A(2) * gamma * gamma;
    return c < A(0) ? (gamma + c) * (gamma + c) / g2 : A(1) - (gamma - c) * (gamma - c) / g2;
  }
};

template <typename A> struct SurrogateFn<A, kRectangle> {
  // alpha = width: 1/width inside |u| < width/2, else 0
  static TCL_HD A grad(A u, A width) {
    return tcl_abs(u) < A(0.5) * width ? A(1) / width : A(0);
  }
  static TCL_HD A primitive(A u, A width) {
    return tcl_min(A(1), tcl_max(A(0), u / width + A(0.5)));
  }
};

// ---- one time step ---------------------------------------------------------
template <typename A, bool DecayInput>
TCL_HD A charge(A v, A x, const Params<A>& p) {
  if (DecayInput) return v + (x - (v - p.v_reset)) * p.decay;
  return v - (v - p.v_reset) * p.decay + x;
}

template <typename A, int SG, bool Smooth>
TCL_HD A fire(A h, const Params<A>& p) {
  if (Smooth) return SurrogateFn<A, SG>::primitive(h - p.v_threshold, p.alpha);
  return h >= p.v_threshold ? A(1) : A(0);
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
// future), h[t] and s[t]. Returns dL/dh[t]; the caller derives
//   dL/dx[t]   = gh * (DecayInput ? k : 1)
//   dL/dv[t-1] = gh * (1 - k)
//   dL/dk     += gh * charge_grad_decay(v[t-1], x[t])
template <typename A, int SG, bool HardReset>
TCL_HD A grad_h(A grad_s, A grad_v, A h, A s, const Params<A>& p) {
  const A sg = SurrogateFn<A, SG>::grad(h - p.v_threshold, p.alpha);
  const A through_reset = p.detach_reset ? A(0) : A(1);
  A dv_dh;
  if (HardReset) dv_dh = (A(1) - s) + through_reset * (p.v_reset - h) * sg;
  else dv_dh = A(1) - through_reset * p.v_threshold * sg;
  return grad_s * sg + grad_v * dv_dh;
}

template <typename A, bool DecayInput>
TCL_HD A grad_x_from_h(A gh, const Params<A>& p) {
  return DecayInput ? gh * p.decay : gh;
}

template <typename A>
TCL_HD A grad_v_prev_from_h(A gh, const Params<A>& p) {
  return gh * (A(1) - p.decay);
}

}  // namespace lif
}  // namespace tcl_fast
