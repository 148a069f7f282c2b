// whisper.timing (openai-whisper 20250625): words and their times from the
// cross-attention of the alignment heads and dynamic time warping.
#include "rotary_attention/whisper/word_timing.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "rotary_attention/whisper/audio.h"
#include "rotary_attention/whisper/tokenizer.h"

namespace rotary_attention::whisper {

namespace {

constexpr double kTokensPerSecond = static_cast<double>(kSampleRate) / (2.0 * kHopLength);

// numpy's float64 sum (pairwise: eight partial sums below 128 values), so a
// word's mean probability is the same double whisper's np.mean gives.
double numpy_sum(const double* a, size_t n) {
  if (n < 8) {
    double sum = 0.0;
    for (size_t i = 0; i < n; ++i) {
      sum += a[i];
    }
    return sum;
  }
  if (n <= 128) {
    double r[8];
    for (size_t k = 0; k < 8; ++k) {
      r[k] = a[k];
    }
    size_t i = 8;
    for (; i < n - n % 8; i += 8) {
      for (size_t k = 0; k < 8; ++k) {
        r[k] += a[i + k];
      }
    }
    double sum = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; ++i) {
      sum += a[i];
    }
    return sum;
  }
  size_t half = n / 2;
  half -= half % 8;
  return numpy_sum(a, half) + numpy_sum(a + half, n - half);
}

double numpy_median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2.0;
}

// np.round(x, 2): x * 100 rounded half to even, over 100.
double round_to_hundredths(double x) {
  return std::nearbyint(x * 100.0) / 100.0;
}

// Python's `a in b` for strings: a substring (the empty string is in all).
bool is_in(const std::string& a, const std::string& b) {
  return b.find(a) != std::string::npos;
}

bool starts_with_space(const std::string& word) {
  return !word.empty() && word.front() == ' ';
}

} // namespace

at::Tensor median_filter(const at::Tensor& x, int64_t width) {
  TORCH_CHECK(
      width > 0 && width % 2 == 1, "median_filter: width must be odd and positive, got ", width);
  const int64_t pad = width / 2;
  if (x.size(-1) <= pad) {
    return x;
  }
  // (..., frames) as (rows, frames): reflect each row's ends by `pad`.
  const auto rows = x.reshape({-1, 1, x.size(-1)});
  const auto padded = at::reflection_pad1d(rows, {pad, pad}).contiguous();
  const int64_t n_rows = padded.size(0), frames = x.size(-1), padded_frames = padded.size(-1);
  auto out = at::empty({n_rows, frames}, x.options());
  // Each window's middle value in sorted order (whisper sorts the unfolded
  // windows: NaN after every number), selected rather than sorted.
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "median_filter", [&] {
    const scalar_t* in = padded.const_data_ptr<scalar_t>();
    scalar_t* result = out.mutable_data_ptr<scalar_t>();
    const auto before = [](scalar_t a, scalar_t b) {
      return a < b || (!std::isnan(a) && std::isnan(b));
    };
    at::parallel_for(0, n_rows, 1, [&](int64_t begin, int64_t end) {
      std::vector<scalar_t> window(static_cast<size_t>(width));
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* row = in + r * padded_frames;
        for (int64_t f = 0; f < frames; ++f) {
          std::copy(row + f, row + f + width, window.begin());
          std::nth_element(window.begin(), window.begin() + pad, window.end(), before);
          result[r * frames + f] = window[static_cast<size_t>(pad)];
        }
      }
    });
  });
  return out.reshape(x.sizes());
}

