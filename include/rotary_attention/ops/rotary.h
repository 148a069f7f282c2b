#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>

#include "rotary_attention/detail/keep_linked.h"

namespace rotary_attention {

/// Rotary position embedding of `x` (B, T, H, D), through the dispatcher
/// (`torch.ops.rotary_attention.rotary` in Python and TorchScript).
///
/// With the defaults it returns exactly what the original
/// `RotaryEmbedding.rotate_queries_or_keys(x)` returns: angles
/// `float(t) * inv_freq[j]` for t = 0..T-1, pairs read interleaved
/// (x[2j], x[2j+1]) and written half-split ([rotated x1 | rotated x2]).
///
/// - `positions`: integer (T,) or (B, T) positions; default 0..T-1.
/// - `offset`: added to every position.
/// - `layout`: where rotation pair j = (x1, x2) is read from and written to,
///   for j = 0..rotary_dim/2-1, h = rotary_dim/2:
///   "interleaved_to_half" (the original's): read (x[2j], x[2j+1]), write
///     (out[j], out[j+h]);
///   "interleaved" (GPT-J): read and write (2j, 2j+1);
///   "half" (GPT-NeoX, HF rotate_half): read and write (j, j+h).
/// - `rotary_dim`: rotate only the first `rotary_dim` features (-1: all D);
///   the rest are copied. `inv_freq` has `rotary_dim / 2` entries.
///
/// The result has x's dtype; fp16/bf16 inputs are computed in fp32. Angles
/// are computed in inv_freq's dtype (fp32 for half-precision inv_freq).
/// Differentiable w.r.t. `x` (backward is the inverse rotation, twice
/// differentiable); `inv_freq` must not require grad.
at::Tensor rotary(
    const at::Tensor& x,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions = std::nullopt,
    int64_t offset = 0,
    c10::string_view layout = "interleaved_to_half",
    int64_t rotary_dim = -1);

/// The transpose (= inverse) of `rotary` with the same arguments, applied to
/// `grad`: the gradient of `rotary` w.r.t. `x`. Reads `grad` in the output
/// layout and writes the input layout.
at::Tensor rotary_backward(
    const at::Tensor& grad,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions = std::nullopt,
    int64_t offset = 0,
    c10::string_view layout = "interleaved_to_half",
    int64_t rotary_dim = -1);

/// `rotary` in place, for inference (x must not require grad, or grad mode
/// must be off). Returns x.
at::Tensor& rotary_(
    at::Tensor& x,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions = std::nullopt,
    int64_t offset = 0,
    c10::string_view layout = "interleaved_to_half",
    int64_t rotary_dim = -1);

/// Queries and keys (same B, T, D; H may differ) at the same positions in
/// one call: (rotary(q, ...), rotary(k, ...)).
std::tuple<at::Tensor, at::Tensor> rotary_qk(
    const at::Tensor& q,
    const at::Tensor& k,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions = std::nullopt,
    int64_t offset = 0,
    c10::string_view layout = "interleaved_to_half",
    int64_t rotary_dim = -1);

/// True when the CUDA kernel was compiled into this library.
bool built_with_cuda();

/// The instruction set of the CPU rotation loop this process runs: "DEFAULT",
/// "AVX2", "AVX512" or "AVX512_BF16" (AVX-512 with hardware bf16 rounding).
/// It follows ATen's choice (ATEN_CPU_CAPABILITY) and can be capped with the
/// environment variable ROTARY_ATTENTION_CPU_CAPABILITY (default, avx2, avx512,
/// avx512_bf16), read once; every choice gives bitwise the same results.
std::string cpu_kernel_capability();

} // namespace rotary_attention
