#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/common.h>
#include <torch/nn/modules/container/any_value.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <tuple>

#include "rotary_attention/nn/kv_cache.h"
#include "rotary_attention/nn/options.h"
#include "rotary_attention/nn/rotary_embedding.h"
#include "rotary_attention/nn/rotation_layer.h"

namespace rotary_attention {

/// Whisper-style multi-head attention with rotary embeddings and a learned
/// rotation, a port of the original `MultiHeadAttention` (see README for the
/// few documented differences). State-dict keys are the original's.
class MultiHeadAttentionImpl : public torch::nn::Cloneable<MultiHeadAttentionImpl> {
 public:
  MultiHeadAttentionImpl(int64_t n_state, int64_t n_head)
      : MultiHeadAttentionImpl(MultiHeadAttentionOptions(n_state, n_head)) {}
  explicit MultiHeadAttentionImpl(const MultiHeadAttentionOptions& options_);

  void reset() override;

  /// x: (B, T, n_state). xa: (B, S, n_state) for cross-attention. mask: 2-D
  /// additive mask; on the SDPA path only its presence matters (causal when
  /// T > 1). Returns (out(attention) + x, qk) where qk, the fp32 pre-softmax
  /// logits, is undefined on the SDPA path.
  std::tuple<torch::Tensor, torch::Tensor> forward(
      const torch::Tensor& x,
      const torch::Tensor& xa = {},
      const torch::Tensor& mask = {},
      KVCache* kv_cache = nullptr);

  /// The same without SDPA or a cache, whatever `options.sdpa()`: (out, qk)
  /// with qk defined (what word timestamps read from the cross-attention).
  std::tuple<torch::Tensor, torch::Tensor> forward_with_weights(
      const torch::Tensor& x, const torch::Tensor& xa = {}, const torch::Tensor& mask = {});

  void pretty_print(std::ostream& stream) const override;

  int64_t head_dim() const {
    return options.n_state() / options.n_head();
  }

  MultiHeadAttentionOptions options;
  torch::nn::Linear query{nullptr};
  torch::nn::Linear key{nullptr};
  torch::nn::Linear value{nullptr};
  torch::nn::Linear out{nullptr};
  RotaryEmbedding rotary_emb{nullptr};
  RotationLayer rotation_layer{nullptr};
  torch::Tensor temperature;
  torch::nn::Dropout dropout{nullptr};
  /// `attn_ln`: exactly one of these is set, by options.group_norm().
  torch::nn::LayerNorm layer_norm{nullptr};
  torch::nn::GroupNorm group_norm{nullptr};

 protected:
  std::tuple<torch::Tensor, torch::Tensor> run(
      const torch::Tensor& x,
      const torch::Tensor& xa,
      const torch::Tensor& mask,
      KVCache* kv_cache,
      bool sdpa);

  FORWARD_HAS_DEFAULT_ARGS(
      {1, torch::nn::AnyValue(torch::Tensor())},
      {2, torch::nn::AnyValue(torch::Tensor())},
      {3, torch::nn::AnyValue(static_cast<KVCache*>(nullptr))})
};

TORCH_MODULE(MultiHeadAttention);

} // namespace rotary_attention