std::pair<std::vector<int64_t>, std::vector<int64_t>> dtw(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2, "dtw: expected a cost matrix (N, M), got shape ", x.sizes());
  const auto costs = x.to(at::kDouble).contiguous();
  const int64_t n = costs.size(0), m = costs.size(1);
  const double* c = costs.data_ptr<double>();
  const int64_t w = m + 1;
  // Whisper keeps the accumulated costs in float32.
  std::vector<float> cost(static_cast<size_t>((n + 1) * w), std::numeric_limits<float>::infinity());
  std::vector<int8_t> trace(static_cast<size_t>((n + 1) * w), -1);
  cost[0] = 0;
  for (int64_t i = 1; i <= n; ++i) {
    for (int64_t j = 1; j <= m; ++j) {
      const float diagonal = cost[(i - 1) * w + j - 1];
      const float up = cost[(i - 1) * w + j];
      const float left = cost[i * w + j - 1];
      float best;
      int8_t step;
      if (diagonal < up && diagonal < left) {
        best = diagonal, step = 0;
      } else if (up < diagonal && up < left) {
        best = up, step = 1;
      } else {
        best = left, step = 2;
      }
      cost[i * w + j] = static_cast<float>(c[(i - 1) * m + j - 1] + static_cast<double>(best));
      trace[i * w + j] = step;
    }
  }
  // Back from the bottom right; the first row leads left, the first column up.
  for (int64_t j = 0; j <= m; ++j) {
    trace[j] = 2;
  }
  for (int64_t i = 0; i <= n; ++i) {
    trace[i * w] = 1;
  }
  std::vector<int64_t> text, time;
  int64_t i = n, j = m;
  while (i > 0 || j > 0) {
    text.push_back(i - 1);
    time.push_back(j - 1);
    const int8_t step = trace[i * w + j];
    if (step == 0) {
      --i, --j;
    } else if (step == 1) {
      --i;
    } else {
      --j;
    }
  }
  std::reverse(text.begin(), text.end());
  std::reverse(time.begin(), time.end());
  return {text, time};
}

