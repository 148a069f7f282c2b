#pragma once
// y = x @ W^T + b for the few rows of a decode step (a beam: 1 to 16 rows),
// reading W once, row after row, at memory speed; MKL's GEMM for such shapes
// reaches a third to a half of it, and its GEMV for one row less.

#include <ATen/core/Tensor.h>

#include <optional>
#include <utility>

namespace rotary_attention::whisper::detail {

/// x: (..., K); weight: (N, K) contiguous, fp32, or int8 with `scale` (N,)
/// fp32, one per output (weight ~ int8 * scale, as quantize_rows_int8 makes
/// it); bias: (N,) fp32, or undefined. Returns (..., N) fp32. Sums in fp32, in
/// lanes of 16 then across them: not the bits of at::linear, within fp32
/// rounding of it. Any number of rows; the weight is read once per 8.
at::Tensor few_rows_linear(
    const at::Tensor& x,
    const at::Tensor& weight,
    const at::Tensor& bias,
    const at::Tensor& scale = {});

/// Symmetric int8 quantization per output row: (q, scale) with weight ~ q *
/// scale[:, None], scale = max |row| / 127, |q| <= 127.
std::pair<at::Tensor, at::Tensor> quantize_rows_int8(const at::Tensor& weight);

/// Up to this many rows, few_rows_linear beats MKL's GEMM on fp32 weights.
constexpr int64_t kMaxRows = 16;

/// F.linear over an fp32 weight, or an int8 one with its scale: few_rows_linear
/// for a decode step's rows (few_rows_apply; int8: up to 4 x kMaxRows rows),
/// dense_linear otherwise (over the dequantized weight: a GEMM reuses the
/// weights from cache where the few-rows product reads them once per 8 rows).
at::Tensor linear_for_rows(
    const at::Tensor& x,
    const at::Tensor& weight,
    const at::Tensor& bias,
    const at::Tensor& scale = {});

/// weight, or q * scale[:, None] for an int8 one (fp32).
at::Tensor dequantized(const at::Tensor& weight, const at::Tensor& scale);

/// Whether few_rows_linear takes this product: a decode step's rows on the
/// CPU, an fp32 model (other dtypes and devices take at::linear).
inline bool few_rows_apply(const at::Tensor& x, const at::Tensor& weight) {
  return x.device().is_cpu() && x.numel() <= kMaxRows * x.size(-1) &&
         weight.scalar_type() == at::kFloat && weight.is_contiguous();
}

} // namespace rotary_attention::whisper::detail
