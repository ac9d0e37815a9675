// The tcl_fast operator library: every op is declared once here (the test-only
// ops are tcl_fast_testing's, csrc/lif_thread_mapping_test_ops.cpp); the CPU
// (lif_cpu.cpp) and CUDA (lif_cuda_ops.cpp) files register implementations per
// dispatch key; Python registers fake kernels and autograd (tcl_fast/ops/lif.py).
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "lif_tuning.h"

extern "C" {
// `import tcl_fast._C` loads this shared object, which runs the registrations
// below; the module itself is empty.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace tcl_fast {
namespace lif {
namespace cpu {
std::string cpu_isa_name();  // lif_cpu.cpp
}  // namespace cpu
}  // namespace lif
}  // namespace tcl_fast

TORCH_LIBRARY(tcl_fast, m) {
  // x: [T, *neurons] contiguous, run as [T, N] (N = the neuron dims' product); v0: x.shape[1:] or
  // None (start at v_reset); v_last: x.shape[1:]; decay (float32, float64 for float64 x): k = 1/tau,
  // one element, or x.shape[1:] contiguous for one per neuron (a learnt tau per channel). surrogate: an id of csrc/lif_math.h's Surrogate (tcl_fast/ops/lif_reference.py
  // SURROGATES); alpha and beta its parameters (beta: piecewise_leaky_relu's c, else unused).
  // smooth: test mode firing the surrogate's primitive (see csrc/lif_math.h).
  m.def(
      "lif_forward(Tensor x, Tensor? v0, Tensor decay, float v_threshold, float v_reset, "
      "bool hard_reset, bool decay_input, bool detach_reset, int surrogate, float alpha, "
      "float beta, bool smooth) -> (Tensor spikes, Tensor v_last)");
  // grad_v_last None: no gradient flows in from the final membrane. grad_v0 has
  // v0's shape when v0 is given, else is empty ([0]); grad_decay is 0-dim with
  // need_decay_grad (decay's shape), else empty ([0]).
  m.def(
      "lif_backward(Tensor grad_spikes, Tensor? grad_v_last, Tensor x, Tensor? v0, Tensor decay, "
      "float v_threshold, float v_reset, bool hard_reset, bool decay_input, bool detach_reset, "
      "int surrogate, float alpha, float beta, bool smooth, bool need_decay_grad) "
      "-> (Tensor grad_x, Tensor grad_v0, Tensor grad_decay)");
  // LIF of an affine input: the neuron charges with x * scale + shift (scale,
  // shift: x.shape[1:], contiguous, decay's dtype; a BatchNorm folded into the
  // LIF, so that x = the BN input is all autograd keeps). decay may also be
  // per neuron here. grad_x = dL/dx = g * scale, grad_scale = sum_t g * x,
  // grad_shift = sum_t g (g = dL/d(x * scale + shift)), each of x.shape[1:] with
  // need_affine_grad, else empty ([0]). addend (None, or x's shape and dtype) is charged
  // too, x * scale + shift + addend (a residual); grad_addend = g with need_addend_grad,
  // else empty (as without an addend: the kernels then store nothing for it).
  // The rest as lif_backward.
  m.def(
      "lif_affine_forward(Tensor x, Tensor? v0, Tensor decay, Tensor scale, Tensor shift, Tensor? addend, "
      "float v_threshold, float v_reset, bool hard_reset, bool decay_input, bool detach_reset, "
      "int surrogate, float alpha, float beta, bool smooth) -> (Tensor spikes, Tensor v_last)");
  m.def(
      "lif_affine_backward(Tensor grad_spikes, Tensor? grad_v_last, Tensor x, Tensor? v0, "
      "Tensor decay, Tensor scale, Tensor shift, Tensor? addend, float v_threshold, float v_reset, bool hard_reset, "
      "bool decay_input, bool detach_reset, int surrogate, float alpha, float beta, bool smooth, "
      "bool need_decay_grad, bool need_affine_grad, bool need_addend_grad) "
      "-> (Tensor grad_x, Tensor grad_v0, Tensor grad_decay, Tensor grad_scale, Tensor grad_shift, "
      "Tensor grad_addend)");
  // Spikes as bits (csrc/spike_pack.cpp; tcl_fast/pack.py): x holds 0/1 in float16/bfloat16/
  // float32/float64, read flat in memory order; bits: uint8 [ceil(numel/8)], element i is bit
  // i % 8 (LSB first) of byte i / 8. unpack_spikes returns a flat [numel] tensor of 0/1 in dtype.
  m.def("pack_spikes(Tensor x) -> Tensor");
  m.def("unpack_spikes(Tensor bits, int numel, ScalarType dtype) -> Tensor");
  // Which build of the CPU kernels runs here: avx512, avx2 (with FMA) or
  // baseline, capped by the cpu_isa tuning knob. Benchmarks record it.
  m.def("_cpu_isa() -> str", &tcl_fast::lif::cpu::cpu_isa_name);
  // The kernels' process-wide tuning knobs (csrc/lif_tuning.h) as text, behind
  // tcl_fast.ops.tuning(); a bad knob or value raises ValueError.
  m.def("_get_tuning(str knob) -> str", &tcl_fast::lif::get_tuning);
  m.def("_set_tuning(str knob, str value) -> ()", &tcl_fast::lif::set_tuning);
}
