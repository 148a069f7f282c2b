#pragma once

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

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
  /// Row i of the cache becomes its row `source_rows[i]`.
  virtual void reorder(const std::vector<int64_t>& source_rows) = 0;
  /// Forgets every cached token (a new sequence).
  virtual void reset() = 0;
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

/// `whisper.decoding.DecodingOptions`: greedy or beam search at temperature
/// 0, sampling above it. Prompts and prefixes are token lists.
struct DecodingOptions {
  std::string task = "transcribe";     ///< "transcribe", "translate" or "lang_id"
  std::optional<std::string> language; ///< detected when not given
  double temperature = 0.0;            ///< 0: the likeliest token; above: sampled
  std::optional<int64_t> sample_len;   ///< default n_text_ctx / 2
  /// Candidates sampled (temperature > 0), the likeliest kept; refused at
  /// temperature 0, as Whisper does.
  std::optional<int64_t> best_of;
  std::optional<int64_t> beam_size;
  std::optional<double> patience;
  std::optional<double> length_penalty;
  std::vector<int64_t> prompt;
  std::vector<int64_t> prefix;
  /// Token ids; -1 adds the tokenizer's non-speech tokens. Empty: no token
  /// suppressed (Whisper's "" or None).
  std::vector<int64_t> suppress_tokens{-1};
  bool suppress_blank = true;
  bool without_timestamps = false;
  std::optional<double> max_initial_timestamp = 1.0;
  /// Where sampling's random numbers come from (not one of whisper's
  /// options): none, torch's default CPU generator, which
  /// `torch.manual_seed` seeds and whisper samples from.
  std::optional<at::Generator> generator;

  /// Each of whisper's options by its name and member: the one list the
  /// faces that set options by name (the Python bindings) read.
  template <class Visitor>
  static void fields(Visitor&& visit) {
    visit("task", &DecodingOptions::task);
    visit("language", &DecodingOptions::language);
    visit("temperature", &DecodingOptions::temperature);
    visit("sample_len", &DecodingOptions::sample_len);
    visit("best_of", &DecodingOptions::best_of);
    visit("beam_size", &DecodingOptions::beam_size);
    visit("patience", &DecodingOptions::patience);
    visit("length_penalty", &DecodingOptions::length_penalty);
    visit("prompt", &DecodingOptions::prompt);
    visit("prefix", &DecodingOptions::prefix);
    visit("suppress_tokens", &DecodingOptions::suppress_tokens);
    visit("suppress_blank", &DecodingOptions::suppress_blank);
    visit("without_timestamps", &DecodingOptions::without_timestamps);
    visit("max_initial_timestamp", &DecodingOptions::max_initial_timestamp);
  }
};

/// `whisper.decoding.DecodingResult`, less the audio features.
struct DecodingResult {
  std::string language;
  std::map<std::string, double> language_probs; ///< when the language was detected
  std::vector<int64_t> tokens;
  std::string text;
  double avg_logprob = 0;
  double no_speech_prob = 0;
  double temperature = 0;
  double compression_ratio = 0; ///< of `text` (see transcribe.h)

  /// Each field by its name (whisper's) and member.
  template <class Visitor>
  static void fields(Visitor&& visit) {
    visit("language", &DecodingResult::language);
    visit("language_probs", &DecodingResult::language_probs);
    visit("tokens", &DecodingResult::tokens);
    visit("text", &DecodingResult::text);
    visit("avg_logprob", &DecodingResult::avg_logprob);
    visit("no_speech_prob", &DecodingResult::no_speech_prob);
    visit("temperature", &DecodingResult::temperature);
    visit("compression_ratio", &DecodingResult::compression_ratio);
  }
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
