#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymInt.h>

#include <optional>
#include <tuple>

#include "rotary_attention/detail/keep_linked.h"

namespace rotary_attention {

/// The math of MultiHeadAttention (the original's forward) as one dispatcher
/// operator, `torch.ops.rotary_attention.multi_head_attention` in Python.
/// Built from ATen ops and `rotary` (CompositeImplicitAutograd), so autograd,
/// torch.compile and torch.export trace through it; the C++ module calls it.
///
/// Weights are the module's (`attn_ln` as norm_weight/norm_bias, LayerNorm or,
/// with group_norm, GroupNorm(1, n_state)); Linear weights are cast to x's
/// dtype as Whisper's Linear does. `dropout_p` applies on the explicit path
/// when `train`. Keys and values:
/// - self-attention (xa absent): from x; with cached_key/cached_value they are
///   appended to the cache (the detached concatenation, as Whisper's hook);
/// - cross-attention: from xa, or the cached ones when given.
/// With `absolute_positions`, queries (and new self-attention keys) are
/// rotated at `query_position` onward and keys are cached rotated; otherwise
/// queries and all keys are rotated at 0.. (the original's semantics).
///
/// Returns (out, qk, key, value): out = out(attention) + x; qk the fp32
/// pre-softmax logits on the explicit path (an empty tensor on the SDPA
/// path); key and value what a cache should hold after this call.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> multi_head_attention(
    const at::Tensor& x,
    const std::optional<at::Tensor>& xa,
    const std::optional<at::Tensor>& mask,
    const std::optional<at::Tensor>& norm_weight,
    const std::optional<at::Tensor>& norm_bias,
    bool group_norm,
    const at::Tensor& query_weight,
    const std::optional<at::Tensor>& query_bias,
    const at::Tensor& key_weight,
    const at::Tensor& value_weight,
    const std::optional<at::Tensor>& value_bias,
    const at::Tensor& out_weight,
    const std::optional<at::Tensor>& out_bias,
    const at::Tensor& inv_freq,
    const at::Tensor& rotation_matrix,
    const at::Tensor& temperature,
    int64_t n_head,
    bool sdpa,
    double dropout_p,
    bool train,
    bool absolute_positions,
    const std::optional<at::Tensor>& cached_key,
    const std::optional<at::Tensor>& cached_value,
    c10::SymInt query_position);

} // namespace rotary_attention
