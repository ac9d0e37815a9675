// CUDA registration of tcl_fast::lif_forward / lif_backward: checks, output
// allocation and stream/device selection; the kernels live in lif_cuda_kernels.cuh.
#include <cuda_runtime_api.h>

#include <array>
#include <atomic>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include "lif_common.h"
#include "lif_cuda.h"

namespace tcl_fast {
namespace lif {
namespace {

// The device's multiprocessor count, asked of the runtime once per device.
// (Not at::cuda::getDeviceProperties: its header, ATen/cuda/CUDAContext.h,
// pulls in cuSPARSE's and cuBLAS's headers, which a bare CUDA toolkit lacks.)
int multiprocessor_count(c10::DeviceIndex device) {
  static std::array<std::atomic<int>, 64> cached{};  // 0: not asked yet
  TORCH_CHECK(device >= 0 && device < static_cast<int>(cached.size()), "tcl_fast: CUDA device index ",
              static_cast<int>(device), " out of range");
  int count = cached[device].load(std::memory_order_relaxed);
  if (count == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    cached[device].store(count, std::memory_order_relaxed);
  }
  return count;
}

cuda::LaunchArgs launch_args(const at::Tensor& x, const at::Tensor& decay, const OpScalars& op,
                             const OptionalAffine& affine = OptionalAffine{}) {
  cuda::LaunchArgs a;
  a.op = op;
  a.lanes = lane_params_of<float>(x, decay, affine);
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
  a.sm_count = multiprocessor_count(x.device().index());
  return a;
}

// An error pending from before the launch is an earlier kernel's or call's
// (CUDA reports errors late): say so rather than blame this op.
void check_launch(const cuda::LaunchResult& r, const char* op) {
  TORCH_CHECK(!r.pending, op, ": a CUDA error was pending before its launch (raised by an earlier "
              "kernel or CUDA call, not by this op): ", r.error);
  TORCH_CHECK(r.error == nullptr, op, " CUDA launch failed: ", r.error);
}

std::tuple<at::Tensor, at::Tensor> forward_cuda(const at::Tensor& x,
                                                const std::optional<at::Tensor>& v0,
                                                const at::Tensor& decay,
                                                const OptionalAffine& affine, const OpScalars& op) {
  TORCH_CHECK(!op.smooth, "tcl_fast::lif: smooth (gradcheck) mode is CPU/float64 only");
  const c10::cuda::CUDAGuard guard(x.device());
  auto spikes = at::empty_like(x);
  auto v_last = at::empty(neuron_sizes(x), x.options());
  const auto a = launch_args(x, decay, op, affine);
  check_launch(cuda::forward(a, x.data_ptr(), v0.has_value() ? v0->data_ptr() : nullptr,
                             decay.data_ptr<float>(), spikes.data_ptr(), v_last.data_ptr()),
               "tcl_fast::lif_forward");
  return {spikes, v_last};
}

BackwardBuffers backward_cuda(const at::Tensor& grad_spikes,
                              const std::optional<at::Tensor>& grad_v_last, const at::Tensor& x,
                              const std::optional<at::Tensor>& v0, const at::Tensor& decay,
                              const OptionalAffine& affine, const OpScalars& op,
                              bool need_decay_grad, bool need_affine_grad, bool need_addend_grad) {
  TORCH_CHECK(!op.smooth, "tcl_fast::lif: smooth (gradcheck) mode is CPU/float64 only");
  const c10::cuda::CUDAGuard guard(x.device());
  BackwardBuffers out(x, v0.has_value(), decay, need_decay_grad, need_affine_grad,
                      need_addend_grad && affine.addend.has_value());
  auto a = launch_args(x, decay, op, affine);
  a.lanes.grad_scale = out.grad_scale_ptr<float>();
  a.lanes.grad_shift = out.grad_shift_ptr<float>();
  a.lanes.grad_addend = out.grad_addend_ptr();
  check_launch(cuda::backward(
                   a, grad_spikes.data_ptr(), grad_v_last.has_value() ? grad_v_last->data_ptr() : nullptr,
                   x.data_ptr(), v0.has_value() ? v0->data_ptr() : nullptr, decay.data_ptr<float>(),
                   out.grad_x.data_ptr(), out.grad_v0_ptr(), out.decay_partial_ptr<float>(),
                   out.v_chunk_ptr<float>()),
               "tcl_fast::lif_backward");
  return out;
}

std::tuple<at::Tensor, at::Tensor> lif_forward_cuda(
    const at::Tensor& x, const std::optional<at::Tensor>& v0, const at::Tensor& decay, double v_threshold,
    double v_reset, bool hard_reset, bool decay_input, bool detach_reset, int64_t surrogate,
    double alpha, double beta, bool smooth) {
  const OpScalars op = forward_prologue(x, v0, decay, v_threshold, v_reset, hard_reset, decay_input,
                                        detach_reset, surrogate, alpha, beta, smooth);
  return forward_cuda(x, v0, decay, OptionalAffine{}, op);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> lif_backward_cuda(
    const at::Tensor& grad_spikes, const std::optional<at::Tensor>& grad_v_last, const at::Tensor& x,
    const std::optional<at::Tensor>& v0, const at::Tensor& decay, double v_threshold, double v_reset,
    bool hard_reset, bool decay_input, bool detach_reset, int64_t surrogate, double alpha,
    double beta, bool smooth, bool need_decay_grad) {
  const OpScalars op = backward_prologue(grad_spikes, grad_v_last, x, v0, decay, v_threshold, v_reset,
                                         hard_reset, decay_input, detach_reset, surrogate, alpha, beta,
                                         smooth);
  return backward_cuda(grad_spikes, grad_v_last, x, v0, decay, OptionalAffine{}, op, need_decay_grad,
                       false, false)
      .finish(decay);
}

std::tuple<at::Tensor, at::Tensor> lif_affine_forward_cuda(
    const at::Tensor& x, const std::optional<at::Tensor>& v0, const at::Tensor& decay,
    const at::Tensor& scale, const at::Tensor& shift, const std::optional<at::Tensor>& addend,
    double v_threshold, double v_reset,
    bool hard_reset, bool decay_input, bool detach_reset, int64_t surrogate, double alpha,
    double beta, bool smooth) {
  const OpScalars op = forward_prologue(x, v0, decay, v_threshold, v_reset, hard_reset, decay_input,
                                        detach_reset, surrogate, alpha, beta, smooth);
  return forward_cuda(x, v0, decay, affine_of(x, decay, scale, shift, addend), op);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lif_affine_backward_cuda(
    const at::Tensor& grad_spikes, const std::optional<at::Tensor>& grad_v_last, const at::Tensor& x,
    const std::optional<at::Tensor>& v0, const at::Tensor& decay, const at::Tensor& scale,
    const at::Tensor& shift, const std::optional<at::Tensor>& addend, double v_threshold, double v_reset,
    bool hard_reset, bool decay_input,
    bool detach_reset, int64_t surrogate, double alpha, double beta, bool smooth,
    bool need_decay_grad, bool need_affine_grad, bool need_addend_grad) {
  const OpScalars op = backward_prologue(grad_spikes, grad_v_last, x, v0, decay, v_threshold, v_reset,
                                         hard_reset, decay_input, detach_reset, surrogate, alpha, beta,
                                         smooth);
  return backward_cuda(grad_spikes, grad_v_last, x, v0, decay, affine_of(x, decay, scale, shift, addend), op,
                       need_decay_grad, need_affine_grad, need_addend_grad)
      .finish_affine(decay, scale, shift);
}

}  // namespace

TORCH_LIBRARY_IMPL(tcl_fast, CUDA, m) {
  m.impl("lif_forward", &lif_forward_cuda);
  m.impl("lif_backward", &lif_backward_cuda);
  m.impl("lif_affine_forward", &lif_affine_forward_cuda);
  m.impl("lif_affine_backward", &lif_affine_backward_cuda);
}

}  // namespace lif
}  // namespace tcl_fast
