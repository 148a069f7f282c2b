#pragma once
// cos/sin tables shared by the CPU and CUDA kernels: one row per distinct
// position, one column per frequency, computed once per call with ATen's own
// elementwise ops, so that with default arguments the values are the ones the
// original's `sinusoid_inp.sin()` / `.cos()` produce on the same device.

#include <ATen/ATen.h>

#include <optional>

namespace rotary_attention::ops {

struct RotaryTables {
  at::Tensor cos; // (P, rotary_dim / 2), contiguous, math dtype
  at::Tensor sin;
  bool per_batch; // row of token (b, t) is b * T + t, else t
};

// fp64 when x or the frequencies are fp64, else fp32 (also for fp16/bf16).
inline c10::ScalarType rotary_math_dtype(const at::Tensor& x, const at::Tensor& inv_freq) {
  return (x.scalar_type() == at::kDouble || inv_freq.scalar_type() == at::kDouble)
      ? at::kDouble
      : at::kFloat;
}

inline RotaryTables make_rotary_tables(
    const at::Tensor& x,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions,
    int64_t offset) {
  // The original computes angles in inv_freq's dtype; half-precision
  // frequencies are widened so angles keep fp32 accuracy.
  const auto angle_dtype =
      inv_freq.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor pos;
  bool per_batch = false;
  if (positions.has_value()) {
    per_batch = positions->dim() == 2;
    pos = positions->reshape({-1}).to(at::kLong);
    if (offset != 0) {
      pos = pos + offset;
    }
  } else {
    pos = at::arange(offset, offset + x.size(1), x.options().dtype(at::kLong));
  }
  at::Tensor angles = pos.to(angle_dtype).unsqueeze(1) * inv_freq.to(angle_dtype).unsqueeze(0);
  const auto math = rotary_math_dtype(x, inv_freq);
  return {angles.cos().to(math).contiguous(), angles.sin().to(math).contiguous(), per_batch};
}

} // namespace rotary_attention::ops
