#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

#include "rotary_attention/detail/keep_linked.h"

namespace rotary_attention {

/// Attention of a few queries over a KV cache whose rows hold different
/// numbers of steps (`torch.ops.rotary_attention.decode_attention` in Python):
/// the decode step of flash-attention's `flash_attn_with_kvcache`, on the CPU.
///
/// - `q`: (B, T, n_state), T queries per row (meant for T <= 16: decoding, or
///   a few speculative tokens), `n_head` heads of n_state / n_head features.
/// - `key_cache`, `value_cache`: (B, capacity, n_state), q's dtype and device,
///   unit stride along the features (the KVCache's buffers as they are).
/// - `lengths`: (B,) int64 or int32, the steps of each row that are written
///   (0..capacity); nothing past them is read.
/// - `causal`: query t of row b sits at position lengths[b] - T + t and sees
///   the keys up to it (bottom-right aligned); otherwise every query sees the
///   row's lengths[b] keys.
/// - `scale`: the logits' scale, 1/sqrt(head_dim) by default (as SDPA).
///
/// Returns (B, T, n_state) in q's dtype. A query that sees no key gets zeros.
/// The CPU kernel accumulates in fp32 for fp32, bf16 and fp16 caches; other
/// dtypes, and CUDA, run ATen's scaled_dot_product_attention with the lengths
/// as a mask. Inference only: inputs that require grad are refused.
at::Tensor decode_attention(
    const at::Tensor& q,
    const at::Tensor& key_cache,
    const at::Tensor& value_cache,
    const at::Tensor& lengths,
    int64_t n_head,
    bool causal = false,
    std::optional<double> scale = std::nullopt);

} // namespace rotary_attention
