#pragma once
// Argument checks and layout parsing shared by the CPU, CUDA and Meta kernels.
// Sizes are read as SymInts so the Meta kernel works under dynamic shapes.

#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <optional>

namespace rotary_attention::ops {

// Where the two members of rotation pair j live inside the rotated features.
enum class PairLayout {
  Interleaved, // (2j, 2j + 1)
  Split, // (j, j + rotary_dim / 2)
};

struct Layouts {
  PairLayout in;
  PairLayout out;
};

inline Layouts parse_layout(c10::string_view layout) {
  if (layout == "seed") {
    return {PairLayout::Interleaved, PairLayout::Split};
  }
  if (layout == "interleaved") {
    return {PairLayout::Interleaved, PairLayout::Interleaved};
  }
  if (layout == "half") {
    return {PairLayout::Split, PairLayout::Split};
  }
  TORCH_CHECK(
      false,
      "rotary: layout must be \"seed\", \"interleaved\" or \"half\", got \"",
      std::string(layout),
      "\"");
}

inline bool is_rotary_float(c10::ScalarType t) {
  return t == c10::kFloat || t == c10::kDouble || t == c10::kHalf ||
      t == c10::kBFloat16;
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
      op, ": expected x of shape (B, T, H, D), got a tensor of rank ", x.dim(),
      " and shape ", x.sym_sizes());
  TORCH_CHECK(
      is_rotary_float(x.scalar_type()),
      op, ": x must be float32, float64, float16 or bfloat16, got ",
      x.scalar_type());
  TORCH_CHECK(
      inv_freq.dim() == 1 && is_rotary_float(inv_freq.scalar_type()),
      op, ": inv_freq must be a 1-D floating tensor, got rank ", inv_freq.dim(),
      " and dtype ", inv_freq.scalar_type());
  TORCH_CHECK(
      inv_freq.device() == x.device(),
      op, ": inv_freq must be on x's device (", x.device(), "), got ",
      inv_freq.device());
  TORCH_CHECK(
      !inv_freq.requires_grad(),
      op, ": inv_freq must not require grad (the operator does not "
      "differentiate with respect to the frequencies)");
  const c10::SymInt& D = x.sym_size(3);
  c10::SymInt rd = rotary_dim < 0 ? D : c10::SymInt(rotary_dim);
  TORCH_CHECK(
      rotary_dim >= -1,
      op, ": rotary_dim must be -1 (all of D) or a positive even number, got ",
      rotary_dim);
  TORCH_CHECK(
      rd % 2 == 0 && rd <= D,
      op, ": the rotated size must be even and at most D (head dim): got ",
      "rotary_dim=", rd, " with x of shape ", x.sym_sizes(),
      " (x's last dimension must be even when rotary_dim is -1)");
  TORCH_CHECK(
      inv_freq.sym_numel() * 2 == rd,
      op, ": inv_freq must have rotary_dim / 2 = ", rd / 2,
      " entries (one per rotation pair), got ", inv_freq.sym_numel());
  if (positions.has_value()) {
    const at::Tensor& p = *positions;
    TORCH_CHECK(
        p.scalar_type() == c10::kLong || p.scalar_type() == c10::kInt,
        op, ": positions must be int64 or int32, got ", p.scalar_type());
    TORCH_CHECK(
        p.device() == x.device(),
        op, ": positions must be on x's device (", x.device(), "), got ",
        p.device());
    const bool per_token = p.dim() == 1 && p.sym_size(0) == x.sym_size(1);
    const bool per_batch = p.dim() == 2 && p.sym_size(0) == x.sym_size(0) &&
        p.sym_size(1) == x.sym_size(1);
    TORCH_CHECK(
        per_token || per_batch,
        op, ": positions must have shape (T,) or (B, T) = (", x.sym_size(0),
        ", ", x.sym_size(1), "), got ", p.sym_sizes());
  }
  return rd;
}

// The in-place variant writes every element of x once: x must not overlap itself.
inline void check_in_place_target(const at::Tensor& x) {
  TORCH_CHECK(
      at::has_internal_overlap(x) != at::MemOverlap::Yes,
      "rotary_: x has overlapping memory (e.g. an expanded view); rotate a copy instead");
}

} // namespace rotary_attention::ops
