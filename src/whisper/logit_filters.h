#pragma once
// Whisper's logit filters (`SuppressBlank`, `SuppressTokens`,
// `ApplyTimestampRules`), applied in place to one step's logits.

#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

#include "rotary_attention/whisper/tokenizer.h"

namespace rotary_attention::whisper::detail {

using Rows = std::vector<std::vector<int64_t>>;

class LogitFilter {
 public:
  virtual ~LogitFilter() = default;
  /// logits: (rows, n_vocab) fp32, contiguous, on the CPU; tokens: each row's
  /// tokens so far, initial tokens included.
  virtual void apply(at::Tensor& logits, const Rows& tokens) const = 0;
};

/// Blank and end of text are not sampled first.
class SuppressBlank : public LogitFilter {
 public:
  SuppressBlank(const Tokenizer& tokenizer, size_t sample_begin);
  void apply(at::Tensor& logits, const Rows& tokens) const override;

 private:
  std::vector<int64_t> suppressed_;
  size_t sample_begin_;
};

class SuppressTokens : public LogitFilter {
 public:
  explicit SuppressTokens(std::vector<int64_t> tokens) : tokens_(std::move(tokens)) {}
  void apply(at::Tensor& logits, const Rows& tokens) const override;

 private:
  std::vector<int64_t> tokens_;
};

/// Timestamps in pairs, never decreasing, the first within
/// `max_initial_timestamp_index`; text forbidden when timestamps are likelier
/// in total than any text token.
class ApplyTimestampRules : public LogitFilter {
 public:
  ApplyTimestampRules(
      const Tokenizer& tokenizer,
      size_t sample_begin,
      std::optional<int64_t> max_initial_timestamp_index);
  void apply(at::Tensor& logits, const Rows& tokens) const override;

 private:
  int64_t eot_, no_timestamps_, timestamp_begin_;
  size_t sample_begin_;
  std::optional<int64_t> max_initial_timestamp_index_;
};

} // namespace rotary_attention::whisper::detail
