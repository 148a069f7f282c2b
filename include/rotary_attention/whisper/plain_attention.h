#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>

#include <tuple>

#include "rotary_attention/nn/kv_cache.h"

namespace rotary_attention::whisper {

/// The attention of Whisper's own checkpoints (openai-whisper's
/// `MultiHeadAttention`): query, key (no bias), value and out projections and
/// scaled dot-product attention over heads, with no rotary embedding, no
/// learned rotation, and no norm or residual of its own (the block holds
/// those). Its state-dict keys are Whisper's (`query.weight`, `key.weight`,
/// ...). A KVCache gives it Whisper's hook semantics: self-attention keys are
/// appended, the audio's keys computed once.
class PlainAttentionImpl : public torch::nn::Cloneable<PlainAttentionImpl> {
 public:
  PlainAttentionImpl(int64_t n_state, int64_t n_head);
  void reset() override;

  /// x: (B, T, n_state). xa: the audio features (cross-attention) or
  /// undefined. mask: defined for the decoder's self-attention, which is then
  /// causal when T > 1 (Whisper's `is_causal=mask is not None and n_ctx > 1`).
  torch::Tensor forward(
      const torch::Tensor& x,
      const torch::Tensor& xa = {},
      const torch::Tensor& mask = {},
      KVCache* kv_cache = nullptr);

  /// Whisper's attention without SDPA (`disable_sdpa()`), and without a
  /// cache: (out, qk), qk the fp32 logits (B, n_head, T, S) before the
  /// softmax, `(q * d^-0.25) @ (k * d^-0.25)^T` plus the mask.
  std::tuple<torch::Tensor, torch::Tensor> forward_with_weights(
      const torch::Tensor& x, const torch::Tensor& xa = {}, const torch::Tensor& mask = {});

  int64_t n_state, n_head;
  torch::nn::Linear query{nullptr}, key{nullptr}, value{nullptr}, out{nullptr};

 private:
  void check_input(const torch::Tensor& x) const; ///< x: (B, T, n_state)
};
TORCH_MODULE(PlainAttention);

} // namespace rotary_attention::whisper
