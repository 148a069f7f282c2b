#pragma once
// Whisper's token decoders (`GreedyDecoder`, which samples above temperature 0,
// and `BeamSearchDecoder`): each step picks the next tokens from the logits, and
// `finalize` gives each audio's candidate sequences with their summed
// log-probabilities, in Whisper's order.

#include <ATen/core/Generator.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <vector>

#include "logit_filters.h"
#include "rotary_attention/whisper/decoding.h"

namespace rotary_attention::whisper::detail {

struct Candidates {
  std::vector<std::vector<std::vector<int64_t>>> tokens; ///< [audio][candidate] full sequences
  std::vector<std::vector<double>> sum_logprobs;
};

class TokenSearch {
 public:
  virtual ~TokenSearch() = default;
  /// Appends each row's next token; `sum_logprobs` (fp32, one per row) is
  /// updated. Returns whether every sequence has ended.
  virtual bool update(Rows& tokens, const at::Tensor& logits, std::vector<float>& sum_logprobs) = 0;
  /// rows = n_audio * group, each audio's rows consecutive.
  virtual Candidates finalize(const Rows& tokens, const std::vector<float>& sum_logprobs) = 0;
};

/// The likeliest token at temperature 0; above it, a token drawn from
/// softmax(logits / temperature) for every row (whisper's
/// `Categorical(logits=logits / temperature).sample()`). By default one
/// uniform number per row picks the token (the inverse of the cumulative
/// distribution); `reproduce_whisper_samples` makes whisper's own torch call
/// instead (an exponential number per vocabulary entry: the very tokens
/// whisper draws from the same generator state, 20 times slower). `group`
/// consecutive rows are one audio's candidates (best_of).
class GreedySearch : public TokenSearch {
 public:
  GreedySearch(
      int64_t eot,
      int64_t group = 1,
      double temperature = 0.0,
      std::optional<at::Generator> generator = std::nullopt,
      bool reproduce_whisper_samples = false)
      : eot_(eot),
        group_(group),
        temperature_(temperature),
        generator_(std::move(generator)),
        reproduce_whisper_samples_(reproduce_whisper_samples) {}
  bool update(Rows& tokens, const at::Tensor& logits, std::vector<float>& sum_logprobs) override;
  Candidates finalize(const Rows& tokens, const std::vector<float>& sum_logprobs) override;

 private:
  std::vector<int64_t> next_tokens(const at::Tensor& logits) const;
  int64_t eot_, group_;
  double temperature_;
  std::optional<at::Generator> generator_;
  bool reproduce_whisper_samples_;
};

class BeamSearch : public TokenSearch {
 public:
  /// Stops once every audio has round(beam_size * patience) finished sequences.
  BeamSearch(
      int64_t beam_size, int64_t eot, DecoderInference& inference, std::optional<double> patience);
  bool update(Rows& tokens, const at::Tensor& logits, std::vector<float>& sum_logprobs) override;
  Candidates finalize(const Rows& tokens, const std::vector<float>& sum_logprobs) override;

 private:
  // Sequences in insertion order with their scores (a Python dict's order:
  // a key written again keeps its place).
  struct Scored {
    std::vector<std::vector<int64_t>> sequences;
    std::vector<double> scores;
    /// Returns the sequence's index.
    size_t put(const std::vector<int64_t>& sequence, double score);
  };
  int64_t beam_size_, eot_;
  DecoderInference& inference_;
  size_t max_candidates_;
  std::vector<Scored> finished_; ///< per audio
};

} // namespace rotary_attention::whisper::detail