std::vector<WordTiming> find_alignment(
    Whisper& model,
    const Tokenizer& tokenizer,
    const std::string& language,
    const std::string& task,
    const std::vector<int64_t>& text_tokens,
    const at::Tensor& audio_features,
    int64_t num_frames,
    int64_t median_filter_width,
    double qk_scale) {
  if (text_tokens.empty()) {
    return {};
  }
  const auto& heads = model->alignment_heads();
  TORCH_CHECK(
      !heads.empty(),
      "word timestamps: the model has no alignment heads (set them with set_alignment_heads)");
  TORCH_CHECK(
      audio_features.dim() == 3 && audio_features.size(0) == 1,
      "find_alignment: expected one window's audio features (1, n_audio_ctx, n_audio_state), got "
      "shape ",
      audio_features.sizes());
  const bool multilingual = model->dims.is_multilingual();
  const auto sot_sequence = tokenizer.sot_sequence(
      multilingual ? std::optional<std::string>(language) : std::nullopt,
      multilingual ? std::optional<std::string>(task) : std::nullopt);
  std::vector<int64_t> tokens = sot_sequence;
  tokens.push_back(tokenizer.no_timestamps());
  tokens.insert(tokens.end(), text_tokens.begin(), text_tokens.end());
  tokens.push_back(tokenizer.eot());
  const auto n_sot = static_cast<int64_t>(sot_sequence.size());
  const auto n_text = static_cast<int64_t>(text_tokens.size());

  at::NoGradGuard no_grad;
  auto [logits, cross_weights] = model->decoder->forward_with_cross_weights(
      at::tensor(tokens, at::kLong).unsqueeze(0), audio_features);
  // The probability of each text token where it was predicted.
  const auto token_probs =
      logits[0].narrow(0, n_sot, n_text).narrow(1, 0, tokenizer.eot()).softmax(-1);
  const auto picked = token_probs.gather(1, at::tensor(text_tokens, at::kLong).unsqueeze(1));
  const auto picked_f = picked.reshape({-1}).contiguous();
  std::vector<double> text_token_probs(
      picked_f.data_ptr<float>(), picked_f.data_ptr<float>() + n_text);

  // heads x tokens x frames
  std::vector<at::Tensor> selected;
  for (const auto& [layer, head] : heads) {
    selected.push_back(cross_weights[layer][0][head]);
  }
  auto weights =
      at::stack(selected).narrow(2, 0, std::min(num_frames / 2, cross_weights[0].size(3)));
  weights = (weights * qk_scale).softmax(-1);
  const auto [deviation, mean] =
      at::std_mean(weights, {-2}, /*correction=*/std::optional<at::Scalar>(0), /*keepdim=*/true);
  weights = (weights - mean) / deviation;
  weights = median_filter(weights, median_filter_width);
  const auto matrix = weights.mean(0).narrow(0, n_sot, weights.size(1) - n_sot - 1);
  const auto [text_indices, time_indices] = dtw(-matrix);

  std::vector<int64_t> with_eot = text_tokens;
  with_eot.push_back(tokenizer.eot());
  auto [words, word_tokens] = tokenizer.split_to_word_tokens(with_eot, language);
  if (word_tokens.size() <= 1) {
    return {};
  }
  std::vector<size_t> boundaries{0};
  for (size_t w = 0; w + 1 < word_tokens.size(); ++w) {
    boundaries.push_back(boundaries.back() + word_tokens[w].size());
  }
  std::vector<double> jump_times;
  for (size_t k = 0; k < text_indices.size(); ++k) {
    if (k == 0 || text_indices[k] != text_indices[k - 1]) {
      jump_times.push_back(static_cast<double>(time_indices[k]) / kTokensPerSecond);
    }
  }
  TORCH_CHECK(
      boundaries.back() < jump_times.size(),
      "find_alignment: ",
      jump_times.size(),
      " token steps for ",
      boundaries.back(),
      " tokens");
  std::vector<WordTiming> out;
  for (size_t w = 0; w + 1 < boundaries.size(); ++w) {
    const size_t begin = boundaries[w], end = boundaries[w + 1];
    WordTiming timing;
    timing.word = words[w];
    timing.tokens = word_tokens[w];
    timing.start = jump_times[begin];
    timing.end = jump_times[end];
    timing.probability = end > begin ? numpy_sum(text_token_probs.data() + begin, end - begin) /
                                           static_cast<double>(end - begin)
                                     : std::numeric_limits<double>::quiet_NaN();
    out.push_back(std::move(timing));
  }
  return out;
}

void merge_punctuations(
    std::vector<WordTiming>& alignment, const std::string& prepended, const std::string& appended) {
  const auto n = static_cast<int64_t>(alignment.size());
  // Prepended marks join the word after them, from the end backwards.
  for (int64_t i = n - 2, j = n - 1; i >= 0; --i) {
    auto& previous = alignment[static_cast<size_t>(i)];
    auto& following = alignment[static_cast<size_t>(j)];
    if (starts_with_space(previous.word) && is_in(strip(previous.word), prepended)) {
      following.word = previous.word + following.word;
      following.tokens.insert(
          following.tokens.begin(), previous.tokens.begin(), previous.tokens.end());
      previous.word.clear();
      previous.tokens.clear();
    } else {
      j = i;
    }
  }
  // Appended marks join the word before them.
  for (int64_t i = 0, j = 1; j < n; ++j) {
    auto& previous = alignment[static_cast<size_t>(i)];
    auto& following = alignment[static_cast<size_t>(j)];
    const bool ends_with_space = !previous.word.empty() && previous.word.back() == ' ';
    if (!ends_with_space && is_in(following.word, appended)) {
      previous.word += following.word;
      previous.tokens.insert(
          previous.tokens.end(), following.tokens.begin(), following.tokens.end());
      following.word.clear();
      following.tokens.clear();
    } else {
      i = j;
    }
  }
}

