// Input checks and compile-time dispatch shared by the CPU and CUDA op
// registrations (host C++ only: this header includes ATen).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/accumulate.h>

#include <type_traits>

#include "lif_dispatch.h"
#include "lif_math.h"

namespace tcl_fast {
namespace lif {

// x is [T, *neurons]; the kernels see it as [T, N] with N the product of the
// neuron dims, and the per-neuron tensors (v0, v_last, grad_v0) have the
// neuron dims' shape. Taking any shape spares the Python side the reshapes,
// whose autograd view nodes cost host time on every call.
inline at::IntArrayRef neuron_sizes(const at::Tensor& x) { return x.sizes().slice(1); }
inline int64_t num_neurons(const at::Tensor& x) { return c10::multiply_integers(neuron_sizes(x)); }

// Checks what the Python wrapper already guarantees, so a direct
// torch.ops.tcl_fast call with bad tensors errors instead of corrupting memory.
inline void check_forward_inputs(const at::Tensor& x, const std::optional<at::Tensor>& v0_opt,
                                 const at::Tensor& decay, int64_t surrogate, double alpha) {
  TORCH_CHECK(x.dim() >= 1, "tcl_fast::lif: x must be [T, *neurons], got a 0-dim tensor");
  TORCH_CHECK(x.size(0) >= 1, "tcl_fast::lif: x needs T >= 1 time steps");
  TORCH_CHECK(x.is_contiguous(), "tcl_fast::lif: x must be contiguous");
  if (v0_opt.has_value()) {
    const at::Tensor& v0 = *v0_opt;
    TORCH_CHECK(v0.sizes() == neuron_sizes(x),
                "tcl_fast::lif: v0 must have the neuron dims' shape x.shape[1:]");
    TORCH_CHECK(v0.is_contiguous(), "tcl_fast::lif: v0 must be contiguous");
    TORCH_CHECK(v0.scalar_type() == x.scalar_type(), "tcl_fast::lif: v0 must have x's dtype");
    TORCH_CHECK(v0.device() == x.device(), "tcl_fast::lif: x and v0 must be on one device");
  }
  TORCH_CHECK(decay.device() == x.device(), "tcl_fast::lif: x and decay must be on one device");
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(decay.numel() == 1 && decay.scalar_type() == acc,
              "tcl_fast::lif: decay must be a one-element ", acc, " tensor");
  TORCH_CHECK(surrogate >= 0 && surrogate < kNumSurrogates,
              "tcl_fast::lif: surrogate id out of range: ", surrogate);
  TORCH_CHECK(alpha > 0, "tcl_fast::lif: alpha must be positive");
}

inline void check_backward_inputs(const at::Tensor& grad_spikes,
                                  const std::optional<at::Tensor>& grad_v_last_opt,
                                  const at::Tensor& x) {
  TORCH_CHECK(grad_spikes.sizes() == x.sizes() && grad_spikes.scalar_type() == x.scalar_type() &&
                  grad_spikes.is_contiguous() && grad_spikes.device() == x.device(),
              "tcl_fast::lif_backward: grad_spikes must be contiguous, like x");
  if (!grad_v_last_opt.has_value()) return;  // None: no gradient from the final membrane
  const at::Tensor& grad_v_last = *grad_v_last_opt;
  TORCH_CHECK(grad_v_last.sizes() == neuron_sizes(x) &&
                  grad_v_last.scalar_type() == x.scalar_type() && grad_v_last.is_contiguous() &&
                  grad_v_last.device() == x.device(),
              "tcl_fast::lif_backward: grad_v_last must be a contiguous x.shape[1:] tensor of x's dtype");
}

// Every implementation of lif_forward / lif_backward (CPU, CUDA, the test ops)
// starts here: the input checks, then the scalars in one struct.
inline OpScalars forward_prologue(const at::Tensor& x, const std::optional<at::Tensor>& v0,
                                  const at::Tensor& decay, double v_threshold, double v_reset,
                                  bool hard_reset, bool decay_input, bool detach_reset,
                                  int64_t surrogate, double alpha, double beta, bool smooth) {
  check_forward_inputs(x, v0, decay, surrogate, alpha);
  return OpScalars{v_threshold, v_reset, alpha, beta, hard_reset, decay_input, detach_reset, smooth,
                   surrogate};
}

inline OpScalars backward_prologue(const at::Tensor& grad_spikes,
                                   const std::optional<at::Tensor>& grad_v_last,
                                   const at::Tensor& x, const std::optional<at::Tensor>& v0,
                                   const at::Tensor& decay, double v_threshold, double v_reset,
                                   bool hard_reset, bool decay_input, bool detach_reset,
                                   int64_t surrogate, double alpha, double beta, bool smooth) {
  check_backward_inputs(grad_spikes, grad_v_last, x);
  return forward_prologue(x, v0, decay, v_threshold, v_reset, hard_reset, decay_input, detach_reset,
                          surrogate, alpha, beta, smooth);
}

// Number of chunk-start checkpoints the backward needs (see backward_neurons).
inline int64_t num_checkpoint_rows(int64_t T) {
  return (T + kTimeChunk - 1) / kTimeChunk - 1;
}

// Outputs and scratch of lif_backward, allocated the same way on every device.
// Without v0, grad_v0 is an empty [0] tensor: the kernels skip writing it.
struct BackwardBuffers {
  at::Tensor grad_x, grad_v0;
  at::Tensor decay_partial;  // [N] per-neuron dL/dk, undefined unless needed
  at::Tensor v_chunk;        // [ceil(T/16) - 1, N] membrane checkpoints

  BackwardBuffers(const at::Tensor& x, bool has_v0, const at::Tensor& decay, bool need_decay_grad)
      : grad_x(at::empty_like(x)),
        grad_v0(has_v0 ? at::empty(neuron_sizes(x), x.options()) : at::empty({0}, x.options())),
        decay_partial(need_decay_grad ? at::empty({num_neurons(x)}, decay.options()) : at::Tensor()),
        v_chunk(at::empty({num_checkpoint_rows(x.size(0)), num_neurons(x)}, decay.options())) {}

  template <typename A>
  A* decay_partial_ptr() { return decay_partial.defined() ? decay_partial.data_ptr<A>() : nullptr; }
  template <typename A>
  A* v_chunk_ptr() { return v_chunk.numel() ? v_chunk.data_ptr<A>() : nullptr; }
  // nullptr without v0 (grad_v0 is then empty): the kernels write no grad_v0.
  void* grad_v0_ptr() { return grad_v0.numel() ? grad_v0.data_ptr() : nullptr; }

  // (grad_x, grad_v0, grad_decay): the decay gradient sums the per-neuron parts;
  // unless asked for it is an empty [0] tensor (on CUDA a zero fill would be a
  // kernel launch per backward for a value autograd throws away).
  std::tuple<at::Tensor, at::Tensor, at::Tensor> finish(const at::Tensor& decay) const {
    auto grad_decay = decay_partial.defined() ? decay_partial.sum().reshape(decay.sizes())
                                              : at::empty({0}, decay.options());
    return {grad_x, grad_v0, grad_decay};
  }
};

}  // namespace lif
}  // namespace tcl_fast
