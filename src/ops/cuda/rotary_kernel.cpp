// CUDA kernels of rotary_attention::rotary, ::rotary_backward and ::rotary_:
// the shared front end (rotary_frontend.h), then one launch of the kernel in
// rotary_launch.cu on the current stream.

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>

#include "../rotary_frontend.h"
#include "rotary_launch.h"

namespace rotary_attention::ops::cuda {
namespace {

Element element_of(const at::Tensor& x) {
  switch (x.scalar_type()) {
    case at::kFloat:
      return Element::Float;
    case at::kDouble:
      return Element::Double;
    case at::kHalf:
      return Element::Half;
    case at::kBFloat16:
      return Element::BFloat16;
    default:
      TORCH_CHECK(false, "rotary: unsupported dtype ", x.scalar_type());
  }
}

struct Cuda {
  static constexpr c10::DeviceType type = c10::DeviceType::CUDA;
  // A pair is written where other threads' pairs are read when the layouts
  // differ: the front end goes through a copy then.
  static constexpr bool in_place_across_layouts = false;
  static void rotate(const RotaryCall& c);
};

void Cuda::rotate(const RotaryCall& c) {
  const at::Tensor& x = c.x;
  at::Tensor& out = c.out;
  const c10::cuda::CUDAGuard guard(x.device());
  // Angles in inv_freq's dtype (fp32 for 16-bit frequencies), math as on the CPU.
  const at::Tensor freq = c.inv_freq.to(rotary_angle_dtype(c.inv_freq)).contiguous();
  const at::Tensor pos =
      c.positions.has_value() ? c.positions->to(at::kLong).contiguous() : at::Tensor();

  auto pairs_aligned = [](const at::Tensor& t) {
    return t.stride(3) == 1 && t.stride(2) % 2 == 0 && t.stride(1) % 2 == 0 &&
           t.stride(0) % 2 == 0 &&
           reinterpret_cast<uintptr_t>(t.const_data_ptr()) % (2 * t.element_size()) == 0;
  };
  const RotaryLaunch launch{
      x.const_data_ptr(),
      out.mutable_data_ptr(),
      freq.const_data_ptr(),
      pos.defined() ? pos.const_data_ptr<int64_t>() : nullptr,
      element_of(x),
      rotary_angle_dtype(c.inv_freq) == at::kDouble,
      c.layouts,
      c.inverse,
      x.size(0) * x.size(1),
      x.size(1),
      x.size(2),
      x.size(3),
      x.stride(0),
      x.stride(1),
      x.stride(2),
      x.stride(3),
      out.stride(0),
      out.stride(1),
      out.stride(2),
      out.stride(3),
      c.rotary_dim,
      c.offset,
      pos.defined() && pos.dim() == 2,
      pairs_aligned(x),
      pairs_aligned(out),
      c10::cuda::getCurrentCUDAStream().stream()};
  C10_CUDA_CHECK(launch_rotary(launch));
}

} // namespace

TORCH_LIBRARY_IMPL(rotary_attention, CUDA, m) {
  RotaryKernels<Cuda>::register_in(m);
}

} // namespace rotary_attention::ops::cuda
