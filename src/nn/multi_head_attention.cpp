#include "rotary_attention/nn/multi_head_attention.h"

#include <ATen/ATen.h>

#include "rotary_attention/ops/multi_head_attention.h"

#include <cmath>

namespace rotary_attention {

MultiHeadAttentionImpl::MultiHeadAttentionImpl(const MultiHeadAttentionOptions& options_)
    : options(options_) {
  reset();
}

void MultiHeadAttentionImpl::reset() {
  const int64_t n_state = options.n_state();
  const int64_t n_head = options.n_head();
  TORCH_CHECK(
      n_state > 0 && n_head > 0,
      "MultiHeadAttention: n_state and n_head must be positive, got n_state=",
      n_state,
      ", n_head=",
      n_head);
  TORCH_CHECK(
      n_state % n_head == 0,
      "MultiHeadAttention: n_state (",
      n_state,
      ") must be divisible by n_head (",
      n_head,
      ")");
  TORCH_CHECK(
      head_dim() % 2 == 0,
      "MultiHeadAttention: head_dim = n_state / n_head = ",
      head_dim(),
      " must be even (rotary embeddings rotate pairs of features)");
  TORCH_CHECK(
      options.dropout_rate() >= 0.0 && options.dropout_rate() <= 1.0,
      "MultiHeadAttention: dropout_rate must be in [0, 1], got ",
      options.dropout_rate());

  query = register_module("query", torch::nn::Linear(n_state, n_state));
  key = register_module(
      "key", torch::nn::Linear(torch::nn::LinearOptions(n_state, n_state).bias(false)));
  value = register_module("value", torch::nn::Linear(n_state, n_state));
  out = register_module("out", torch::nn::Linear(n_state, n_state));
  rotary_emb = register_module("rotary_emb", RotaryEmbedding(head_dim()));
  rotation_layer = register_module("rotation_layer", RotationLayer(head_dim()));
  temperature = register_parameter(
      "temperature", torch::ones({1}) * std::pow(static_cast<double>(head_dim()), -0.5));
  dropout = register_module("dropout", torch::nn::Dropout(options.dropout_rate()));
  if (options.group_norm()) {
    group_norm = register_module("attn_ln", torch::nn::GroupNorm(1, n_state));
  } else {
    layer_norm =
        register_module("attn_ln", torch::nn::LayerNorm(torch::nn::LayerNormOptions({n_state})));
  }
}

std::tuple<torch::Tensor, torch::Tensor> MultiHeadAttentionImpl::forward(
    const torch::Tensor& x, const torch::Tensor& xa, const torch::Tensor& mask, KVCache* kv_cache) {
  return run(x, xa, mask, kv_cache, options.sdpa());
}

std::tuple<torch::Tensor, torch::Tensor> MultiHeadAttentionImpl::forward_with_weights(
    const torch::Tensor& x, const torch::Tensor& xa, const torch::Tensor& mask) {
  return run(x, xa, mask, nullptr, /*sdpa=*/false);
}

std::tuple<torch::Tensor, torch::Tensor> MultiHeadAttentionImpl::run(
    const torch::Tensor& x,
    const torch::Tensor& xa,
    const torch::Tensor& mask,
    KVCache* kv_cache,
    bool sdpa) {
  const bool cross = xa.defined();
  // Cross-attention over a cache keeps its keys rotated, computed once per
  // audio: the original's semantics rotate the keys at 0..S-1 and the queries
  // at 0..T-1 on every call, which is absolute_positions with the queries at 0
  // (the same rotation of the same keys, so the same bits).
  const bool absolute = options.absolute_positions() || (cross && kv_cache != nullptr);
  // Self-attention with a cache: the new keys are written into the cache's
  // buffers, made large enough first. Cross-attention: xa's keys, once.
  KVCache::Entry* buffers = nullptr;
  const KVCache::Entry* cached = nullptr;
  if (kv_cache != nullptr) {
    if (cross) {
      cached = kv_cache->find(this);
    } else {
      TORCH_CHECK(
          x.dim() == 3 && x.size(2) == options.n_state(),
          "MultiHeadAttention: expected x of shape (B, T, n_state=",
          options.n_state(),
          "), got shape ",
          x.sizes());
      buffers = &kv_cache->reserve(this, x, x.size(1));
    }
  }
  const int64_t cache_length = buffers != nullptr ? buffers->length : 0;
  // absolute_positions: the position of x's first token: after the cached
  // keys (self-attention), or after the queries seen so far (cross-attention).
  const int64_t query_position =
      !options.absolute_positions()
          ? 0
          : (cross ? (cached != nullptr ? cached->queries : 0) : cache_length);
  // A beam over one audio whose cached keys are read once: the rows' queries
  // become one row's, each rotated at its own row's positions (no mask: with
  // one, the SDPA path would be causal over the folded queries).
  const bool fold = cross && cached != nullptr && kv_cache->shared_keys_read_once() && sdpa &&
                    !options.group_norm() && !mask.defined() && cached->key_buffer.size(0) == 1 &&
                    x.dim() == 3 && x.size(0) > 1;
  const torch::Tensor input = fold ? x.reshape({1, x.size(0) * x.size(1), x.size(2)}) : x;
  std::optional<torch::Tensor> positions;
  if (fold) {
    positions =
        (at::arange(x.size(1), x.options().dtype(at::kLong)) + query_position).repeat({x.size(0)});
  }
  const auto& attn_ln = options.group_norm() ? group_norm->weight : layer_norm->weight;
  const auto& attn_ln_bias = options.group_norm() ? group_norm->bias : layer_norm->bias;
  auto optional = [](const torch::Tensor& t) {
    return t.defined() ? std::optional<torch::Tensor>(t) : std::nullopt;
  };
  auto [result, qk, key_to_cache, value_to_cache] = multi_head_attention(
      input,
      optional(xa),
      optional(mask),
      attn_ln,
      attn_ln_bias,
      options.group_norm(),
      query->weight,
      query->bias,
      key->weight,
      value->weight,
      value->bias,
      out->weight,
      out->bias,
      rotary_emb->inv_freq,
      rotation_layer->rotation_matrix,
      temperature,
      options.n_head(),
      sdpa,
      dropout->is_training() ? dropout->options.p() : 0.0,
      cached != nullptr ? optional(cached->key_buffer) : std::nullopt,
      cached != nullptr ? optional(cached->value_buffer) : std::nullopt,
      absolute ? std::optional<c10::SymInt>(query_position) : std::nullopt,
      buffers != nullptr ? optional(buffers->key_buffer) : std::nullopt,
      buffers != nullptr ? optional(buffers->value_buffer) : std::nullopt,
      cache_length,
      positions);
  if (buffers != nullptr) {
    buffers->length += x.size(1);
  } else if (kv_cache != nullptr) {
    if (cached == nullptr) {
      kv_cache->store(this, key_to_cache, value_to_cache);
    }
    if (options.absolute_positions()) {
      kv_cache->advance_queries(this, x.size(1));
    }
  }
  return {fold ? result.view(x.sizes()) : result, sdpa ? torch::Tensor() : qk};
}

void MultiHeadAttentionImpl::pretty_print(std::ostream& stream) const {
  stream << "rotary_attention::MultiHeadAttention(n_state=" << options.n_state()
         << ", n_head=" << options.n_head() << ", dropout_rate=" << options.dropout_rate()
         << ", group_norm=" << (options.group_norm() ? "true" : "false")
         << ", sdpa=" << (options.sdpa() ? "true" : "false")
         << ", absolute_positions=" << (options.absolute_positions() ? "true" : "false") << ")";
}

} // namespace rotary_attention
