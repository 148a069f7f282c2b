#pragma once

#include <torch/arg.h>

#include <cstdint>

#include "rotary_attention/detail/keep_linked.h"

namespace rotary_attention {

/// Options for `RotationLayer`: a learned `embed_dim x embed_dim` matrix.
struct RotationLayerOptions {
  /* implicit */ RotationLayerOptions(int64_t embed_dim) : embed_dim_(embed_dim) {}
  TORCH_ARG(int64_t, embed_dim);
};

/// Options for `RotaryEmbedding`: `inv_freq = 1 / base^(2j / dim)`.
struct RotaryEmbeddingOptions {
  /* implicit */ RotaryEmbeddingOptions(int64_t dim) : dim_(dim) {}
  TORCH_ARG(int64_t, dim);
  TORCH_ARG(double, base) = 10000.0;
};

/// Options for `MultiHeadAttention`. Defaults are the original's.
struct MultiHeadAttentionOptions {
  MultiHeadAttentionOptions(int64_t n_state, int64_t n_head) : n_state_(n_state), n_head_(n_head) {}
  TORCH_ARG(int64_t, n_state);
  TORCH_ARG(int64_t, n_head);
  /// Dropout on the attention weights, explicit path only, training only.
  TORCH_ARG(double, dropout_rate) = 0.01;
  /// Stored for parity with the original; unused there too.
  TORCH_ARG(bool, gradient_checkpointing) = false;
  /// GroupNorm(1, n_state) instead of LayerNorm(n_state) (see README: needs T == n_state).
  TORCH_ARG(bool, group_norm) = false;
  /// The original's class attribute `MultiHeadAttention.sdpa`, made per module:
  /// true uses scaled_dot_product_attention, false the explicit softmax path.
  TORCH_ARG(bool, sdpa) = true;
  /// false (the original): with a cache, queries are rotated at 0..T-1 and the
  /// whole cached key set is re-rotated every call. true: queries and new keys
  /// are rotated at their absolute positions (cache length onward), the cache
  /// keeps rotated keys, and causal masking is bottom-right aligned, so
  /// token-by-token decoding equals one causal pass over the sequence.
  TORCH_ARG(bool, absolute_positions) = false;
};

} // namespace rotary_attention