double add_word_timestamps(
    std::vector<Segment>& segments,
    Whisper& model,
    const Tokenizer& tokenizer,
    const std::string& language,
    const std::string& task,
    const at::Tensor& audio_features,
    int64_t num_frames,
    const std::string& prepend_punctuations,
    const std::string& append_punctuations,
    double last_speech_end) {
  if (segments.empty()) {
    return last_speech_end;
  }
  std::vector<std::vector<int64_t>> text_tokens_per_segment;
  std::vector<int64_t> text_tokens;
  for (const auto& segment : segments) {
    std::vector<int64_t> own;
    for (const int64_t t : segment.tokens) {
      if (t < tokenizer.eot()) {
        own.push_back(t);
      }
    }
    text_tokens.insert(text_tokens.end(), own.begin(), own.end());
    text_tokens_per_segment.push_back(std::move(own));
  }
  auto alignment =
      find_alignment(model, tokenizer, language, task, text_tokens, audio_features, num_frames);
  std::vector<double> durations;
  for (const auto& t : alignment) {
    if (t.end - t.start != 0) {
      durations.push_back(t.end - t.start);
    }
  }
  const double median_duration = std::min(0.7, durations.empty() ? 0.0 : numpy_median(durations));
  const double max_duration = median_duration * 2;

  // Words at sentence ends no longer than twice the median word.
  if (!durations.empty()) {
    const std::string sentence_end_marks = ".\u3002!\uff01?\uff1f";
    for (size_t i = 1; i < alignment.size(); ++i) {
      if (alignment[i].end - alignment[i].start > max_duration) {
        if (is_in(alignment[i].word, sentence_end_marks)) {
          alignment[i].end = alignment[i].start + max_duration;
        } else if (is_in(alignment[i - 1].word, sentence_end_marks)) {
          alignment[i].start = alignment[i].end - max_duration;
        }
      }
    }
  }
  merge_punctuations(alignment, prepend_punctuations, append_punctuations);

  const double time_offset =
      static_cast<double>(segments.front().seek * kHopLength) / static_cast<double>(kSampleRate);
  size_t word_index = 0;
  for (size_t s = 0; s < segments.size(); ++s) {
    auto& segment = segments[s];
    const auto& own_tokens = text_tokens_per_segment[s];
    size_t saved_tokens = 0;
    std::vector<Word> words;
    while (word_index < alignment.size() && saved_tokens < own_tokens.size()) {
      const auto& timing = alignment[word_index];
      if (!timing.word.empty()) {
        words.push_back(
            {timing.word,
             round_to_hundredths(time_offset + timing.start),
             round_to_hundredths(time_offset + timing.end),
             timing.probability});
      }
      saved_tokens += timing.tokens.size();
      ++word_index;
    }
    if (!words.empty()) {
      // The first (and second) word after a pause no longer than twice the
      // median word.
      if (words[0].end - last_speech_end > median_duration * 4 &&
          (words[0].end - words[0].start > max_duration ||
           (words.size() > 1 && words[1].end - words[0].start > max_duration * 2))) {
        if (words.size() > 1 && words[1].end - words[1].start > max_duration) {
          const double boundary = std::max(words[1].end / 2, words[1].end - max_duration);
          words[0].end = words[1].start = boundary;
        }
        words[0].start = std::max(0.0, words[0].end - max_duration);
      }
      // The segment's own start, if the first word looks too long.
      if (segment.start < words[0].end && segment.start - 0.5 > words[0].start) {
        words[0].start = std::max(0.0, std::min(words[0].end - median_duration, segment.start));
      } else {
        segment.start = words[0].start;
      }
      // The segment's own end, if the last word looks too long.
      if (segment.end > words.back().start && segment.end + 0.5 < words.back().end) {
        words.back().end = std::max(words.back().start + median_duration, segment.end);
      } else {
        segment.end = words.back().end;
      }
      last_speech_end = segment.end;
    }
    segment.words = std::move(words);
  }
  return last_speech_end;
}

} // namespace rotary_attention::whisper
