// CUDA registration of tcl_fast::lif_forward / lif_backward: checks, output
// allocation and stream/device selection; the kernels live in lif_cuda_kernels.cuh.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "lif_common.h"
#include "lif_cuda.h"

namespace tcl_fast {
namespace lif {
namespace {

cuda::LaunchArgs launch_args(const at::Tensor& x, const OpScalars& op) {
  cuda::LaunchArgs a;
  a.op = op;
  switch (x.scalar_type()) {
    case at::kFloat: a.dtype = cuda::DType::kFloat32; break;
    case at::kHalf: a.dtype = cuda::DType::kFloat16; break;
    case at::kBFloat16: a.dtype = cuda::DType::kBFloat16; break;
    default:
      TORCH_CHECK(false, "tcl_fast::lif on CUDA supports float32, float16 and bfloat16, got ",
                  x.scalar_type());
  }
  a.T = x.size(0);
  a.N = num_neurons(x);
  a.stream = c10::cuda::getCurrentCUDAStream(x.device().index()).stream();
  return a;
}

std::tuple<at::Tensor, at::Tensor> lif_forward_cuda(
    const at::Tensor& x, const std::optional<at::Tensor>& v0, const at::Tensor& decay, double v_threshold,
    double v_reset, bool hard_reset, bool decay_input, bool detach_reset, int64_t surrogate,
    double alpha, double beta, bool smooth) {
  const OpScalars op = forward_prologue(x, v0, decay, v_threshold, v_reset, hard_reset, decay_input,
                                        detach_reset, surrogate, alpha, beta, smooth);
  TORCH_CHECK(!smooth, "tcl_fast::lif: smooth (gradcheck) mode is CPU/float64 only");
  const c10::cuda::CUDAGuard guard(x.device());
  auto spikes = at::empty_like(x);
  auto v_last = at::empty(neuron_sizes(x), x.options());
  const auto a = launch_args(x, op);
  const char* err = cuda::forward(a, x.data_ptr(), v0.has_value() ? v0->data_ptr() : nullptr, decay.data_ptr<float>(),
                                  spikes.data_ptr(), v_last.data_ptr());
  TORCH_CHECK(err == nullptr, "tcl_fast::lif_forward CUDA launch failed: ", err);
  return {spikes, v_last};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lif_backward_cuda(
    const at::Tensor& grad_spikes, const std::optional<at::Tensor>& grad_v_last, const at::Tensor& x,
    const std::optional<at::Tensor>& v0, const at::Tensor& decay, double v_threshold, double v_reset,
    bool hard_reset, bool decay_input, bool detach_reset, int64_t surrogate, double alpha,
    double beta, bool smooth, bool need_decay_grad) {
  const OpScalars op = backward_prologue(grad_spikes, grad_v_last, x, v0, decay, v_threshold, v_reset,
                                         hard_reset, decay_input, detach_reset, surrogate, alpha, beta,
                                         smooth);
  TORCH_CHECK(!smooth, "tcl_fast::lif: smooth (gradcheck) mode is CPU/float64 only");
  const c10::cuda::CUDAGuard guard(x.device());
  BackwardBuffers out(x, v0.has_value(), decay, need_decay_grad);
  const auto a = launch_args(x, op);
  const char* err = cuda::backward(
      a, grad_spikes.data_ptr(), grad_v_last.has_value() ? grad_v_last->data_ptr() : nullptr,
      x.data_ptr(), v0.has_value() ? v0->data_ptr() : nullptr, decay.data_ptr<float>(),
      out.grad_x.data_ptr(), out.grad_v0_ptr(),
      out.decay_partial_ptr<float>(), out.v_chunk_ptr<float>());
  TORCH_CHECK(err == nullptr, "tcl_fast::lif_backward CUDA launch failed: ", err);
  return out.finish(decay);
}

}  // namespace

TORCH_LIBRARY_IMPL(tcl_fast, CUDA, m) {
  m.impl("lif_forward", &lif_forward_cuda);
  m.impl("lif_backward", &lif_backward_cuda);
}

}  // namespace lif
}  // namespace tcl_fast
