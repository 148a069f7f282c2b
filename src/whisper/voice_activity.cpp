// Silero VAD as a TorchScript model, and speech ranges from its
// probabilities as the silero-vad package (6.2.3) computes them.
#include "rotary_attention/whisper/voice_activity.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/script.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <mutex>

#include <omp.h>

#include "rotary_attention/whisper/audio.h"

namespace rotary_attention::whisper {

namespace {

constexpr int64_t kWindow = 512; // samples per probability at 16 kHz

// Python's round(x, 2): the decimal nearest to the double's exact value,
// read back.
double python_round_hundredths(double x) {
  char buffer[64];
  const auto done =
      std::to_chars(buffer, buffer + sizeof buffer - 1, x, std::chars_format::fixed, 2);
  *done.ptr = '\0';
  return std::strtod(buffer, nullptr);
}

} // namespace

struct SileroVad::Model {
  torch::jit::Module module;
  std::mutex mutex; ///< the module carries its state between windows
};

SileroVad::SileroVad(const std::string& path) : path_(path) {
  auto model = std::make_unique<Model>();
  try {
    model->module = torch::jit::load(path, at::kCPU);
  } catch (const c10::Error& e) {
    TORCH_CHECK(
        false,
        "SileroVad: '",
        path,
        "' is not a TorchScript model (silero-vad's silero_vad/data/silero_vad.jit is one): ",
        e.what_without_backtrace());
  }
  model->module.eval();
  TORCH_CHECK(
      model->module.find_method("reset_states").has_value(),
      "SileroVad: '",
      path,
      "' is a TorchScript model, but not Silero VAD's: it has no reset_states()");
  model_ = std::move(model);
  // One window through it: Silero's forward takes (window, 16000) and gives a
  // probability.
  std::vector<float> probe;
  try {
    probe = speech_probabilities(at::zeros({kWindow}));
  } catch (const c10::Error& e) {
    model_.reset();
    TORCH_CHECK(
        false,
        "SileroVad: '",
        path,
        "' is a TorchScript model, but not Silero VAD's: ",
        e.what_without_backtrace());
  }
  if (probe.size() != 1 || !(probe[0] >= 0 && probe[0] <= 1)) {
    model_.reset();
    TORCH_CHECK(
        false,
        "SileroVad: '",
        path,
        "' is a TorchScript model, but not Silero VAD's: a window gave no probability");
  }
}

SileroVad::~SileroVad() = default;

std::vector<float> SileroVad::speech_probabilities(const at::Tensor& audio) {
  TORCH_CHECK(
      audio.dim() == 1 && audio.is_floating_point(),
      "SileroVad: expected 1-D floating-point 16-kHz samples, got ",
      audio.scalar_type(),
      " of shape ",
      audio.sizes());
  const auto samples = audio.to(at::kFloat).contiguous();
  const int64_t n = samples.size(0);
  std::lock_guard<std::mutex> lock(model_->mutex);
  at::NoGradGuard no_grad;
  auto& module = model_->module;
  module.run_method("reset_states");
  std::vector<float> out;
  out.reserve(static_cast<size_t>((n + kWindow - 1) / kWindow));
  // The windows' ops are tiny: waking the other threads for each costs more
  // than it saves (2.5x slower on 2 cores). OpenMP's thread count is the
  // calling thread's own setting: this thread alone runs them, the others'
  // settings untouched.
  at::init_num_threads(); // (once per thread: it would reset the count set below)
  struct OneThread {
    int saved = omp_get_max_threads();
    OneThread() {
      omp_set_num_threads(1);
    }
    ~OneThread() {
      omp_set_num_threads(saved);
    }
  } one_thread;
  for (int64_t start = 0; start < n; start += kWindow) {
    auto window = samples.narrow(0, start, std::min(kWindow, n - start));
    if (window.size(0) < kWindow) {
      window = at::constant_pad_nd(window, {0, kWindow - window.size(0)});
    }
    const auto probability = module.forward({window, static_cast<int64_t>(kSampleRate)}).toTensor();
    TORCH_CHECK(
        probability.numel() == 1,
        "SileroVad: a window gave ",
        probability.numel(),
        " values, not one probability");
    out.push_back(probability.item<float>());
  }
  return out;
}

std::vector<SpeechRange> speech_ranges_from_probabilities(
    const std::vector<float>& probabilities, int64_t audio_samples, const VadOptions& o) {
  TORCH_CHECK(
      o.threshold > 0 && o.threshold < 1, "vad: threshold must be in (0, 1), got ", o.threshold);
  TORCH_CHECK(
      o.min_speech_duration_ms >= 0 && o.min_silence_duration_ms >= 0 && o.speech_pad_ms >= 0 &&
          o.max_speech_duration_s > 0,
      "vad: durations must not be negative (and max_speech_duration_s positive)");
  const double rate = kSampleRate;
  const double min_speech = rate * static_cast<double>(o.min_speech_duration_ms) / 1000;
  const double pad = rate * static_cast<double>(o.speech_pad_ms) / 1000;
  const double max_speech = rate * o.max_speech_duration_s - kWindow - 2 * pad;
  const double min_silence = rate * static_cast<double>(o.min_silence_duration_ms) / 1000;
  const double min_silence_at_max_speech =
      rate * static_cast<double>(o.min_silence_at_max_speech_ms) / 1000;
  const double threshold = o.threshold;
  const double neg_threshold = o.neg_threshold.value_or(std::max(threshold - 0.15, 0.01));

  bool triggered = false;
  std::vector<SpeechRange> speeches;
  std::optional<int64_t> start; // the speech in progress
  int64_t temp_end = 0, prev_end = 0, next_start = 0;
  std::vector<std::pair<int64_t, int64_t>> possible_ends; // (silence start, its length)
  const auto close = [&](int64_t end) {
    speeches.push_back({*start, end});
    start.reset();
  };
  for (size_t i = 0; i < probabilities.size(); ++i) {
    const double p = probabilities[i];
    const int64_t sample = kWindow * static_cast<int64_t>(i);
    // Speech again after a silence: a candidate cut if long enough.
    if (p >= threshold && temp_end != 0) {
      const int64_t silence = sample - temp_end;
      if (static_cast<double>(silence) > min_silence_at_max_speech) {
        possible_ends.emplace_back(temp_end, silence);
      }
      temp_end = 0;
      if (next_start < prev_end) {
        next_start = sample;
      }
    }
    if (p >= threshold && !triggered) {
      triggered = true;
      start = sample;
      continue;
    }
    // Speech too long: cut it.
    if (triggered && static_cast<double>(sample - *start) > max_speech) {
      if (o.use_max_poss_sil_at_max_speech && !possible_ends.empty()) {
        const auto longest = std::max_element(
            possible_ends.begin(), possible_ends.end(), [](const auto& a, const auto& b) {
              return a.second < b.second; // the first of the longest
            });
        prev_end = longest->first;
        const int64_t length = longest->second;
        close(prev_end);
        next_start = prev_end + length;
        if (next_start < prev_end + sample) {
          start = next_start; // still in silence, not yet speech
        } else {
          triggered = false;
        }
        prev_end = next_start = temp_end = 0;
        possible_ends.clear();
      } else if (prev_end != 0) {
        close(prev_end);
        if (next_start < prev_end) {
          triggered = false;
        } else {
          start = next_start;
        }
        prev_end = next_start = temp_end = 0;
        possible_ends.clear();
      } else {
        close(sample);
        prev_end = next_start = temp_end = 0;
        triggered = false;
        possible_ends.clear();
        continue;
      }
    }
    // Silence inside speech.
    if (p < neg_threshold && triggered) {
      if (temp_end == 0) {
        temp_end = sample;
      }
      const int64_t silence = sample - temp_end;
      if (!o.use_max_poss_sil_at_max_speech &&
          static_cast<double>(silence) > min_silence_at_max_speech) {
        prev_end = temp_end;
      }
      if (static_cast<double>(silence) < min_silence) {
        continue;
      }
      if (static_cast<double>(temp_end - *start) > min_speech) {
        close(temp_end);
      }
      start.reset();
      prev_end = next_start = temp_end = 0;
      triggered = false;
      possible_ends.clear();
      continue;
    }
  }
  if (start && static_cast<double>(audio_samples - *start) > min_speech) {
    close(audio_samples);
  }
  // Padding: half the silence between two ranges when it is short, else `pad`.
  const auto at_least_zero = [](double x) { return static_cast<int64_t>(std::max(0.0, x)); };
  for (size_t i = 0; i < speeches.size(); ++i) {
    auto& speech = speeches[i];
    if (i == 0) {
      speech.start = at_least_zero(static_cast<double>(speech.start) - pad);
    }
    if (i + 1 != speeches.size()) {
      auto& next = speeches[i + 1];
      const int64_t silence = next.start - speech.end;
      if (static_cast<double>(silence) < 2 * pad) {
        const int64_t half = silence >= 0 ? silence / 2 : -((-silence + 1) / 2); // floor
        speech.end += half;
        next.start = std::max<int64_t>(0, next.start - half);
      } else {
        speech.end = static_cast<int64_t>(
            std::min(static_cast<double>(audio_samples), static_cast<double>(speech.end) + pad));
        next.start = at_least_zero(static_cast<double>(next.start) - pad);
      }
    } else {
      speech.end = static_cast<int64_t>(
          std::min(static_cast<double>(audio_samples), static_cast<double>(speech.end) + pad));
    }
  }
  return speeches;
}

std::vector<SpeechRange> speech_timestamps(
    SileroVad& vad, const at::Tensor& audio, const VadOptions& options) {
  return speech_ranges_from_probabilities(vad.speech_probabilities(audio), audio.size(0), options);
}

SpeechTimeMap::SpeechTimeMap(const std::vector<SpeechRange>& ranges) {
  int64_t previous_end = 0, silent = 0;
  for (const auto& range : ranges) {
    silent += range.start - previous_end;
    previous_end = range.end;
    range_ends_.push_back(range.end - silent);
    silence_before_.push_back(static_cast<double>(silent) / kSampleRate);
  }
}

size_t SpeechTimeMap::range_of(double seconds, bool is_end) const {
  TORCH_CHECK(!range_ends_.empty(), "SpeechTimeMap: no speech ranges");
  const auto sample = static_cast<int64_t>(seconds * kSampleRate); // int(): toward zero
  if (is_end) {
    const auto at = std::find(range_ends_.begin(), range_ends_.end(), sample);
    if (at != range_ends_.end()) {
      return static_cast<size_t>(at - range_ends_.begin());
    }
  }
  const auto after = std::upper_bound(range_ends_.begin(), range_ends_.end(), sample);
  return std::min(static_cast<size_t>(after - range_ends_.begin()), range_ends_.size() - 1);
}

double SpeechTimeMap::original_time(
    double seconds, std::optional<size_t> range, bool is_end) const {
  const size_t index = range ? *range : range_of(seconds, is_end);
  TORCH_CHECK(index < silence_before_.size(), "SpeechTimeMap: no range ", index);
  return python_round_hundredths(silence_before_[index] + seconds);
}

} // namespace rotary_attention::whisper
