// Runtime flags -> template arguments, shared by the CPU registration and the
// CUDA launchers (no torch headers, so lif_cuda.cu can include it), e.g.
//   with_bool(decay_input, [&](auto di) { kernel<decltype(di)::value>(); });
#pragma once

#include <stdint.h>

#include <type_traits>

#include "lif_math.h"

namespace tcl_fast {
namespace lif {

template <typename F>
inline void with_bool(bool flag, F&& f) {
  if (flag) f(std::true_type{});
  else f(std::false_type{});
}

// The drivers' runtime switches as std::bool_constant arguments of one
// function, f(lanewise, decay_input, hard_reset), instead of three nested ones.
template <typename F>
inline void with_driver_switches(bool lanewise, bool decay_input, bool hard_reset, F&& f) {
  with_bool(lanewise, [&](auto lw) {
    with_bool(decay_input, [&](auto di) {
      with_bool(hard_reset, [&](auto hr) { f(lw, di, hr); });
    });
  });
}

// Calls f with the surrogate id as a compile-time constant; returns false
// (calling nothing) for an unknown id, so each caller reports it its own way.
template <typename F>
inline bool with_surrogate(int64_t id, F&& f) {
  switch (id) {
    case kSigmoid: f(std::integral_constant<int, kSigmoid>{}); return true;
    case kATan: f(std::integral_constant<int, kATan>{}); return true;
    case kTriangle: f(std::integral_constant<int, kTriangle>{}); return true;
    case kRectangle: f(std::integral_constant<int, kRectangle>{}); return true;
    case kSuperSpike: f(std::integral_constant<int, kSuperSpike>{}); return true;
    case kFastSigmoid: f(std::integral_constant<int, kFastSigmoid>{}); return true;
    case kErf: f(std::integral_constant<int, kErf>{}); return true;
    case kSoftSign: f(std::integral_constant<int, kSoftSign>{}); return true;
    case kPiecewiseLeakyReLU: f(std::integral_constant<int, kPiecewiseLeakyReLU>{}); return true;
    case kPiecewiseExp: f(std::integral_constant<int, kPiecewiseExp>{}); return true;
    default: return false;
  }
}

}  // namespace lif
}  // namespace tcl_fast
