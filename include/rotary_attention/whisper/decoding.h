#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "rotary_attention/whisper/decoding_options.h"
#include "rotary_attention/whisper/model.h"
#include "rotary_attention/whisper/tokenizer.h"

namespace rotary_attention::whisper {

/// What the decoding loop asks of a model (Whisper's `Inference`): logits of
/// new tokens over a cache, and the cache reordered for a beam search. A fork
/// whose decoder blocks differ implements this and reuses `decode`.
class DecoderInference {
 public:
  virtual ~DecoderInference() = default;
  /// fp32 logits (rows, T, n_vocab) of `tokens` (rows, T), which follow the
  /// tokens given since `reset()`. `audio_features` (n_audio, S, n_state):
  /// rows / n_audio consecutive rows decode each audio.
  virtual at::Tensor logits(const at::Tensor& tokens, const at::Tensor& audio_features) = 0;
  /// logits of only the new tokens at `positions` (rows, positions, n_vocab):
  /// the decoding loop needs the last one, and the first step the start of
  /// transcript's too (its no-speech probability), not the prompt's 200.
  /// Default: `logits` then those positions.
  virtual at::Tensor logits_at(
      const at::Tensor& tokens,
      const at::Tensor& audio_features,
      const std::vector<int64_t>& positions);
  /// Row i of the cache becomes its row `source_rows[i]`.
  virtual void reorder(const std::vector<int64_t>& source_rows) = 0;
  /// Forgets every cached token (a new sequence).
  virtual void reset() = 0;

 protected:
  /// Refuses a position outside the `new_tokens` new tokens (for logits_at,
  /// before anything is cached).
  static void check_positions(const std::vector<int64_t>& positions, int64_t new_tokens);
};

/// The weights a decode step reads (CTranslate2's and faster-whisper's
/// `compute_type`).
enum class ComputeType {
  kFloat32, ///< the model's fp32 weights
  /// int8 weights, one fp32 scale per output row, quantized once when the
  /// inference is made; activations, attention and the audio's keys stay fp32.
  kInt8,
};

/// "float32" or "int8"; anything else is refused with the names accepted.
ComputeType compute_type_from_string(const std::string& name);

namespace detail {
class CachedTextDecoder;
}

/// `DecoderInference` of a `Whisper`. An fp32 CPU model with the default
/// attention options (what `Whisper::load` gives) decodes over caches of its
/// own: self-attention keys kept rotated, written once per token; the audio's
/// keys rotated once per audio and read once per step by a whole beam; the
/// projections and the logits by a few-rows product (the logits agree with
/// `TextDecoder::forward` to fp32 rounding). Other models, or any with
/// `own_caches` false, run `TextDecoder::forward` over the library's
/// `KVCache` (fp32 only).
class WhisperInference : public DecoderInference {
 public:
  explicit WhisperInference(
      Whisper model, ComputeType compute_type = ComputeType::kFloat32, bool own_caches = true);
  ~WhisperInference() override;
  at::Tensor logits(const at::Tensor& tokens, const at::Tensor& audio_features) override;
  at::Tensor logits_at(
      const at::Tensor& tokens,
      const at::Tensor& audio_features,
      const std::vector<int64_t>& positions) override;
  void reorder(const std::vector<int64_t>& source_rows) override;
  void reset() override;
  const Whisper& model() const {
    return model_;
  }
  ComputeType compute_type() const {
    return compute_type_;
  }

 private:
  Whisper model_;
  ComputeType compute_type_;
  std::unique_ptr<detail::CachedTextDecoder> cached_;
  KVCache cache_;
  at::Tensor features_; ///< audio features repeated per row, when a batch of audios has beams
};

/// `whisper.decoding.DecodingTask.run` (what `whisper.decode` runs): decodes
/// each audio of `audio_features` (n_audio, n_audio_ctx, n_audio_state)
/// through `inference`, with Whisper's rules: the sot sequence, prompt and
/// prefix; language detection when none is given; suppressed tokens and
/// blanks; timestamp rules; greedy or beam search with patience; ranking by
/// length-normalised log-probability (or the NMT length penalty). A beam
/// search over several audios decodes each audio with its own features.
std::vector<DecodingResult> decode(
    DecoderInference& inference,
    const ModelDimensions& dims,
    const Tokenizer& tokenizer,
    const at::Tensor& audio_features,
    const DecodingOptions& options);

/// `whisper.decode(model, mel, options)` for a batch: log-mel frames (n_audio,
/// n_mels, 3000) go through the encoder first; audio features (n_audio,
/// n_audio_ctx, n_audio_state) are decoded as given.
std::vector<DecodingResult> decode(
    Whisper model,
    const Tokenizer& tokenizer,
    const at::Tensor& mel_or_audio_features,
    const DecodingOptions& options);

/// The same through an inference made once (for int8, quantizing the weights
/// once for many decodes).
std::vector<DecodingResult> decode(
    WhisperInference& inference,
    const Tokenizer& tokenizer,
    const at::Tensor& mel_or_audio_features,
    const DecodingOptions& options);

} // namespace rotary_attention::whisper
