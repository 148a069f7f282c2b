#include "token_search.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <numeric>

namespace rotary_attention::whisper::detail {

namespace {

// One uniform number per row, then the inverse of the row's cumulative
// distribution: softmax(logits / temperature) exactly (a zero-probability
// token is never drawn), in one pass over a row of probabilities. Sums run
// over blocks first (four partial sums: they pipeline), then inside the one
// block where the cumulative sum crosses u * total.
std::vector<int64_t> sample_by_inverse_cdf(
    const at::Tensor& logits, double temperature, const std::optional<at::Generator>& generator) {
  const auto probs = at::softmax(logits.to(at::kFloat) / temperature, -1).contiguous();
  const int64_t rows = probs.size(0);
  const int64_t vocab = probs.size(1);
  const auto uniform =
      at::empty({rows}, logits.options().dtype(at::kDouble)).uniform_(0.0, 1.0, generator);
  const double* u = uniform.const_data_ptr<double>();
  constexpr int64_t kBlock = 256;
  const int64_t blocks = (vocab + kBlock - 1) / kBlock;
  std::vector<double> block_sums(static_cast<size_t>(blocks));
  std::vector<int64_t> picked(static_cast<size_t>(rows));
  for (int64_t row = 0; row < rows; ++row) {
    const float* p = probs.const_data_ptr<float>() + row * vocab;
    double total = 0;
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t begin = b * kBlock;
      const int64_t end = std::min(begin + kBlock, vocab);
      double partial[4] = {0, 0, 0, 0};
      int64_t i = begin;
      for (; i + 4 <= end; i += 4) {
        for (int k = 0; k < 4; ++k) {
          partial[k] += p[i + k];
        }
      }
      for (; i < end; ++i) {
        partial[0] += p[i];
      }
      block_sums[static_cast<size_t>(b)] = (partial[0] + partial[1]) + (partial[2] + partial[3]);
      total += block_sums[static_cast<size_t>(b)];
    }
    TORCH_CHECK(
        std::isfinite(total) && total > 0,
        "decode: sampling at temperature ",
        temperature,
        " found no token with a finite logit in row ",
        row);
    const double target = u[row] * total;
    // The block where the cumulative sum crosses the target (rounding can
    // leave it past the last block: the last one then).
    double before = 0;
    int64_t block = blocks - 1;
    for (int64_t b = 0; b < blocks; ++b) {
      if (before + block_sums[static_cast<size_t>(b)] > target) {
        block = b;
        break;
      }
      before += block_sums[static_cast<size_t>(b)];
    }
    // Inside it, the first token past the target; or the block's last token
    // with a probability, where the two ways of summing round differently.
    int64_t last_block = block;
    while (last_block >= 0 && block_sums[static_cast<size_t>(last_block)] == 0) {
      --last_block;
    }
    const int64_t begin = last_block * kBlock;
    const int64_t end = std::min(begin + kBlock, vocab);
    double cumulative = last_block == block ? before : 0;
    int64_t choice = -1;
    for (int64_t i = begin; i < end; ++i) {
      if (p[i] > 0) {
        choice = i;
        cumulative += p[i];
        if (last_block == block && cumulative > target) {
          break;
        }
      }
    }
    picked[static_cast<size_t>(row)] = choice;
  }
  return picked;
}

} // namespace

std::vector<int64_t> GreedySearch::next_tokens(const at::Tensor& logits) const {
  if (temperature_ == 0.0) {
    const auto best = at::argmax(logits, -1).contiguous();
    return {best.const_data_ptr<int64_t>(), best.const_data_ptr<int64_t>() + best.numel()};
  }
  if (!reproduce_whisper_samples_) {
    return sample_by_inverse_cdf(logits, temperature_, generator_);
  }
  // torch.distributions.Categorical(logits=l).sample(), whisper's own call:
  // logits normalised by their logsumexp, softmax, multinomial with
  // replacement over all rows (one exponential number per entry).
  auto scaled = logits / temperature_;
  scaled = scaled - scaled.logsumexp(-1, /*keepdim=*/true);
  const auto drawn =
      at::multinomial(at::softmax(scaled, -1), 1, /*replacement=*/true, generator_).contiguous();
  return {drawn.const_data_ptr<int64_t>(), drawn.const_data_ptr<int64_t>() + drawn.numel()};
}

bool GreedySearch::update(
    Rows& tokens, const at::Tensor& logits, std::vector<float>& sum_logprobs) {
  const auto next = next_tokens(logits);
  const auto logprobs = at::log_softmax(logits.to(at::kFloat), -1).contiguous();
  const float* logprob_data = logprobs.const_data_ptr<float>();
  const int64_t vocab = logprobs.size(-1);
  bool completed = true;
  for (size_t row = 0; row < tokens.size(); ++row) {
    const bool ended = tokens[row].back() == eot_;
    if (!ended) {
      sum_logprobs[row] += logprob_data[static_cast<int64_t>(row) * vocab + next[row]];
    }
    tokens[row].push_back(ended ? eot_ : next[row]);
    completed = completed && tokens[row].back() == eot_;
  }
  return completed;
}

Candidates GreedySearch::finalize(const Rows& tokens, const std::vector<float>& sum_logprobs) {
  // Each audio's `group` candidates, each with an end of text at its end.
  Candidates out;
  for (size_t row = 0; row < tokens.size(); ++row) {
    if (row % static_cast<size_t>(group_) == 0) {
      out.tokens.emplace_back();
      out.sum_logprobs.emplace_back();
    }
    auto sequence = tokens[row];
    sequence.push_back(eot_);
    out.tokens.back().push_back(std::move(sequence));
    out.sum_logprobs.back().push_back(static_cast<double>(sum_logprobs[row]));
  }
  return out;
}

