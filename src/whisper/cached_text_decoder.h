#pragma once
// Whisper's TextDecoder one decode step at a time, over caches of its own:
// the keys of self-attention are kept rotated (rotary, then the learned
// rotation), written once per token; the audio's keys are rotated once per
// audio and read once per step by a whole beam (decode_attention); the
// projections, the MLP and the logits take the few-rows product, over fp32 or
// int8 weights. The original's semantics (queries rotated at 0..T-1, keys at
// their index in the cache) give the same rotations as recomputing every step;
// the sums run in another order, so the logits agree with the module's to
// fp32 rounding, not bit for bit.

#include <ATen/ATen.h>

#include <vector>

#include "rotary_attention/whisper/decoding.h"
#include "rotary_attention/whisper/model.h"

namespace rotary_attention::whisper::detail {

class CachedTextDecoder {
 public:
  /// Whether the decoder's layers are ones this class reproduces: an fp32
  /// model on the CPU, in eval mode, whose attention layers have the default
  /// options (SDPA, LayerNorm, the original's relative positions).
  static bool supports(const TextDecoderImpl& decoder);

  /// Reads `decoder`'s weights as they are at each call (fp32), or quantizes
  /// them once (int8: per output row, dynamic fp32 activations).
  CachedTextDecoder(TextDecoder decoder, ComputeType compute_type);

  /// fp32 logits (rows, T, n_vocab) of tokens (rows, T) that follow those
  /// given since reset(); audio_features (n_audio, S, n_state), rows /
  /// n_audio consecutive rows per audio (its keys are computed at the first
  /// call after a reset, unless they are the same tensor, unchanged, as the
  /// last sequence's: its keys are kept).
  /// `positions` (of the T new tokens, checked by the caller; none: all) are
  /// the ones whose logits come back. A beam's first call, whose rows of an audio all hold the same
  /// tokens, runs one row per audio and copies its cache to the others.
  at::Tensor logits(
      const at::Tensor& tokens,
      const at::Tensor& audio_features,
      const std::vector<int64_t>& positions = {});

  /// Row i of the cache becomes its row source_rows[i] (within the written steps).
  void reorder(const at::Tensor& source_rows);

  /// Forgets the tokens (a new sequence); the audio's keys stay for the same features.
  void reset();

 private:
  /// A linear layer as a decode step reads it: fp32 weights (the module's
  /// own tensors), or int8 ones with a scale per output.
  /// Each cached row becomes `copies` consecutive rows.
  void widen_rows(int64_t copies);
  struct Projection {
    at::Tensor weight, bias, scale;
    at::Tensor operator()(const at::Tensor& x) const;
  };
  /// The fork's attention (its own norm, rotations and residual), or
  /// Whisper's own (none of them: `ln` null, `inv_freq` undefined).
  struct Attention {
    Projection query, key, value, out;
    torch::nn::LayerNorm ln{nullptr}; ///< the layer's own attn_ln
    at::Tensor inv_freq, rotation;
    bool inner_residual = false; ///< the layer adds its input to its output
    /// rotary at positions offset.. then the learned rotation, of (rows, T, n_state).
    at::Tensor rotate(const at::Tensor& x, int64_t n_head, int64_t offset) const;
    at::Tensor norm(const at::Tensor& h) const {
      return ln ? at::layer_norm(
                      h, ln->options.normalized_shape(), ln->weight, ln->bias, ln->options.eps())
                : h;
    }
    at::Tensor residual(const at::Tensor& attended, const at::Tensor& input) const {
      return inner_residual ? attended + input : attended;
    }
  };
  struct Layer {
    torch::nn::LayerNorm attn_ln{nullptr}, cross_attn_ln{nullptr}, mlp_ln{nullptr};
    Attention self, cross;
    Projection fc1, fc2;
  };
  Projection projection(const torch::nn::LinearImpl& linear) const;
  Attention attention(const MultiHeadAttentionImpl& layer) const;
  Attention attention(const PlainAttentionImpl& layer) const;
  void cache_audio(const at::Tensor& audio_features);

  TextDecoder decoder_;
  ComputeType compute_type_;
  int64_t n_head_;
  std::vector<Layer> layers_;
  Projection logits_;
  // Per layer: (rows, n_text_ctx, n_state) rotated keys and values of the
  // tokens so far; (n_audio, S, n_state) rotated audio keys and values.
  std::vector<at::Tensor> self_keys_, self_values_, audio_keys_, audio_values_;
  int64_t length_ = 0;
  at::Tensor audio_; ///< the features whose keys audio_keys_ hold
  int64_t audio_version_ = 0;
};

} // namespace rotary_attention::whisper::detail
