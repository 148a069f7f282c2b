#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <optional>
#include <tuple>

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
/// - `layout`: "seed" (interleaved in, half-split out: the original),
///   "interleaved" (GPT-J) or "half" (NeoX).
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
    c10::string_view layout = "seed",
    int64_t rotary_dim = -1);

/// The transpose (= inverse) of `rotary` with the same arguments, applied to
/// `grad`: the gradient of `rotary` w.r.t. `x`. Reads `grad` in the output
/// layout and writes the input layout.
at::Tensor rotary_backward(
    const at::Tensor& grad,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions = std::nullopt,
    int64_t offset = 0,
    c10::string_view layout = "seed",
    int64_t rotary_dim = -1);

/// `rotary` in place, for inference (x must not require grad, or grad mode
/// must be off). Returns x.
at::Tensor& rotary_(
    at::Tensor& x,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions = std::nullopt,
    int64_t offset = 0,
    c10::string_view layout = "seed",
    int64_t rotary_dim = -1);

/// Queries and keys (same B, T, D; H may differ) at the same positions in
/// one call: (rotary(q, ...), rotary(k, ...)).
std::tuple<at::Tensor, at::Tensor> rotary_qk(
    const at::Tensor& q,
    const at::Tensor& k,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions = std::nullopt,
    int64_t offset = 0,
    c10::string_view layout = "seed",
    int64_t rotary_dim = -1);

/// True when the CUDA kernel was compiled into this library.
bool built_with_cuda();

namespace detail {
// Defined next to the TORCH_LIBRARY block. Every program that includes this
// header references it, so a linker using --as-needed keeps the library (and
// with it the operator registration) even when nothing else is called.
int64_t operators_registered();
inline const int64_t keep_operators_linked = operators_registered();
} // namespace detail

} // namespace rotary_attention