BeamSearch::BeamSearch(
    int64_t beam_size, int64_t eot, DecoderInference& inference, std::optional<double> patience)
    : beam_size_(beam_size), eot_(eot), inference_(inference) {
  // Python's round(): halves to even.
  const double wanted = std::nearbyint(static_cast<double>(beam_size) * patience.value_or(1.0));
  TORCH_CHECK(
      beam_size > 0 && wanted > 0,
      "decode: invalid beam size (",
      beam_size,
      ") or patience (",
      patience.value_or(1.0),
      ")");
  max_candidates_ = static_cast<size_t>(wanted);
}

size_t BeamSearch::Scored::put(const std::vector<int64_t>& sequence, double score) {
  for (size_t i = 0; i < sequences.size(); ++i) {
    if (sequences[i] == sequence) {
      scores[i] = score;
      return i;
    }
  }
  sequences.push_back(sequence);
  scores.push_back(score);
  return sequences.size() - 1;
}

namespace {

// Indices of `scores` from the highest, equal scores in their given order
// (Python's sorted(..., reverse=True) is stable).
std::vector<size_t> highest_first(const std::vector<double>& scores) {
  std::vector<size_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(
      order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] > scores[b]; });
  return order;
}

} // namespace

bool BeamSearch::update(Rows& tokens, const at::Tensor& logits, std::vector<float>& sum_logprobs) {
  TORCH_CHECK(
      static_cast<int64_t>(tokens.size()) % beam_size_ == 0,
      "decode: ",
      tokens.size(),
      " rows are not a whole number of beams of ",
      beam_size_);
  const size_t n_audio = tokens.size() / beam_size_;
  if (finished_.empty()) {
    finished_.resize(n_audio);
  }
  const auto logprobs = at::log_softmax(logits, -1);
  // Each row's beam_size + 1 likeliest continuations, all rows in one call
  // (its rows in parallel).
  const auto [top_values, top_indices] = at::topk(logprobs, beam_size_ + 1);
  const auto values = top_values.contiguous();
  const auto indices = top_indices.contiguous();
  Rows next_tokens;
  std::vector<int64_t> source_rows;
  std::vector<Scored> newly_finished(n_audio);
  for (size_t i = 0; i < n_audio; ++i) {
    Scored scores;
    std::vector<int64_t> sources;
    for (int64_t j = 0; j < beam_size_; ++j) {
      const int64_t row = static_cast<int64_t>(i) * beam_size_ + j;
      const float* v = values.data_ptr<float>() + row * (beam_size_ + 1);
      const int64_t* t = indices.data_ptr<int64_t>() + row * (beam_size_ + 1);
      for (int64_t c = 0; c <= beam_size_; ++c) {
        auto sequence = tokens[row];
        sequence.push_back(t[c]);
        const float score = sum_logprobs[row] + v[c]; // fp32, as Whisper's tensors add
        // A sequence met again keeps its place and takes the later source.
        const size_t at = scores.put(sequence, score);
        sources.resize(scores.sequences.size());
        sources[at] = row;
      }
    }
    // The best beam_size unfinished ones go on; finished ones are set aside.
    int64_t saved = 0;
    for (const size_t c : highest_first(scores.scores)) {
      if (scores.sequences[c].back() == eot_) {
        newly_finished[i].put(scores.sequences[c], scores.scores[c]);
      } else {
        sum_logprobs[next_tokens.size()] = static_cast<float>(scores.scores[c]);
        next_tokens.push_back(scores.sequences[c]);
        source_rows.push_back(sources[c]);
        if (++saved == beam_size_) {
          break;
        }
      }
    }
  }
  tokens = std::move(next_tokens);
  bool identity = true;
  for (size_t r = 0; r < source_rows.size(); ++r) {
    identity = identity && source_rows[r] == static_cast<int64_t>(r);
  }
  if (!identity) {
    inference_.reorder(source_rows);
  }
  for (size_t i = 0; i < n_audio; ++i) {
    for (const size_t c : highest_first(newly_finished[i].scores)) {
      if (finished_[i].sequences.size() >= max_candidates_) {
        break;
      }
      finished_[i].put(newly_finished[i].sequences[c], newly_finished[i].scores[c]);
    }
  }
  return std::all_of(finished_.begin(), finished_.end(), [&](const Scored& s) {
    return s.sequences.size() >= max_candidates_;
  });
}

Candidates BeamSearch::finalize(const Rows& tokens, const std::vector<float>& sum_logprobs) {
  const size_t n_audio = tokens.size() / beam_size_;
  finished_.resize(n_audio);
  Candidates out;
  for (size_t i = 0; i < n_audio; ++i) {
    auto& sequences = finished_[i];
    if (static_cast<int64_t>(sequences.sequences.size()) < beam_size_) {
      // Too few finished: the unfinished beams join, likeliest first (numpy's
      // argsort of the beam's scores, stable for a beam's few, reversed).
      std::vector<size_t> order(beam_size_);
      std::iota(order.begin(), order.end(), 0);
      const float* row_scores = sum_logprobs.data() + i * beam_size_;
      std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
        return row_scores[a] < row_scores[b];
      });
      for (auto it = order.rbegin(); it != order.rend(); ++it) {
        auto sequence = tokens[i * beam_size_ + *it];
        sequence.push_back(eot_);
        sequences.put(sequence, row_scores[*it]);
        if (static_cast<int64_t>(sequences.sequences.size()) >= beam_size_) {
          break;
        }
      }
    }
    out.tokens.push_back(sequences.sequences);
    out.sum_logprobs.push_back(sequences.scores);
  }
  return out;
}

} // namespace rotary_attention::whisper::detail
