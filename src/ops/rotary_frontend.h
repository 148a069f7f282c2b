#pragma once
// The front end every rotary kernel shares: argument checks and layout
// parsing (also used by the Meta kernel, so sizes are read as SymInts), the
// dtype rules, and RotaryKernels, which turns a device's rotation routine into
// the three operator entry points (rotary, rotary_backward, rotary_).

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/SymInt.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>
#include <torch/library.h>

#include <optional>
#include <utility>

#include "pair_layout.h"

namespace rotary_attention::ops {

inline Layouts parse_layout(c10::string_view layout) {
  if (layout == "interleaved_to_half") {
    return {PairLayout::Interleaved, PairLayout::Half};
  }
  if (layout == "interleaved") {
    return {PairLayout::Interleaved, PairLayout::Interleaved};
  }
  if (layout == "half") {
    return {PairLayout::Half, PairLayout::Half};
  }
  TORCH_CHECK(
      false,
      "rotary: layout must be \"interleaved_to_half\" (the default), \"interleaved\" or \"half\", "
      "got \"",
      std::string(layout),
      "\"");
}

inline bool is_rotary_float(c10::ScalarType t) {
  return t == c10::kFloat || t == c10::kDouble || t == c10::kHalf || t == c10::kBFloat16;
}

// Validates every argument; returns the effective rotary_dim.
inline c10::SymInt check_rotary_args(
    const char* op,
    const at::Tensor& x,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions,
    c10::string_view layout,
    int64_t rotary_dim) {
  parse_layout(layout);
  TORCH_CHECK(
      x.dim() == 4,
      op,
      ": expected x of shape (B, T, H, D), got a tensor of rank ",
      x.dim(),
      " and shape ",
      x.sym_sizes());
  TORCH_CHECK(
      is_rotary_float(x.scalar_type()),
      op,
      ": x must be float32, float64, float16 or bfloat16, got ",
      x.scalar_type());
  TORCH_CHECK(
      inv_freq.dim() == 1 && is_rotary_float(inv_freq.scalar_type()),
      op,
      ": inv_freq must be a 1-D floating tensor, got rank ",
      inv_freq.dim(),
      " and dtype ",
      inv_freq.scalar_type());
  TORCH_CHECK(
      inv_freq.device() == x.device(),
      op,
      ": inv_freq must be on x's device (",
      x.device(),
      "), got ",
      inv_freq.device());
  TORCH_CHECK(
      !inv_freq.requires_grad(),
      op,
      ": inv_freq must not require grad (the operator does not "
      "differentiate with respect to the frequencies)");
  const c10::SymInt& D = x.sym_size(3);
  c10::SymInt rd = rotary_dim < 0 ? D : c10::SymInt(rotary_dim);
  TORCH_CHECK(
      rotary_dim >= -1,
      op,
      ": rotary_dim must be -1 (all of D) or a positive even number, got ",
      rotary_dim);
  TORCH_CHECK(
      rd % 2 == 0 && rd <= D,
      op,
      ": the rotated size must be even and at most D (head dim): got ",
      "rotary_dim=",
      rd,
      " with x of shape ",
      x.sym_sizes(),
      " (x's last dimension must be even when rotary_dim is -1)");
  TORCH_CHECK(
      inv_freq.sym_numel() * 2 == rd,
      op,
      ": inv_freq must have rotary_dim / 2 = ",
      rd / 2,
      " entries (one per rotation pair), got ",
      inv_freq.sym_numel());
  if (positions.has_value()) {
    const at::Tensor& p = *positions;
    TORCH_CHECK(
        p.scalar_type() == c10::kLong || p.scalar_type() == c10::kInt,
        op,
        ": positions must be int64 or int32, got ",
        p.scalar_type());
    TORCH_CHECK(
        p.device() == x.device(),
        op,
        ": positions must be on x's device (",
        x.device(),
        "), got ",
        p.device());
    const bool per_token = p.dim() == 1 && p.sym_size(0) == x.sym_size(1);
    const bool per_batch =
        p.dim() == 2 && p.sym_size(0) == x.sym_size(0) && p.sym_size(1) == x.sym_size(1);
    TORCH_CHECK(
        per_token || per_batch,
        op,
        ": positions must have shape (T,) or (B, T) = (",
        x.sym_size(0),
        ", ",
        x.sym_size(1),
        "), got ",
        p.sym_sizes());
  }
  return rd;
}

// The in-place variant writes every element of x once: x must not overlap itself.
inline void check_in_place_target(const at::Tensor& x) {
  TORCH_CHECK(
      at::has_internal_overlap(x) != at::MemOverlap::Yes,
      "rotary_: x has overlapping memory (e.g. an expanded view); rotate a copy instead");
}

// The dtype the rotation is computed in: fp64 for fp64 x, and for fp32 x
// with fp64 frequencies (the original promotes there); else fp32, which
// includes fp16/bf16 x whatever the frequencies.
inline c10::ScalarType rotary_math_dtype(const at::Tensor& x, const at::Tensor& inv_freq) {
  const auto t = x.scalar_type();
  return (t == at::kDouble || (t == at::kFloat && inv_freq.scalar_type() == at::kDouble))
             ? at::kDouble
             : at::kFloat;
}

// The dtype angles are computed in: the frequencies' (fp32 for 16-bit ones).
inline c10::ScalarType rotary_angle_dtype(const at::Tensor& inv_freq) {
  return inv_freq.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// One checked call, as a device's rotation routine receives it.
struct RotaryCall {
  const at::Tensor& x; // (B, T, H, D), any strides, not empty
  at::Tensor& out;     // x's shape and dtype: contiguous, or x itself (in_place)
  const at::Tensor& inv_freq;
  const std::optional<at::Tensor>& positions;
  int64_t offset;
  Layouts layouts; // where pairs are read from and written to (swapped for the inverse)
  bool inverse;    // rotate by -angle (the backward)
  bool in_place;
  int64_t rotary_dim;
};

// The operator entry points for one device. Device provides
//   static constexpr c10::DeviceType type;
//   static constexpr bool in_place_across_layouts; // can rotate in place when
//       the layouts differ (else the front end goes through a copy)
//   static void rotate(const RotaryCall&);
template <typename Device>
struct RotaryKernels {
  static at::Tensor run(
      const char* op,
      const at::Tensor& x,
      const at::Tensor& inv_freq,
      const std::optional<at::Tensor>& positions,
      int64_t offset,
      c10::string_view layout,
      int64_t rotary_dim,
      bool inverse,
      bool in_place) {
    const int64_t rd = check_rotary_args(op, x, inv_freq, positions, layout, rotary_dim)
                           .guard_int(__FILE__, __LINE__);
    TORCH_CHECK(
        x.device().type() == Device::type,
        op,
        ": the ",
        c10::DeviceTypeName(Device::type),
        " kernel got x on ",
        x.device());
    Layouts layouts = parse_layout(layout);
    if (inverse) {
      std::swap(layouts.in, layouts.out);
    }
    if (in_place && layouts.in != layouts.out && !Device::in_place_across_layouts) {
      return x.copy_(run(op, x, inv_freq, positions, offset, layout, rotary_dim, inverse, false));
    }
    at::Tensor out =
        in_place ? x
                 : at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
    if (x.numel() > 0) {
      Device::rotate({x, out, inv_freq, positions, offset, layouts, inverse, in_place, rd});
    }
    return out;
  }

  static at::Tensor forward(
      const at::Tensor& x,
      const at::Tensor& inv_freq,
      const std::optional<at::Tensor>& positions,
      int64_t offset,
      c10::string_view layout,
      int64_t rotary_dim) {
    return run("rotary", x, inv_freq, positions, offset, layout, rotary_dim, false, false);
  }

  static at::Tensor backward(
      const at::Tensor& grad,
      const at::Tensor& inv_freq,
      const std::optional<at::Tensor>& positions,
      int64_t offset,
      c10::string_view layout,
      int64_t rotary_dim) {
    return run(
        "rotary_backward", grad, inv_freq, positions, offset, layout, rotary_dim, true, false);
  }

  static void in_place(
      at::Tensor& x,
      const at::Tensor& inv_freq,
      const std::optional<at::Tensor>& positions,
      int64_t offset,
      c10::string_view layout,
      int64_t rotary_dim) {
    check_in_place_target(x);
    run("rotary_", x, inv_freq, positions, offset, layout, rotary_dim, false, true);
  }

  static void register_in(torch::Library& m) {
    m.impl("rotary", &forward);
    m.impl("rotary_backward", &backward);
    m.impl("rotary_", &in_place);
  }
};

} // namespace rotary_attention::ops
