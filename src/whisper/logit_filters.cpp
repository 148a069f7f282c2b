#include "logit_filters.h"

#include <ATen/ATen.h>

#include <cmath>
#include <limits>

namespace rotary_attention::whisper::detail {

namespace {

constexpr float kMinusInf = -std::numeric_limits<float>::infinity();

// Sets logits[row][begin:end] to -inf (every row when row < 0).
void suppress_range(at::Tensor& logits, int64_t row, int64_t begin, int64_t end) {
  const int64_t n_vocab = logits.size(1);
  begin = std::clamp<int64_t>(begin, 0, n_vocab);
  end = std::clamp<int64_t>(end, 0, n_vocab);
  float* data = logits.data_ptr<float>();
  const int64_t first = row < 0 ? 0 : row, last = row < 0 ? logits.size(0) : row + 1;
  for (int64_t r = first; r < last; ++r) {
    for (int64_t t = begin; t < end; ++t) {
      data[r * n_vocab + t] = kMinusInf;
    }
  }
}

} // namespace

SuppressBlank::SuppressBlank(const Tokenizer& tokenizer, size_t sample_begin)
    : suppressed_(tokenizer.encode_piece(" ")), sample_begin_(sample_begin) {
  suppressed_.push_back(tokenizer.eot());
}

void SuppressBlank::apply(at::Tensor& logits, const Rows& tokens) const {
  if (tokens.front().size() == sample_begin_) {
    for (const int64_t t : suppressed_) {
      suppress_range(logits, -1, t, t + 1);
    }
  }
}

void SuppressTokens::apply(at::Tensor& logits, const Rows&) const {
  for (const int64_t t : tokens_) {
    suppress_range(logits, -1, t, t + 1);
  }
}

ApplyTimestampRules::ApplyTimestampRules(
    const Tokenizer& tokenizer,
    size_t sample_begin,
    std::optional<int64_t> max_initial_timestamp_index)
    : eot_(tokenizer.eot()),
      no_timestamps_(tokenizer.no_timestamps()),
      timestamp_begin_(tokenizer.timestamp_begin()),
      sample_begin_(sample_begin),
      max_initial_timestamp_index_(max_initial_timestamp_index) {}

void ApplyTimestampRules::apply(at::Tensor& logits, const Rows& tokens) const {
  // <|notimestamps|> is without_timestamps' business.
  suppress_range(logits, -1, no_timestamps_, no_timestamps_ + 1);
  const int64_t n_vocab = logits.size(1);
  for (size_t k = 0; k < tokens.size(); ++k) {
    const int64_t row = static_cast<int64_t>(k);
    const std::vector<int64_t> sampled(tokens[k].begin() + sample_begin_, tokens[k].end());
    const size_t n = sampled.size();
    const bool last_was_timestamp = n >= 1 && sampled[n - 1] >= timestamp_begin_;
    const bool penultimate_was_timestamp = n < 2 || sampled[n - 2] >= timestamp_begin_;
    // Timestamps come in pairs, except just before the end of text.
    if (last_was_timestamp) {
      if (penultimate_was_timestamp) {
        suppress_range(logits, row, timestamp_begin_, n_vocab);
      } else {
        suppress_range(logits, row, 0, eot_);
      }
    }
    // Timestamps never decrease, and a segment is never empty.
    std::optional<int64_t> last_timestamp;
    for (const int64_t t : sampled) {
      if (t >= timestamp_begin_) {
        last_timestamp = t;
      }
    }
    if (last_timestamp.has_value()) {
      const int64_t end =
          last_was_timestamp && !penultimate_was_timestamp ? *last_timestamp : *last_timestamp + 1;
      suppress_range(logits, row, timestamp_begin_, end);
    }
  }
  if (tokens.front().size() == sample_begin_) {
    // The first sampled token is a timestamp, at most max_initial_timestamp.
    suppress_range(logits, -1, 0, timestamp_begin_);
    if (max_initial_timestamp_index_.has_value()) {
      suppress_range(logits, -1, timestamp_begin_ + *max_initial_timestamp_index_ + 1, n_vocab);
    }
  }
  // Timestamps whose total probability beats every text token win.
  const auto logprobs = at::log_softmax(logits, -1);
  const auto timestamp_logprob =
      at::logsumexp(logprobs.narrow(1, timestamp_begin_, n_vocab - timestamp_begin_), {-1});
  const auto text_max = std::get<0>(at::max(logprobs.narrow(1, 0, timestamp_begin_), -1));
  const float* ts = timestamp_logprob.data_ptr<float>();
  const float* tx = text_max.data_ptr<float>();
  for (int64_t k = 0; k < logits.size(0); ++k) {
    if (ts[k] > tx[k]) {
      suppress_range(logits, k, 0, timestamp_begin_);
    }
  }
}

} // namespace rotary_attention::whisper::detail
