#pragma once
// Whisper's decoding options and results, apart from the model and the loop
// (a light header: no torch::nn).

#include <ATen/core/Generator.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "rotary_attention/detail/keep_linked.h"

namespace rotary_attention::whisper {

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
  /// Sampling makes whisper's own torch call (`torch.multinomial` over the
  /// softmax: one exponential number per vocabulary entry), so that after
  /// the same seed it draws the very tokens openai-whisper draws; slower (5.6
  /// ms a step for 5 rows of Whisper's 51864 tokens, on a Zen 3). Off, each
  /// row's token comes from one uniform number (the same distribution).
  bool reproduce_whisper_samples = false;

  /// Each option by its name (whisper's) and member: the one list the
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
    // (Not whisper's: how the samples are drawn.)
    visit("reproduce_whisper_samples", &DecodingOptions::reproduce_whisper_samples);
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

} // namespace rotary_attention::whisper
