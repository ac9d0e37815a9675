// The parts of lif_common.h that call ATen ops: allocating the backward's
// buffers and reducing its per-neuron gradients. Out of the header so the
// per-dtype kernel files need not parse every op's declaration.
#include "lif_common.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>

namespace tcl_fast {
namespace lif {

BackwardBuffers::BackwardBuffers(const at::Tensor& x, bool has_v0, const at::Tensor& decay,
                                 bool need_decay_grad, bool need_affine_grad, bool need_addend_grad)
    : grad_x(at::empty_like(x)),
      grad_v0(has_v0 ? at::empty(neuron_sizes(x), x.options()) : at::empty({0}, x.options())),
      decay_partial(need_decay_grad ? at::empty({num_neurons(x)}, decay.options()) : at::Tensor()),
      v_chunk(at::empty({num_checkpoint_rows(x.size(0)), num_neurons(x)}, decay.options())),
      grad_scale(need_affine_grad ? at::empty({num_neurons(x)}, decay.options()) : at::Tensor()),
      grad_shift(need_affine_grad ? at::empty({num_neurons(x)}, decay.options()) : at::Tensor()),
      grad_addend(need_addend_grad ? at::empty_like(x) : at::Tensor()) {}

std::tuple<at::Tensor, at::Tensor, at::Tensor> BackwardBuffers::finish(const at::Tensor& decay) const {
  at::Tensor grad_decay = at::empty({0}, decay.options());
  if (decay_partial.defined()) grad_decay = reduce_to(decay_partial, decay);
  return {grad_x, grad_v0, grad_decay};
}

at::Tensor BackwardBuffers::reduce_to(const at::Tensor& per_neuron, const at::Tensor& param) const {
  if (param.numel() == 1) return per_neuron.sum().reshape(param.sizes());
  if (per_neuron.numel() == 0) return at::zeros(param.sizes(), param.options());
  const LaneLayout l = *lane_layout(grad_x, param);
  const int64_t N = per_neuron.numel();
  if (l.inner == 1 && l.channels == N) return per_neuron.view(param.sizes());
  return per_neuron.view({N / (l.inner * l.channels), l.channels, l.inner}).sum({0, 2}).view(param.sizes());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
BackwardBuffers::finish_affine(const at::Tensor& decay, const at::Tensor& scale,
                               const at::Tensor& shift) const {
  auto [gx, gv0, gdecay] = finish(decay);
  // Separate empties: outputs of one op must not alias each other.
  return {gx, gv0, gdecay,
          grad_scale.defined() ? reduce_to(grad_scale, scale) : at::empty({0}, decay.options()),
          grad_shift.defined() ? reduce_to(grad_shift, shift) : at::empty({0}, decay.options()),
          grad_addend.defined() ? grad_addend : at::empty({0}, grad_x.options())};
}

}  // namespace lif
}  // namespace tcl_fast
