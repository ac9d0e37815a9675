// Input checks and compile-time dispatch shared by the CPU and CUDA op
// registrations (host C++ only: this header includes ATen).
//
// Only the Tensor class, not <ATen/ATen.h> (every op's declaration): the
// per-dtype kernel files include this header, and parsing ATen.h took about 8 s
// of each one's compile on 2 cores. What calls ATen ops (allocating and reducing
// the backward's buffers) is defined once, in lif_common.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/accumulate.h>

#include <optional>
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

// How a per-channel or per-neuron parameter of x's neurons is indexed: neuron
// n reads element (n / inner) % channels (lif_math.h LaneParams).
struct LaneLayout {
  int64_t inner = 1, channels = 1;
  bool operator==(const LaneLayout& o) const { return inner == o.inner && channels == o.channels; }
};

// The layout of t as a parameter of x's neurons, or nullopt: t is contiguous
// and either x.shape[1:] (one per neuron) or, its dims aligned right to
// x.shape[1:], all 1 but one, which matches that neuron dim (one per channel).
inline std::optional<LaneLayout> lane_layout(const at::Tensor& x, const at::Tensor& t) {
  const auto neurons = neuron_sizes(x);
  if (!t.is_contiguous() || t.dim() > static_cast<int64_t>(neurons.size())) return std::nullopt;
  if (t.sizes() == neurons) return LaneLayout{1, c10::multiply_integers(neurons)};
  const int64_t offset = static_cast<int64_t>(neurons.size()) - t.dim();
  int64_t dim = -1;
  for (int64_t d = 0; d < t.dim(); ++d) {
    if (t.size(d) == 1) continue;
    if (dim >= 0 || t.size(d) != neurons[offset + d]) return std::nullopt;
    dim = d;
  }
  if (dim < 0) return LaneLayout{1, 1};  // one element
  return LaneLayout{c10::multiply_integers(neurons.slice(offset + dim + 1)), t.size(dim)};
}

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
  TORCH_CHECK(decay.scalar_type() == acc && (decay.numel() == 1 || lane_layout(x, decay).has_value()),
              "tcl_fast::lif: decay must be a ", acc, " tensor of one element, one per channel "
              "(contiguous, all dims 1 but one neuron dim, aligned right to x.shape[1:]) or one per "
              "neuron (contiguous, x.shape[1:])");
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

// The input affine of lif_affine_forward / lif_affine_backward (the neuron
// charges with x * scale + shift): absent for the plain ops.
struct OptionalAffine {
  std::optional<at::Tensor> scale, shift;
  std::optional<at::Tensor> addend;  // x's shape and dtype: charged with the affine input
};

// scale, shift and a per-channel decay share one layout (lane_layout).
inline OptionalAffine affine_of(const at::Tensor& x, const at::Tensor& decay, const at::Tensor& scale,
                                const at::Tensor& shift, const std::optional<at::Tensor>& addend) {
  if (addend.has_value())
    TORCH_CHECK(addend->sizes() == x.sizes() && addend->scalar_type() == x.scalar_type() &&
                    addend->is_contiguous() && addend->device() == x.device(),
                "tcl_fast::lif_affine: addend must be a contiguous tensor of x's shape, dtype and device");
  const auto acc = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  std::optional<LaneLayout> layout;
  for (const auto* t : {&scale, &shift}) {
    TORCH_CHECK(t->scalar_type() == acc && t->device() == x.device(),
                "tcl_fast::lif_affine: scale and shift must be ", acc, " tensors on x's device");
    layout = lane_layout(x, *t);
    TORCH_CHECK(layout.has_value(), "tcl_fast::lif_affine: scale and shift must be one per channel "
                "or per neuron of x.shape[1:] (see decay), got shape ", t->sizes());
  }
  TORCH_CHECK(lane_layout(x, scale) == lane_layout(x, shift) &&
                  (decay.numel() == 1 || lane_layout(x, decay) == layout),
              "tcl_fast::lif_affine: scale, shift and a per-channel decay must share one layout");
  return OptionalAffine{scale, shift, addend};
}

constexpr const char* kSmoothLanewiseError =
    "tcl_fast::lif: smooth (gradcheck) mode with a per-neuron decay or an input affine is built "
    "for the sigmoid surrogate only";

// Whether each neuron has its own decay (a checked decay of x.shape[1:]); a
// one-element decay is shared by all.
inline bool decay_per_neuron(const at::Tensor& decay) { return decay.numel() != 1; }

// The per-channel / per-neuron pointers and their layout for the Lanewise
// kernels (device pointers on CUDA); decay only when it is not one element.
template <typename A>
LaneParams<A> lane_params_of(const at::Tensor& x, const at::Tensor& decay,
                             const OptionalAffine& affine) {
  LaneParams<A> lanes;
  std::optional<LaneLayout> layout;
  if (decay_per_neuron(decay)) {
    lanes.decay = decay.data_ptr<A>();
    layout = lane_layout(x, decay);
  }
  if (affine.scale) {
    lanes.scale = affine.scale->data_ptr<A>();
    lanes.shift = affine.shift->data_ptr<A>();
    layout = lane_layout(x, *affine.scale);
  }
  if (affine.addend) lanes.addend = affine.addend->data_ptr();
  if (layout) {
    lanes.inner = layout->inner;
    lanes.channels = layout->channels;
  }
  return lanes;
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
  // lif_affine_backward with need_affine_grad: [N] per-neuron dL/dscale, dL/dshift;
  // with an addend and need_addend_grad, its gradient (x's shape).
  at::Tensor grad_scale, grad_shift, grad_addend;

  BackwardBuffers(const at::Tensor& x, bool has_v0, const at::Tensor& decay, bool need_decay_grad,
                  bool need_affine_grad = false, bool need_addend_grad = false);

  template <typename A>
  A* grad_scale_ptr() { return grad_scale.defined() ? grad_scale.data_ptr<A>() : nullptr; }
  template <typename A>
  A* grad_shift_ptr() { return grad_shift.defined() ? grad_shift.data_ptr<A>() : nullptr; }
  void* grad_addend_ptr() { return grad_addend.defined() ? grad_addend.data_ptr() : nullptr; }

  template <typename A>
  A* decay_partial_ptr() { return decay_partial.defined() ? decay_partial.data_ptr<A>() : nullptr; }
  template <typename A>
  A* v_chunk_ptr() { return v_chunk.numel() ? v_chunk.data_ptr<A>() : nullptr; }
  // nullptr without v0 (grad_v0 is then empty): the kernels write no grad_v0.
  void* grad_v0_ptr() { return grad_v0.numel() ? grad_v0.data_ptr() : nullptr; }

  // (grad_x, grad_v0, grad_decay): a shared decay's gradient sums the
  // per-neuron parts, a per-neuron decay's is them; unless asked for it is an
  // empty [0] tensor (on CUDA a zero fill would be a kernel launch per backward
  // for a value autograd throws away).
  std::tuple<at::Tensor, at::Tensor, at::Tensor> finish(const at::Tensor& decay) const;

  // A per-neuron [N] gradient summed into its parameter's shape (one element,
  // or per channel / per neuron by its layout).
  at::Tensor reduce_to(const at::Tensor& per_neuron, const at::Tensor& param) const;

  // lif_affine_backward's outputs: finish's, then grad_scale and grad_shift
  // (empty [0] tensors unless asked for) and grad_addend (empty unless asked for).
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> finish_affine(
      const at::Tensor& decay, const at::Tensor& scale, const at::Tensor& shift) const;
};

}  // namespace lif
}  // namespace tcl_fast
