// The CUDA kernels' thread mapping, run on the CPU (tests only; own
// translation unit so it compiles beside the kernels).
#include <torch/library.h>

#include "lif_cpu_kernels.h"

namespace tcl_fast {
namespace lif {
namespace cpu {
namespace {

// The thread mapping does not depend on the surrogate, whose math the CPU
// kernels test for every id: build this test op for two surrogates only (a
// smooth one, and the one with a second parameter) rather than ten, which
// would make this test-only file the slowest of the build.
template <typename F>
bool with_tested_surrogate(int64_t id, F&& f) {
  switch (id) {
    case kSigmoid: f(std::integral_constant<int, kSigmoid>{}); return true;
    case kPiecewiseLeakyReLU: f(std::integral_constant<int, kPiecewiseLeakyReLU>{}); return true;
    default: return false;
  }
}

// Same schema as lif_forward / lif_backward, float32/float16/bfloat16: every
// "thread" of the grid lif_cuda_kernels.cuh would launch runs forward_thread /
// backward_thread from lif_threads.h with the lanes the launcher would pick
// (16-bit storage: 8 lanes forward, as on the GPU). Serial and slow.
std::tuple<at::Tensor, at::Tensor> lif_forward_gpu_threads(
    const at::Tensor& x, const std::optional<at::Tensor>& v0, const at::Tensor& decay, double v_threshold,
    double v_reset, bool hard_reset, bool decay_input, bool detach_reset, int64_t surrogate,
    double alpha, double beta, bool smooth) {
  check_forward_inputs(x, v0, decay, surrogate, alpha);
  TORCH_CHECK(!smooth, "_lif_forward_gpu_threads: no smooth mode");
  auto spikes = at::empty_like(x);
  auto v_last = at::empty(neuron_sizes(x), x.options());
  auto p = make_params<float>(v_threshold, v_reset, alpha, beta, detach_reset);
  const int64_t T = x.size(0), N = num_neurons(x);
  with_kernel_storage<false>(x, "_lif_forward_gpu_threads", [&](auto tag) {
    using S = decltype(tag);
    p.decay = decay.data_ptr<float>()[0];  // float32 here: x's dtype is checked
    const S* xp = data_as<S>(x);
    const S* v0p = optional_data_as<S>(v0);
    S* sp = mutable_data_as<S>(spikes);
    S* vp = mutable_data_as<S>(v_last);
    const int lanes = forward_thread_lanes<S>(N, xp, sp);
    with_forward_width<S>(lanes, [&](auto width) {
      with_bool(decay_input, [&](auto di) {
        with_bool(hard_reset, [&](auto hr) {
          constexpr int L = decltype(width)::value;
          constexpr bool DI = decltype(di)::value, HR = decltype(hr)::value;
          for (int64_t t = 0; t * L < N; ++t) forward_thread<S, L, DI, HR>(t, xp, v0p, sp, vp, T, N, p);
        });
      });
    });
  });
  return {spikes, v_last};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lif_backward_gpu_threads(
    const at::Tensor& grad_spikes, const std::optional<at::Tensor>& grad_v_last, const at::Tensor& x,
    const std::optional<at::Tensor>& v0, const at::Tensor& decay, double v_threshold, double v_reset,
    bool hard_reset, bool decay_input, bool detach_reset, int64_t surrogate, double alpha,
    double beta, bool smooth, bool need_decay_grad) {
  check_forward_inputs(x, v0, decay, surrogate, alpha);
  check_backward_inputs(grad_spikes, grad_v_last, x);
  TORCH_CHECK(!smooth, "_lif_backward_gpu_threads: no smooth mode");
  BackwardBuffers out(x, v0.has_value(), decay, need_decay_grad);
  auto p = make_params<float>(v_threshold, v_reset, alpha, beta, detach_reset);
  const int64_t T = x.size(0), N = num_neurons(x);
  bool known = true;
  with_kernel_storage<false>(x, "_lif_backward_gpu_threads", [&](auto tag) {
    using S = decltype(tag);
    p.decay = decay.data_ptr<float>()[0];  // float32 here: x's dtype is checked
    float* partial = out.decay_partial_ptr<float>();
    float* chunk = out.v_chunk_ptr<float>();
    const S* gsp = data_as<S>(grad_spikes);
    const S* gvp = optional_data_as<S>(grad_v_last);
    const S* xp = data_as<S>(x);
    const S* v0p = optional_data_as<S>(v0);
    S* gxp = mutable_data_as<S>(out.grad_x);
    S* gv0p = static_cast<S*>(out.grad_v0_ptr());
    const int lanes = backward_thread_lanes<S>(N, partial != nullptr, gsp, xp, gxp);
    known = with_tested_surrogate(surrogate, [&](auto sg) {
      with_backward_width(lanes, [&](auto width, auto dg) {
        with_bool(decay_input, [&](auto di) {
          with_bool(hard_reset, [&](auto hr) {
            constexpr int SG = decltype(sg)::value, L = decltype(width)::value;
            constexpr bool DG = decltype(dg)::value;
            constexpr bool DI = decltype(di)::value, HR = decltype(hr)::value;
            for (int64_t t = 0; t * L < N; ++t)
              backward_thread<S, L, DG, SG, DI, HR>(t, gsp, gvp, xp, v0p, gxp, gv0p,
                                                    DG ? partial : nullptr, chunk, T, N, p);
          });
        });
      });
    });
  });
  TORCH_CHECK(known, "_lif_backward_gpu_threads is built for sigmoid and piecewise_leaky_relu only, "
              "got surrogate id ", surrogate);
  return out.finish(decay);
}

}  // namespace

TORCH_LIBRARY_IMPL(tcl_fast, CPU, m) {
  m.impl("_lif_forward_gpu_threads", &lif_forward_gpu_threads);
  m.impl("_lif_backward_gpu_threads", &lif_backward_gpu_threads);
}

}  // namespace cpu
}  // namespace lif
}  // namespace tcl_fast
