// CPU registrations of tcl_fast::lif_forward / lif_backward: input checks and
// the dtype switch; the kernels are in lif_cpu_kernels.h, compiled per dtype.
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <string>

#include "lif_cpu_kernels.h"

namespace tcl_fast {
namespace lif {
namespace cpu {
CpuIsa cpu_isa() {
  static const CpuIsa widest = [] {
#if TCL_CPU_MULTI_ISA
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("fma"))
      return CpuIsa::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return CpuIsa::kAvx2Fma;
#endif
    return CpuIsa::kBaseline;
  }();
  const CpuIsa want = tuning().cpu_isa.load(std::memory_order_relaxed);
  return static_cast<int>(want) < static_cast<int>(widest) ? want : widest;
}

std::string cpu_isa_name() {
  switch (cpu_isa()) {
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx2Fma: return "avx2";
    default: return kBaselineHasFma ? "baseline+fma" : "baseline";
  }
}

namespace {

// Whether x's kernels are not built for this CPU's ISA (float16 on x86, bfloat16
// on the baseline ISA: lif_cpu_kernels.h storage_build): the call then runs the
// float32 kernels on float32 copies and rounds the outputs back, which gives
// the 16-bit kernels' values.
bool runs_via_float32(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kHalf: return runs_via_float32_on_this_cpu<c10::Half>();
    case at::kBFloat16: return runs_via_float32_on_this_cpu<BFloat16Bits>();
    default: return false;
  }
}

// The kernels of storage S, which runs_via_float32 keeps from calls the build
// has no kernel for.
template <typename S>
constexpr bool has_kernels() { return storage_build<S>() != StorageBuild::kNone; }
constexpr const char* kNoKernels = "tcl_fast::lif: internal error: a storage type without CPU kernels "
                                   "must run through float32 (runs_via_float32)";

at::Tensor as_float32(const at::Tensor& t) { return t.to(at::kFloat); }
std::optional<at::Tensor> as_float32(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(as_float32(*t)) : std::nullopt;
}
OptionalAffine as_float32(const OptionalAffine& affine) {  // scale, shift: float32 already
  return OptionalAffine{affine.scale, affine.shift, as_float32(affine.addend)};
}

// The plain and the affine ops share these (OptionalAffine{} for the plain ones).
std::tuple<at::Tensor, at::Tensor> forward_cpu(const at::Tensor& x, const std::optional<at::Tensor>& v0,
                                               const at::Tensor& decay, const OptionalAffine& affine,
                                               const OpScalars& a) {
  TORCH_CHECK(!a.smooth || x.scalar_type() == at::kDouble,
              "tcl_fast::lif: smooth (gradcheck) mode is only built for float64");
  if (runs_via_float32(x)) {
    auto [spikes, v_last] = forward_cpu(as_float32(x), as_float32(v0), decay, as_float32(affine), a);
    return {spikes.to(x.scalar_type()), v_last.to(x.scalar_type())};
  }
  auto spikes = at::empty_like(x);
  auto v_last = at::empty(neuron_sizes(x), x.options());
  if (x.numel() == 0) return {spikes, v_last};
  with_kernel_storage<Float64::kSupported>(x, "lif_forward_cpu", [&](auto tag) {
    using S = decltype(tag);
    if constexpr (has_kernels<S>()) forward_dtype<S>(x, v0, decay, affine, spikes, v_last, a);
    else TORCH_CHECK(false, kNoKernels);
  });
  return {spikes, v_last};
}

// Empty x (no neurons): the buffers' finish reduces nothing to zeros.
BackwardBuffers backward_cpu(const at::Tensor& grad_spikes, const std::optional<at::Tensor>& grad_v_last,
                             const at::Tensor& x, const std::optional<at::Tensor>& v0,
                             const at::Tensor& decay, const OptionalAffine& affine, const OpScalars& a,
                             bool need_decay_grad, bool need_affine_grad, bool need_addend_grad) {
  TORCH_CHECK(!a.smooth || x.scalar_type() == at::kDouble,
              "tcl_fast::lif: smooth (gradcheck) mode is only built for float64");
  if (runs_via_float32(x)) {
    BackwardBuffers out = backward_cpu(as_float32(grad_spikes), as_float32(grad_v_last), as_float32(x),
                                       as_float32(v0), decay, as_float32(affine), a, need_decay_grad,
                                       need_affine_grad, need_addend_grad);
    const auto dtype = x.scalar_type();
    out.grad_x = out.grad_x.to(dtype);
    out.grad_v0 = out.grad_v0.to(dtype);
    if (out.grad_addend.defined()) out.grad_addend = out.grad_addend.to(dtype);
    return out;
  }
  BackwardBuffers out(x, v0.has_value(), decay, need_decay_grad, need_affine_grad,
                      need_addend_grad && affine.addend.has_value());
  if (x.numel() == 0) return out;
  bool known = true;
  with_kernel_storage<Float64::kSupported>(x, "lif_backward_cpu", [&](auto tag) {
    using S = decltype(tag);
    if constexpr (has_kernels<S>()) known = backward_dtype<S>(grad_spikes, grad_v_last, x, v0, decay, affine, out, a);
    else TORCH_CHECK(false, kNoKernels);
  });
  TORCH_CHECK(known, "tcl_fast::lif: unknown surrogate id ", a.surrogate);
  return out;
}

std::tuple<at::Tensor, at::Tensor> lif_forward_cpu(
    const at::Tensor& x, const std::optional<at::Tensor>& v0, const at::Tensor& decay, double v_threshold,
    double v_reset, bool hard_reset, bool decay_input, bool detach_reset, int64_t surrogate,
    double alpha, double beta, bool smooth) {
  const OpScalars a = forward_prologue(x, v0, decay, v_threshold, v_reset, hard_reset, decay_input,
                                       detach_reset, surrogate, alpha, beta, smooth);
  return forward_cpu(x, v0, decay, OptionalAffine{}, a);
}

std::tuple<at::Tensor, at::Tensor> lif_affine_forward_cpu(
    const at::Tensor& x, const std::optional<at::Tensor>& v0, const at::Tensor& decay,
    const at::Tensor& scale, const at::Tensor& shift, const std::optional<at::Tensor>& addend,
    double v_threshold, double v_reset, bool hard_reset, bool decay_input, bool detach_reset,
    int64_t surrogate, double alpha, double beta, bool smooth) {
  const OpScalars a = forward_prologue(x, v0, decay, v_threshold, v_reset, hard_reset, decay_input,
                                       detach_reset, surrogate, alpha, beta, smooth);
  return forward_cpu(x, v0, decay, affine_of(x, decay, scale, shift, addend), a);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lif_backward_cpu(
    const at::Tensor& grad_spikes, const std::optional<at::Tensor>& grad_v_last, const at::Tensor& x,
    const std::optional<at::Tensor>& v0, const at::Tensor& decay, double v_threshold, double v_reset,
    bool hard_reset, bool decay_input, bool detach_reset, int64_t surrogate, double alpha,
    double beta, bool smooth, bool need_decay_grad) {
  const OpScalars a = backward_prologue(grad_spikes, grad_v_last, x, v0, decay, v_threshold, v_reset,
                                        hard_reset, decay_input, detach_reset, surrogate, alpha, beta,
                                        smooth);
  return backward_cpu(grad_spikes, grad_v_last, x, v0, decay, OptionalAffine{}, a, need_decay_grad, false, false)
      .finish(decay);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lif_affine_backward_cpu(
    const at::Tensor& grad_spikes, const std::optional<at::Tensor>& grad_v_last, const at::Tensor& x,
    const std::optional<at::Tensor>& v0, const at::Tensor& decay, const at::Tensor& scale,
    const at::Tensor& shift, const std::optional<at::Tensor>& addend, double v_threshold, double v_reset,
    bool hard_reset, bool decay_input, bool detach_reset, int64_t surrogate, double alpha, double beta,
    bool smooth, bool need_decay_grad, bool need_affine_grad, bool need_addend_grad) {
  const OpScalars a = backward_prologue(grad_spikes, grad_v_last, x, v0, decay, v_threshold, v_reset,
                                        hard_reset, decay_input, detach_reset, surrogate, alpha, beta,
                                        smooth);
  return backward_cpu(grad_spikes, grad_v_last, x, v0, decay, affine_of(x, decay, scale, shift, addend), a,
                      need_decay_grad, need_affine_grad, need_addend_grad)
      .finish_affine(decay, scale, shift);
}

}  // namespace

TORCH_LIBRARY_IMPL(tcl_fast, CPU, m) {
  m.impl("lif_forward", &lif_forward_cpu);
  m.impl("lif_backward", &lif_backward_cpu);
  m.impl("lif_affine_forward", &lif_affine_forward_cpu);
  m.impl("lif_affine_backward", &lif_affine_backward_cpu);
}

}  // namespace cpu
}  // namespace lif
}  // namespace tcl_fast
