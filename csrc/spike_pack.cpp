// CPU kernels of tcl_fast::pack_spikes / unpack_spikes (declared in ops.cpp):
// a 0/1 tensor to 1 bit per element and back, for spikes saved for backward
// (tcl_fast/pack.py). Layout: element i is bit i % 8 (LSB first) of byte i / 8;
// the last byte's unused high bits are 0. Any element whose bits other than
// the sign are non-zero packs as 1 (so -0.0 packs as 0); unpack writes +0 or
// exactly 1 in the dtype. Works on raw bits, so one kernel per element width
// serves float/double/half/bfloat16. Reference: tcl_fast/ops/spike_pack.py.
// ATen/core/Tensor.h and the one op used, not ATen/ATen.h: parsing every op's
// declaration took most of this file's compile time.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>

namespace tcl_fast {
namespace spike_pack {
namespace {

constexpr int64_t kGrain = 1 << 14;  // bytes per parallel chunk (128 Ki elements)

template <typename U>
void pack_kernel(const U* x, uint8_t* out, int64_t n, U magnitude_mask) {
  const int64_t full = n / 8;
  at::parallel_for(0, full, kGrain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const U* p = x + b * 8;
      uint32_t byte = 0;
      for (int i = 0; i < 8; ++i) byte |= static_cast<uint32_t>((p[i] & magnitude_mask) != 0) << i;
      out[b] = static_cast<uint8_t>(byte);
    }
  });
  if (n % 8) {
    uint32_t byte = 0;
    for (int64_t i = full * 8; i < n; ++i)
      byte |= static_cast<uint32_t>((x[i] & magnitude_mask) != 0) << (i - full * 8);
    out[full] = static_cast<uint8_t>(byte);
  }
}

template <typename U>
void unpack_kernel(const uint8_t* bits, U* out, int64_t n, U one) {
  const int64_t full = n / 8;
  at::parallel_for(0, full, kGrain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const uint32_t byte = bits[b];
      U* p = out + b * 8;
      for (int i = 0; i < 8; ++i) p[i] = static_cast<U>(((byte >> i) & 1u) * one);
    }
  });
  for (int64_t i = full * 8; i < n; ++i)
    out[i] = static_cast<U>(((static_cast<uint32_t>(bits[full]) >> (i - full * 8)) & 1u) * one);
}

at::Tensor pack_spikes_cpu(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.device().is_cpu(), "pack_spikes: expected a CPU tensor");
  const at::Tensor x = x_in.contiguous();
  const int64_t n = x.numel();
  at::Tensor out = at::empty({(n + 7) / 8}, x.options().dtype(at::kByte));
  if (n == 0) return out;
  uint8_t* o = out.data_ptr<uint8_t>();
  switch (x.scalar_type()) {
    case at::kFloat:
      pack_kernel<uint32_t>(static_cast<const uint32_t*>(x.const_data_ptr()), o, n, 0x7fffffffu);
      break;
    case at::kDouble:
      pack_kernel<uint64_t>(static_cast<const uint64_t*>(x.const_data_ptr()), o, n, 0x7fffffffffffffffull);
      break;
    case at::kHalf:
    case at::kBFloat16:
      pack_kernel<uint16_t>(static_cast<const uint16_t*>(x.const_data_ptr()), o, n, uint16_t(0x7fff));
      break;
    default:
      TORCH_CHECK(false, "pack_spikes: expected float16, bfloat16, float32 or float64, got ", x.scalar_type());
  }
  return out;
}

at::Tensor unpack_spikes_cpu(const at::Tensor& bits_in, int64_t numel, at::ScalarType dtype) {
  TORCH_CHECK(bits_in.device().is_cpu(), "unpack_spikes: expected a CPU tensor");
  TORCH_CHECK(bits_in.scalar_type() == at::kByte, "unpack_spikes: bits must be uint8");
  TORCH_CHECK(numel >= 0 && bits_in.numel() == (numel + 7) / 8,
              "unpack_spikes: bits has ", bits_in.numel(), " bytes, ", numel, " elements need ", (numel + 7) / 8);
  const at::Tensor bits = bits_in.contiguous();
  at::Tensor out = at::empty({numel}, bits.options().dtype(dtype));
  if (numel == 0) return out;
  const uint8_t* b = bits.const_data_ptr<uint8_t>();
  switch (dtype) {
    case at::kFloat:
      unpack_kernel<uint32_t>(b, static_cast<uint32_t*>(out.data_ptr()), numel, 0x3f800000u);
      break;
    case at::kDouble:
      unpack_kernel<uint64_t>(b, static_cast<uint64_t*>(out.data_ptr()), numel, 0x3ff0000000000000ull);
      break;
    case at::kHalf:
      unpack_kernel<uint16_t>(b, static_cast<uint16_t*>(out.data_ptr()), numel, uint16_t(0x3c00));
      break;
    case at::kBFloat16:
      unpack_kernel<uint16_t>(b, static_cast<uint16_t*>(out.data_ptr()), numel, uint16_t(0x3f80));
      break;
    default:
      TORCH_CHECK(false, "unpack_spikes: expected float16, bfloat16, float32 or float64, got ", dtype);
  }
  return out;
}

}  // namespace
}  // namespace spike_pack
}  // namespace tcl_fast

#ifdef TCL_FAST_PACK_DEV
// Stand-alone build for development (torch.utils.cpp_extension.load): declares the ops itself.
TORCH_LIBRARY_FRAGMENT(tcl_fast, m) {
  m.def("pack_spikes(Tensor x) -> Tensor");
  m.def("unpack_spikes(Tensor bits, int numel, ScalarType dtype) -> Tensor");
}
#endif

TORCH_LIBRARY_IMPL(tcl_fast, CPU, m) {
  m.impl("pack_spikes", &tcl_fast::spike_pack::pack_spikes_cpu);
  m.impl("unpack_spikes", &tcl_fast::spike_pack::unpack_spikes_cpu);
}
