#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/conv.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>

#include <array>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "rotary_attention/nn/kv_cache.h"
#include "rotary_attention/nn/multi_head_attention.h"
#include "rotary_attention/whisper/alignment_heads.h"
#include "rotary_attention/whisper/plain_attention.h"

namespace rotary_attention::whisper {

/// openai-whisper's `ModelDimensions`: what a checkpoint's "dims" holds.
struct ModelDimensions {
  int64_t n_mels = 80;
  int64_t n_audio_ctx = 1500;
  int64_t n_audio_state = 512;
  int64_t n_audio_head = 8;
  int64_t n_audio_layer = 6;
  int64_t n_vocab = 51865;
  int64_t n_text_ctx = 448;
  int64_t n_text_state = 512;
  int64_t n_text_head = 8;
  int64_t n_text_layer = 6;

  /// Whisper's rule: a multilingual vocabulary from 51865 tokens on.
  bool is_multilingual() const {
    return n_vocab >= 51865;
  }
  int64_t num_languages() const {
    return n_vocab - 51765 - (is_multilingual() ? 1 : 0);
  }

  /// Each dim's name (openai-whisper's field name) and member.
  static constexpr std::array<std::pair<const char*, int64_t ModelDimensions::*>, 10> fields() {
    return {
        {{"n_mels", &ModelDimensions::n_mels},
         {"n_audio_ctx", &ModelDimensions::n_audio_ctx},
         {"n_audio_state", &ModelDimensions::n_audio_state},
         {"n_audio_head", &ModelDimensions::n_audio_head},
         {"n_audio_layer", &ModelDimensions::n_audio_layer},
         {"n_vocab", &ModelDimensions::n_vocab},
         {"n_text_ctx", &ModelDimensions::n_text_ctx},
         {"n_text_state", &ModelDimensions::n_text_state},
         {"n_text_head", &ModelDimensions::n_text_head},
         {"n_text_layer", &ModelDimensions::n_text_layer}}};
  }
};

/// Which attention a model's blocks hold.
enum class AttentionKind {
  /// The fork's: this library's `MultiHeadAttention` (rotary embedding,
  /// learned rotation, and a norm and residual of its own inside the layer).
  kRotary,
  /// Whisper's own (`PlainAttention`): what openai's released checkpoints
  /// and their fine-tunes hold.
  kPlain,
};

/// Whisper's `ResidualAttentionBlock`: the block calls the attention on
/// `attn_ln(x)` and adds the result to `x`. With the fork's attention
/// (`kRotary`) the attention layer applies its own norm and residual as well
/// (the fork's arrangement); with Whisper's (`kPlain`) it does not.
/// `cross_attention`: a decoder block.
class ResidualAttentionBlockImpl : public torch::nn::Cloneable<ResidualAttentionBlockImpl> {
 public:
  ResidualAttentionBlockImpl(
      int64_t n_state,
      int64_t n_head,
      bool cross_attention,
      AttentionKind attention = AttentionKind::kRotary);
  void reset() override;

  /// x: (B, T, n_state). xa: the audio features (decoder blocks). mask: the
  /// decoder's causal mask. kv_cache: self-attention keys appended, audio
  /// keys computed once.
  torch::Tensor forward(
      const torch::Tensor& x,
      const torch::Tensor& xa = {},
      const torch::Tensor& mask = {},
      KVCache* kv_cache = nullptr);

  /// `forward` as Whisper runs it under `disable_sdpa()`, without a cache:
  /// (x, qk), qk the cross-attention's fp32 logits (B, n_head, T, S) before
  /// the softmax (a decoder block only).
  std::tuple<torch::Tensor, torch::Tensor> forward_with_cross_weights(
      const torch::Tensor& x, const torch::Tensor& xa, const torch::Tensor& mask);

  /// The self-attention layer (the state dict's `attn`), whichever its kind.
  const torch::nn::Module* self_attention() const;

  int64_t n_state, n_head;
  bool cross_attention;
  AttentionKind attention;
  /// kRotary: `attn` and `cross_attn`; kPlain: `plain_attn` and
  /// `plain_cross_attn`, registered under the same names ("attn",
  /// "cross_attn"). The other pair is null.
  MultiHeadAttention attn{nullptr};
  PlainAttention plain_attn{nullptr};
  torch::nn::LayerNorm attn_ln{nullptr};
  MultiHeadAttention cross_attn{nullptr};
  PlainAttention plain_cross_attn{nullptr};
  torch::nn::LayerNorm cross_attn_ln{nullptr};
  torch::nn::Sequential mlp{nullptr};
  torch::nn::LayerNorm mlp_ln{nullptr};

 private:
  torch::Tensor feed_forward(const torch::Tensor& h); ///< mlp(mlp_ln(h))
};
TORCH_MODULE(ResidualAttentionBlock);

/// Whisper's `AudioEncoder`: two convolutions (the second halves the frames),
/// sinusoidal positions, blocks, a final norm. (B, n_mels, 2 * n_audio_ctx)
/// log-mel frames -> (B, n_audio_ctx, n_audio_state) audio features.
class AudioEncoderImpl : public torch::nn::Cloneable<AudioEncoderImpl> {
 public:
  explicit AudioEncoderImpl(
      const ModelDimensions& dims, AttentionKind attention = AttentionKind::kRotary);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& mel);

