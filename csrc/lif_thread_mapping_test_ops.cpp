// Test-only ops, in their own library (torch.ops.tcl_fast_testing): the CUDA
// kernels' per-thread code and thread mapping (lif_threads.h) run serially on
// the CPU, so tests without a GPU cover the packed row access and the
// neuron-to-thread mapping. Own translation unit, so it compiles beside the kernels.
//
// Built at -O0 (the pragma precedes every include, so all code in this file
// gets it): test ops need no speed, and with every surrogate's GPU backward
// emulated this file took 66 s of CPU to compile at -O1 and 30 s at -O0, the
// largest single file of the build (docs/benchmarks.md, build).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("O0")
#endif
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <atomic>
#include <vector>

#include "lif_cpu_kernels.h"

namespace tcl_fast {
namespace lif {
namespace cpu {
namespace {

constexpr const char* kForwardOp = "tcl_fast_testing::lif_forward_thread_mapping";
constexpr const char* kBackwardOp = "tcl_fast_testing::lif_backward_thread_mapping";

// The multiprocessor count the emulated launches plan for (lif_threads.h
// forward_plan / backward_plan narrow the lanes when a packed grid would leave
// multiprocessors idle). 0 (grid size ignored: packed wherever the rows align,
// so the small test inputs run the packed threads) unless a test sets another
// with _set_emulated_sm_count, so both of the plan's choices run here.
std::atomic<int> emulated_sm_count{0};

void set_emulated_sm_count(int64_t n) {
  TORCH_CHECK_VALUE(n >= 0, "tcl_fast_testing::_set_emulated_sm_count: n must be >= 0 (0: ignore the "
                    "grid size), got ", n);
  emulated_sm_count.store(static_cast<int>(n));
}

// Same schemas as lif_forward / lif_backward and their affine twins,
// float32/float16/bfloat16: every thread of the grid that lif_cuda_kernels.cuh
// launches (the same LaunchPlan, from the same plan function, dispatched by the
// same with_*_plan) runs forward_thread / backward_thread from lif_threads.h,
// every surrogate's inline GPU backward included. Serial and slow.
std::tuple<at::Tensor, at::Tensor> forward_threads(const at::Tensor& x,
                                                   const std::optional<at::Tensor>& v0,
                                                   const at::Tensor& decay,
                                                   const OptionalAffine& affine, const OpScalars& a) {
  TORCH_CHECK(!a.smooth, kForwardOp, ": no smooth mode");
  auto spikes = at::empty_like(x);
  auto v_last = at::empty(neuron_sizes(x), x.options());
  auto p = make_params<float>(a);
  const int64_t T = x.size(0), N = num_neurons(x);
  with_kernel_storage<Float64::kRejected>(x, kForwardOp, [&](auto tag) {
    using S = decltype(tag);
    LaneParams<float> lanes;
    const bool lanewise = lane_params<float>(x, decay, affine, p, lanes);  // float32: x's dtype is checked
    const S* x_p = data_as<S>(x);
    const S* v0_p = optional_data_as<S>(v0);
    S* spikes_p = mutable_data_as<S>(spikes);
    S* v_last_p = mutable_data_as<S>(v_last);
    const LaunchPlan plan = forward_plan<S>(N, lanewise, emulated_sm_count.load(), x_p, spikes_p);
    with_forward_plan<S>(plan, a.decay_input, a.hard_reset, [&](auto w, auto lw, auto di, auto hr) {
      constexpr int L = decltype(w)::value;
      constexpr bool Lanewise = decltype(lw)::value;
      constexpr bool DecayInput = decltype(di)::value, HardReset = decltype(hr)::value;
      for (int64_t t = 0; t < plan.blocks * kBlockThreads; ++t)
        forward_thread<S, L, DecayInput, HardReset, Lanewise>(t, x_p, v0_p, spikes_p, v_last_p, T, N,
                                                              p, lanes);
    });
  });
  return {spikes, v_last};
}

BackwardBuffers backward_threads(const at::Tensor& grad_spikes,
                                 const std::optional<at::Tensor>& grad_v_last, const at::Tensor& x,
                                 const std::optional<at::Tensor>& v0, const at::Tensor& decay,
                                 const OptionalAffine& affine, const OpScalars& a,
                                 bool need_decay_grad, bool need_affine_grad, bool need_addend_grad) {
  TORCH_CHECK(!a.smooth, kBackwardOp, ": no smooth mode");
  BackwardBuffers out(x, v0.has_value(), decay, need_decay_grad, need_affine_grad,
                      need_addend_grad && affine.addend.has_value());
  auto p = make_params<float>(a);
  const int64_t T = x.size(0), N = num_neurons(x);
  bool known = true;
  with_kernel_storage<Float64::kRejected>(x, kBackwardOp, [&](auto tag) {
    using S = decltype(tag);
    LaneParams<float> lanes;  // float32: x's dtype is checked
    const bool lanewise = lane_params<float>(x, decay, affine, p, lanes);
    lanes.grad_scale = out.grad_scale_ptr<float>();
    lanes.grad_shift = out.grad_shift_ptr<float>();
    lanes.grad_addend = out.grad_addend_ptr();
    float* grad_decay_partial = out.decay_partial_ptr<float>();
    float* v_chunk = out.v_chunk_ptr<float>();
    const S* grad_spikes_p = data_as<S>(grad_spikes);
    const S* grad_v_last_p = optional_data_as<S>(grad_v_last);
    const S* x_p = data_as<S>(x);
    const S* v0_p = optional_data_as<S>(v0);
    S* grad_x_p = mutable_data_as<S>(out.grad_x);
    S* grad_v0_p = static_cast<S*>(out.grad_v0_ptr());
    const LaunchPlan plan = backward_plan<S>(N, lanewise, grad_decay_partial != nullptr,
                                             emulated_sm_count.load(), grad_spikes_p, x_p, grad_x_p);
    known = with_surrogate(a.surrogate, [&](auto sg) {
      with_backward_plan(plan, a.decay_input, a.hard_reset, [&](auto w, auto dg, auto lw, auto di, auto hr) {
        constexpr int SG = decltype(sg)::value, L = decltype(w)::value;
        constexpr bool DecayGrad = decltype(dg)::value, Lanewise = decltype(lw)::value;
        constexpr bool DecayInput = decltype(di)::value, HardReset = decltype(hr)::value;
        for (int64_t t = 0; t < plan.blocks * kBlockThreads; ++t)
          backward_thread<S, L, DecayGrad, SG, DecayInput, HardReset, Lanewise>(
              t, grad_spikes_p, grad_v_last_p, x_p, v0_p, grad_x_p, grad_v0_p,
              plan.decay_grad ? grad_decay_partial : nullptr, v_chunk, T, N, p, lanes);
      });
    });
  });
  TORCH_CHECK(known, kBackwardOp, ": unknown surrogate id ", a.surrogate);
  return out;
}

// The plan the launcher would make for x (every row pointer x's, as for a
// contiguous op's fresh outputs): (lanes, blocks, decay_grad).
std::vector<int64_t> lif_launch_plan(const at::Tensor& x, bool backward, bool lanewise,
                                     bool need_decay_grad, int64_t sm_count) {
  TORCH_CHECK(x.dim() >= 1, "tcl_fast_testing::lif_launch_plan: x must be [T, *neurons]");
  const int64_t N = num_neurons(x);
  const void* p = x.const_data_ptr();
  LaunchPlan plan;
  with_kernel_storage<Float64::kRejected>(x, "tcl_fast_testing::lif_launch_plan", [&](auto tag) {
    using S = decltype(tag);
    plan = backward ? backward_plan<S>(N, lanewise, need_decay_grad, static_cast<int>(sm_count), p, p, p)
                    : forward_plan<S>(N, lanewise, static_cast<int>(sm_count), p, p);
  });
  return {plan.lanes, plan.blocks, plan.decay_grad};
}

std::tuple<at::Tensor, at::Tensor> lif_forward_thread_mapping(
    const at::Tensor& x, const std::optional<at::Tensor>& v0, const at::Tensor& decay,
    double v_threshold, double v_reset, bool hard_reset, bool decay_input, bool detach_reset,
    int64_t surrogate, double alpha, double beta, bool smooth) {
  const OpScalars a = forward_prologue(x, v0, decay, v_threshold, v_reset, hard_reset, decay_input,
                                       detach_reset, surrogate, alpha, beta, smooth);
  return forward_threads(x, v0, decay, OptionalAffine{}, a);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lif_backward_thread_mapping(
    const at::Tensor& grad_spikes, const std::optional<at::Tensor>& grad_v_last,
    const at::Tensor& x, const std::optional<at::Tensor>& v0, const at::Tensor& decay,
    double v_threshold, double v_reset, bool hard_reset, bool decay_input, bool detach_reset,
    int64_t surrogate, double alpha, double beta, bool smooth, bool need_decay_grad) {
  const OpScalars a = backward_prologue(grad_spikes, grad_v_last, x, v0, decay, v_threshold, v_reset,
                                        hard_reset, decay_input, detach_reset, surrogate, alpha, beta,
                                        smooth);
  return backward_threads(grad_spikes, grad_v_last, x, v0, decay, OptionalAffine{}, a,
                          need_decay_grad, false, false)
      .finish(decay);
}

std::tuple<at::Tensor, at::Tensor> lif_affine_forward_thread_mapping(
    const at::Tensor& x, const std::optional<at::Tensor>& v0, const at::Tensor& decay,
    const at::Tensor& scale, const at::Tensor& shift, const std::optional<at::Tensor>& addend,
    double v_threshold, double v_reset,
    bool hard_reset, bool decay_input, bool detach_reset, int64_t surrogate, double alpha,
    double beta, bool smooth) {
  const OpScalars a = forward_prologue(x, v0, decay, v_threshold, v_reset, hard_reset, decay_input,
                                       detach_reset, surrogate, alpha, beta, smooth);
  return forward_threads(x, v0, decay, affine_of(x, decay, scale, shift, addend), a);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
lif_affine_backward_thread_mapping(
    const at::Tensor& grad_spikes, const std::optional<at::Tensor>& grad_v_last,
    const at::Tensor& x, const std::optional<at::Tensor>& v0, const at::Tensor& decay,
    const at::Tensor& scale, const at::Tensor& shift, const std::optional<at::Tensor>& addend,
    double v_threshold, double v_reset,
    bool hard_reset, bool decay_input, bool detach_reset, int64_t surrogate, double alpha,
    double beta, bool smooth, bool need_decay_grad, bool need_affine_grad, bool need_addend_grad) {
  const OpScalars a = backward_prologue(grad_spikes, grad_v_last, x, v0, decay, v_threshold, v_reset,
                                        hard_reset, decay_input, detach_reset, surrogate, alpha, beta,
                                        smooth);
  return backward_threads(grad_spikes, grad_v_last, x, v0, decay, affine_of(x, decay, scale, shift, addend), a,
                          need_decay_grad, need_affine_grad, need_addend_grad)
      .finish_affine(decay, scale, shift);
}

}  // namespace

// Same schemas as tcl_fast::lif_forward / lif_backward and lif_affine_* (csrc/ops.cpp).
TORCH_LIBRARY(tcl_fast_testing, m) {
  m.def(
      "lif_forward_thread_mapping(Tensor x, Tensor? v0, Tensor decay, float v_threshold, "
      "float v_reset, bool hard_reset, bool decay_input, bool detach_reset, int surrogate, "
      "float alpha, float beta, bool smooth) -> (Tensor spikes, Tensor v_last)");
  m.def(
      "lif_backward_thread_mapping(Tensor grad_spikes, Tensor? grad_v_last, Tensor x, Tensor? v0, "
      "Tensor decay, float v_threshold, float v_reset, bool hard_reset, bool decay_input, "
      "bool detach_reset, int surrogate, float alpha, float beta, bool smooth, "
      "bool need_decay_grad) "
      "-> (Tensor grad_x, Tensor grad_v0, Tensor grad_decay)");
  m.def(
      "lif_affine_forward_thread_mapping(Tensor x, Tensor? v0, Tensor decay, Tensor scale, "
      "Tensor shift, Tensor? addend, float v_threshold, float v_reset, bool hard_reset, bool decay_input, "
      "bool detach_reset, int surrogate, float alpha, float beta, bool smooth) "
      "-> (Tensor spikes, Tensor v_last)");
  m.def(
      "lif_affine_backward_thread_mapping(Tensor grad_spikes, Tensor? grad_v_last, Tensor x, "
      "Tensor? v0, Tensor decay, Tensor scale, Tensor shift, Tensor? addend, float v_threshold, "
      "float v_reset, "
      "bool hard_reset, bool decay_input, bool detach_reset, int surrogate, float alpha, "
      "float beta, bool smooth, bool need_decay_grad, bool need_affine_grad, bool need_addend_grad) "
      "-> (Tensor grad_x, Tensor grad_v0, Tensor grad_decay, Tensor grad_scale, Tensor grad_shift, "
      "Tensor grad_addend)");
  m.def("_set_emulated_sm_count(int n) -> ()", &set_emulated_sm_count);
  m.def("lif_launch_plan(Tensor x, bool backward, bool lanewise, bool need_decay_grad, int sm_count) -> int[]");
}

TORCH_LIBRARY_IMPL(tcl_fast_testing, CPU, m) {
  m.impl("lif_launch_plan", &lif_launch_plan);
  m.impl("lif_forward_thread_mapping", &lif_forward_thread_mapping);
  m.impl("lif_backward_thread_mapping", &lif_backward_thread_mapping);
  m.impl("lif_affine_forward_thread_mapping", &lif_affine_forward_thread_mapping);
  m.impl("lif_affine_backward_thread_mapping", &lif_affine_backward_thread_mapping);
}

}  // namespace cpu
}  // namespace lif
}  // namespace tcl_fast
