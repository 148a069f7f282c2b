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
/// (the caller passes 0 outside training, as to SDPA). Keys and values:
/// - self-attention (xa absent): from x; with cached_key/cached_value they are
///   appended to the cache (the detached concatenation, as Whisper's hook);
/// - cross-attention: from xa, or the cached ones when given; xa (or the
///   cached keys) may have a batch of 1 for any batch of x (a beam).
/// With a `query_position` (absolute positions, the layer's
/// absolute_positions=True), queries (and new self-attention keys) are rotated
/// at `query_position` onward and keys are cached rotated; without one
/// (std::nullopt) queries and all keys are rotated at 0.. (the original's
/// semantics).
///
/// A growing self-attention cache without a copy per step: key_buffer and
/// value_buffer, (B, capacity, n_state) in x's dtype, hold `cache_length`
/// cached steps; the new keys/values are written in place at
/// [cache_length, cache_length + T) and attention reads the first
/// cache_length + T steps (the buffers must have room: the caller grows them);
/// with absolute positions, x's first token is at position cache_length
/// (query_position's value is not used).
/// Each row's own count (absolute positions only): `lengths`, an int64 tensor
/// (B,), holds the steps each row has cached, as data (a static cache's, for
/// compiled decoding with fixed shapes, or rows of different lengths);
/// cache_length is then not used. Row b's new keys/values are written at
/// [lengths[b], lengths[b] + T) and its queries are rotated there; a full row
/// fails when the step runs (`_assert_async`, also in compiled graphs).
/// Attention over a cache's buffers on the SDPA path, inference, T <= 16:
/// `decode_attention` reads each row's own steps and nothing past them.
/// Otherwise attention reads the whole buffers (per-row lengths) with the steps
/// a row has not written masked out: they must hold finite values (e.g.
/// zeros: a zero weight times NaN is NaN).
/// `positions`: a static cache's cross-attention queries' positions, int64
/// (T,) or (B, T).
///
/// Returns (out, qk, key, value): out = out(attention) + x; qk the fp32
/// pre-softmax logits on the explicit path (an empty tensor on the SDPA
/// path); key and value what a cache should hold after this call (with
/// buffers: the new steps, already written).
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
    const std::optional<at::Tensor>& cached_key,
    const std::optional<at::Tensor>& cached_value,
    std::optional<c10::SymInt> query_position,
    const std::optional<at::Tensor>& key_buffer = std::nullopt,
    const std::optional<at::Tensor>& value_buffer = std::nullopt,
    c10::SymInt cache_length = 0,
    const std::optional<at::Tensor>& positions = std::nullopt,
    const std::optional<at::Tensor>& lengths = std::nullopt);

/// MultiHeadAttention between its projections and its output projection, the
/// same code `multi_head_attention` runs after its own projections:
/// `torch.ops.rotary_attention.attention_core`. q, k, v are what the query,
/// key and value projections returned ((B, T, n_state); k and v from xa when
/// `cross`, where a batch of 1 serves every row of q, as a beam search passes
/// one audio's features). Rotary and the rotation layer are applied to q and k
/// (unless `rotate` is false: the caller rotated them, and then no cache and
/// no query_position); the cache arguments are multi_head_attention's (k
/// and v are not read for cross-attention with cached keys). Returns
/// (attention, qk, key, value): the layer's output is out(attention) + x.
/// The Python nn.Module calls it when its children must run as modules
/// (hooks, LoRA, quantized or replaced children).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_core(
    const at::Tensor& q,
    const at::Tensor& k,
    const at::Tensor& v,
    bool cross,
    const std::optional<at::Tensor>& mask,
    const at::Tensor& inv_freq,
    const at::Tensor& rotation_matrix,
    const at::Tensor& temperature,
    int64_t n_head,
    bool sdpa,
    double dropout_p,
    bool rotate = true,
    const std::optional<at::Tensor>& cached_key = std::nullopt,
    const std::optional<at::Tensor>& cached_value = std::nullopt,
    std::optional<c10::SymInt> query_position = std::nullopt,
    const std::optional<at::Tensor>& key_buffer = std::nullopt,
    const std::optional<at::Tensor>& value_buffer = std::nullopt,
    c10::SymInt cache_length = 0,
    const std::optional<at::Tensor>& positions = std::nullopt,
    const std::optional<at::Tensor>& lengths = std::nullopt);

} // namespace rotary_attention