  ModelDimensions dims;
  AttentionKind attention;
  torch::nn::Conv1d conv1{nullptr}, conv2{nullptr};
  torch::Tensor positional_embedding;
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::LayerNorm ln_post{nullptr};
};
TORCH_MODULE(AudioEncoder);

/// Whisper's `TextDecoder`. forward: tokens (B, T) -> fp32 logits (B, T,
/// n_vocab); with a cache, the tokens follow those already cached (positions
/// from the first layer's cached length, as Whisper's hooks give them).
class TextDecoderImpl : public torch::nn::Cloneable<TextDecoderImpl> {
 public:
  explicit TextDecoderImpl(
      const ModelDimensions& dims, AttentionKind attention = AttentionKind::kRotary);
  void reset() override;
  torch::Tensor forward(
      const torch::Tensor& tokens,
      const torch::Tensor& audio_features,
      KVCache* kv_cache = nullptr);

  /// Whisper's forward under `disable_sdpa()` (what `find_alignment` runs),
  /// without a cache: the logits and each block's cross-attention logits
  /// (B, n_text_head, T, S) before the softmax.
  std::tuple<torch::Tensor, std::vector<torch::Tensor>> forward_with_cross_weights(
      const torch::Tensor& tokens, const torch::Tensor& audio_features);

  /// tokens must be int64 of shape (B, T).
  static void check_tokens(const torch::Tensor& tokens);

  ModelDimensions dims;
  AttentionKind attention;
  torch::nn::Embedding token_embedding{nullptr};
  torch::Tensor positional_embedding;
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::LayerNorm ln{nullptr};
  torch::Tensor mask; ///< (n_text_ctx, n_text_ctx) causal; not in the state dict, as Whisper's

 protected:
  FORWARD_HAS_DEFAULT_ARGS({2, torch::nn::AnyValue(static_cast<KVCache*>(nullptr))})

 private:
  /// Token and position embeddings of `tokens` after `offset` cached ones,
  /// in the features' dtype (the mask moved to it too), the inputs checked.
  torch::Tensor embed(
      const torch::Tensor& tokens, const torch::Tensor& audio_features, int64_t offset);
  torch::Tensor project_to_vocabulary(const torch::Tensor& hidden); ///< ln, then @ embedding^T
};
TORCH_MODULE(TextDecoder);

/// Whisper's `Whisper`: `encoder` and `decoder`, under the state-dict keys
/// openai-whisper uses, with this library's attention layers (a fork) or
/// Whisper's own (`AttentionKind::kPlain`).
class WhisperImpl : public torch::nn::Cloneable<WhisperImpl> {
 public:
  explicit WhisperImpl(
      const ModelDimensions& dims, AttentionKind attention = AttentionKind::kRotary);
  void reset() override;

  /// (B, n_mels, frames) -> audio features.
  torch::Tensor embed_audio(const torch::Tensor& mel) {
    return encoder->forward(mel);
  }
  /// Logits of `tokens` (B, T) given audio features, without a cache.
  torch::Tensor logits(const torch::Tensor& tokens, const torch::Tensor& audio_features) {
    return decoder->forward(tokens, audio_features);
  }
  bool is_multilingual() const {
    return dims.is_multilingual();
  }

  /// Reads a checkpoint as openai-whisper saves it (`torch.save({"dims": ...,
  /// "model_state_dict": ...})`, fp16 or fp32) with the library's reader:
  /// the model is built from its dims and loaded strictly, in fp32. A fork's
  /// checkpoint (its attention holds rotary or rotation tensors) gets the
  /// fork's attention; one without them (openai's released models, their
  /// fine-tunes) gets Whisper's own. A missing dim, a tensor whose shape
  /// disagrees with the dims, or a missing or unexpected tensor is an error
  /// naming the first few.
  static std::shared_ptr<WhisperImpl> load(const std::string& path);

  /// A model of `dims` holding copies of `state` (openai-whisper's keys, any
  /// floating dtype, loaded strictly in fp32), with the attention that
  /// `attention_in` finds in it; `source` names it in errors.
  static std::shared_ptr<WhisperImpl> from_state_dict(
      const ModelDimensions& dims,
      const std::unordered_map<std::string, torch::Tensor>& state,
      const std::string& source = "the state dict");

  /// kRotary when any of `state`'s keys belongs to the fork's attention
  /// (`.rotary_emb.`, `.rotation_layer.`, `.attn.attn_ln.`, `.temperature`),
  /// kPlain otherwise.
  static AttentionKind attention_in(const std::unordered_map<std::string, torch::Tensor>& state);

  /// The cross-attention heads word timestamps follow (not in the state
  /// dict). Whisper's default (the last half of the decoder's layers), or,
  /// for a checkpoint of Whisper's own attention whose dims are those of one
  /// of openai's releases, openai's choice for it.
  const AlignmentHeads& alignment_heads() const {
    return alignment_heads_;
  }
  /// Sets them, each checked against the dims (an empty set: word timestamps
  /// are refused).
  void set_alignment_heads(AlignmentHeads heads) {
    alignment_heads_ = checked_alignment_heads(std::move(heads), dims);
  }

  ModelDimensions dims;
  AttentionKind attention;
  AudioEncoder encoder{nullptr};
  TextDecoder decoder{nullptr};

 private:
  AlignmentHeads alignment_heads_;
};
TORCH_MODULE(Whisper);

} // namespace rotary_attention::whisper
