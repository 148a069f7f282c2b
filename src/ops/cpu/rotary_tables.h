#pragma once
// The CPU kernel's cos/sin tables: one row per distinct position, one column
// per frequency, computed once per call with ATen's own cos/sin, so that with
// default arguments the values are the ones the original's
// `sinusoid_inp.sin()` / `.cos()` produce. (The CUDA kernel computes sin/cos
// in the kernel.)

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <optional>

#include "../rotary_frontend.h"

namespace rotary_attention::ops::cpu {

struct RotaryTables {
  at::Tensor cos; // (P, rotary_dim / 2), contiguous, math dtype
  at::Tensor sin;
  bool per_batch; // row of token (b, t) is b * T + t, else t
};

// angles[p, j] = float(position p) * inv_freq[j], one rounding, as the
// original's einsum of arange and inv_freq; a plain loop, since arange/mul
// launches would dominate at decode sizes. CPU tensors only.
inline at::Tensor rotary_angles(
    const at::Tensor& x,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions,
    int64_t offset,
    c10::ScalarType angle_dtype) {
  const at::Tensor freq = inv_freq.to(angle_dtype).contiguous();
  at::Tensor pos;
  if (positions.has_value()) {
    pos = positions->reshape({-1}).to(at::kLong).contiguous();
  }
  const int64_t P = pos.defined() ? pos.numel() : x.size(1);
  const int64_t half = freq.numel();
  at::Tensor angles = at::empty({P, half}, freq.options());
  const int64_t* pos_data = pos.defined() ? pos.const_data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES(angle_dtype, "rotary_angles", [&] {
    const scalar_t* f = freq.const_data_ptr<scalar_t>();
    scalar_t* a = angles.mutable_data_ptr<scalar_t>();
    for (int64_t p = 0; p < P; ++p) {
      const auto position = static_cast<scalar_t>((pos_data ? pos_data[p] : p) + offset);
      for (int64_t j = 0; j < half; ++j) {
        a[p * half + j] = position * f[j];
      }
    }
  });
  return angles;
}

inline RotaryTables make_rotary_tables(
    const at::Tensor& x,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions,
    int64_t offset) {
  // The original computes angles in inv_freq's dtype; half-precision
  // frequencies are widened so angles keep fp32 accuracy.
  const auto angle_dtype = rotary_angle_dtype(inv_freq);
  const at::Tensor angles = rotary_angles(x, inv_freq, positions, offset, angle_dtype);
  const auto math = rotary_math_dtype(x, inv_freq);
  return {
      angles.cos().to(math).contiguous(),
      angles.sin().to(math).contiguous(),
      positions.has_value() && positions->dim() == 2};
}

} // namespace rotary_attention::ops::cpu
