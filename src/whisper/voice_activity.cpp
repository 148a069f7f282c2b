// Silero VAD as a TorchScript model, and speech ranges from its
// probabilities as the silero-vad package (6.2.3) computes them.
#include "rotary_attention/whisper/voice_activity.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/script.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>

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

// Runs the enclosed ops on the calling thread alone. The windows' ops are
// tiny: waking the other threads for each costs more than it saves (2.5x
// slower on 2 cores). OpenMP's thread count is the calling thread's own
// setting: the others' settings stay untouched.
struct OnThisThreadOnly {
  int saved;
  OnThisThreadOnly() {
    at::init_num_threads(); // (once per thread: it would reset the count set below)
    saved = omp_get_max_threads();
    omp_set_num_threads(1);
  }
  ~OnThisThreadOnly() {
    omp_set_num_threads(saved);
  }
  OnThisThreadOnly(const OnThisThreadOnly&) = delete;
  OnThisThreadOnly& operator=(const OnThisThreadOnly&) = delete;
};

constexpr double kPi = 3.14159265358979323846;
constexpr int64_t kContext = 64; // samples of the previous window before each window
constexpr int64_t kBlock = 4096; // windows whose convolutions run together

// Silero VAD 5/6's 16-kHz network, its weights read from the TorchScript
// module, run over many windows at once. Only the LSTM depends on the
// previous window; the STFT, the encoder and the output layer see one window
// each, so they run as one batch, through the same kernel (ATen's im2col and
// matrix product, one product per window) that the module's own one-window
// forward calls: the probabilities are the module's, bit for bit (checked
// when the model loads). at::conv1d would pick oneDNN for a batch, which sums
// in another order.
struct WindowsTogether {
  at::Tensor stft_basis;                    // (258, 1, 256): real and imaginary parts
  std::array<at::Tensor, 4> encoder_weight; // (out, in, 3)
  std::array<at::Tensor, 4> encoder_bias;
  static constexpr std::array<int64_t, 4> kEncoderStride = {1, 2, 2, 1};
  at::Tensor lstm_weight_ih, lstm_weight_hh, lstm_bias_ih, lstm_bias_hh; // LSTMCell(128, 128)
  at::Tensor output_weight, output_bias;                                 // Conv1d(128, 1, 1)

  // The weights by their names in the module's `_model`; none when one is
  // missing or has another shape (another version of Silero).
  static std::optional<WindowsTogether> read(const torch::jit::Module& module) {
    if (!module.hasattr("_model") || !module.attr("_model").isModule()) {
      return std::nullopt;
    }
    const auto network = module.attr("_model").toModule();
    std::map<std::string, at::Tensor> tensors;
    for (const auto& item : network.named_parameters()) {
      tensors[item.name] = item.value;
    }
    for (const auto& item : network.named_buffers()) {
      tensors[item.name] = item.value;
    }
    bool complete = true;
    const auto get = [&](const std::string& name, at::IntArrayRef shape) -> at::Tensor {
      const auto at = tensors.find(name);
      if (at == tensors.end() || at->second.sizes() != shape ||
          at->second.scalar_type() != at::kFloat) {
        complete = false;
        return {};
      }
      return at->second.detach().contiguous();
    };
    WindowsTogether w;
    w.stft_basis = get("stft.forward_basis_buffer", {258, 1, 256});
    const std::array<std::array<int64_t, 2>, 4> channels = {
        {{129, 128}, {128, 64}, {64, 64}, {64, 128}}}; // (in, out)
    for (size_t i = 0; i < 4; ++i) {
      const auto prefix = "encoder." + std::to_string(i) + ".reparam_conv.";
      w.encoder_weight[i] = get(prefix + "weight", {channels[i][1], channels[i][0], 3});
      w.encoder_bias[i] = get(prefix + "bias", {channels[i][1]});
    }
    w.lstm_weight_ih = get("decoder.rnn.weight_ih", {512, 128});
    w.lstm_weight_hh = get("decoder.rnn.weight_hh", {512, 128});
    w.lstm_bias_ih = get("decoder.rnn.bias_ih", {512});
    w.lstm_bias_hh = get("decoder.rnn.bias_hh", {512});
    w.output_weight = get("decoder.decoder.2.weight", {1, 128, 1});
    w.output_bias = get("decoder.decoder.2.bias", {1});
    if (!complete) {
      return std::nullopt;
    }
    return w;
  }

  // conv1d(input (N, C, L), weight (O, C, K)) as the module's conv1d computes
  // it for one window: ATen's slow (im2col) path, which loops over the batch.
  static at::Tensor conv(
      const at::Tensor& input,
      const at::Tensor& weight,
      const std::optional<at::Tensor>& bias,
      int64_t stride,
      int64_t padding) {
    return at::thnn_conv2d(
               input.unsqueeze(2),
               weight.unsqueeze(2),
               {1, weight.size(2)},
               bias,
               {1, stride},
               {0, padding})
        .squeeze(2);
  }

  std::vector<float> probabilities(const at::Tensor& samples) const {
    const int64_t n = samples.size(0);
    const int64_t windows = (n + kWindow - 1) / kWindow;
    // Each window with the previous window's last samples before it (zeros
    // before the first), the last window padded with zeros.
    const auto padded = at::constant_pad_nd(samples, {kContext, windows * kWindow - n});
    std::vector<float> out;
    out.reserve(static_cast<size_t>(windows));
    at::Tensor h = at::zeros({1, 128}), c = at::zeros({1, 128});
    for (int64_t first = 0; first < windows; first += kBlock) {
      const int64_t count = std::min(kBlock, windows - first);
      const auto input = padded.narrow(0, first * kWindow, count * kWindow + kContext)
                             .unfold(0, kWindow + kContext, kWindow); // (count, 576)
      // The STFT: reflection padding, a strided convolution, magnitudes.
      const auto spectrum =
          conv(at::reflection_pad1d(input, {0, 64}).unsqueeze(1), stft_basis, std::nullopt, 128, 0);
      const auto real = spectrum.narrow(1, 0, 129), imaginary = spectrum.narrow(1, 129, 129);
      auto x = at::sqrt(at::pow(real, 2) + at::pow(imaginary, 2));
      for (size_t i = 0; i < 4; ++i) {
        x = at::relu(conv(x, encoder_weight[i], encoder_bias[i], kEncoderStride[i], 1));
      }
      x = x.squeeze(-1).contiguous(); // (count, 128)
      std::vector<at::Tensor> hidden;
      hidden.reserve(static_cast<size_t>(count));
      {
        OnThisThreadOnly one_thread;
        for (int64_t i = 0; i < count; ++i) {
          std::tie(h, c) = at::lstm_cell(
              x.narrow(0, i, 1),
              {h, c},
              lstm_weight_ih,
              lstm_weight_hh,
              lstm_bias_ih,
              lstm_bias_hh);
          hidden.push_back(h);
        }
      }
      const auto logits =
          conv(at::relu(at::cat(hidden).unsqueeze(-1)), output_weight, output_bias, 1, 0)
              .reshape({count});
      // One sigmoid per window: a one-element tensor takes the scalar exp the
      // module's forward takes; a batch would take the vectorized one.
      OnThisThreadOnly one_thread;
      for (int64_t i = 0; i < count; ++i) {
        out.push_back(at::sigmoid(logits.narrow(0, i, 1)).item<float>());
      }
    }
    return out;
  }
};

} // namespace

struct SileroVad::Model {
  torch::jit::Module module;
  std::optional<WindowsTogether> together;
  std::mutex mutex; ///< the module carries its state between windows

  // The module's own forward, one window at a time, with its state.
  std::vector<float> probabilities_window_by_window(const at::Tensor& samples) {
    const int64_t n = samples.size(0);
    module.run_method("reset_states");
    std::vector<float> out;
    out.reserve(static_cast<size_t>((n + kWindow - 1) / kWindow));
    OnThisThreadOnly one_thread;
    for (int64_t start = 0; start < n; start += kWindow) {
      auto window = samples.narrow(0, start, std::min(kWindow, n - start));
      if (window.size(0) < kWindow) {
        window = at::constant_pad_nd(window, {0, kWindow - window.size(0)});
      }
      const auto probability =
          module.forward({window, static_cast<int64_t>(kSampleRate)}).toTensor();
      TORCH_CHECK(
          probability.numel() == 1,
          "SileroVad: a window gave ",
          probability.numel(),
          " values, not one probability");
      out.push_back(probability.item<float>());
    }
    return out;
  }
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
  // A probe through the module's own forward: Silero's takes (window, 16000)
  // and gives a probability. Noise with a tone in it, three windows and a bit,
  // so that the state, the context and the padded last window all count.
  const auto time = at::arange(3 * kWindow + 100, at::kFloat) / kSampleRate;
  const auto probe =
      0.3 * at::sin(2 * kPi * 220 * time) + 0.05 * at::sin(2 * kPi * 1234.5 * time * time);
  std::vector<float> expected;
  try {
    at::NoGradGuard no_grad;
    expected = model->probabilities_window_by_window(probe);
  } catch (const c10::Error& e) {
    TORCH_CHECK(
        false,
        "SileroVad: '",
        path,
        "' is a TorchScript model, but not Silero VAD's: ",
        e.what_without_backtrace());
  }
  TORCH_CHECK(
      std::all_of(expected.begin(), expected.end(), [](float p) { return p >= 0 && p <= 1; }),
      "SileroVad: '",
      path,
      "' is a TorchScript model, but not Silero VAD's: a window gave no probability");
  // The windows run together only where that gives the module's own
  // probabilities (Silero 5 and 6); any other version runs window by window.
  model->together = WindowsTogether::read(model->module);
  if (model->together) {
    at::NoGradGuard no_grad;
    if (model->together->probabilities(probe) != expected) {
      model->together.reset();
    }
  }
  model_ = std::move(model);
}

SileroVad::~SileroVad() = default;

bool SileroVad::runs_windows_together() const {
  return model_->together.has_value();
}

std::vector<float> SileroVad::speech_probabilities(const at::Tensor& audio) {
  TORCH_CHECK(
      audio.dim() == 1 && audio.is_floating_point(),
      "SileroVad: expected 1-D floating-point 16-kHz samples, got ",
      audio.scalar_type(),
      " of shape ",
      audio.sizes());
  const auto samples = audio.to(at::kFloat).contiguous();
  at::NoGradGuard no_grad;
  if (model_->together) {
    return model_->together->probabilities(samples);
  }
  std::lock_guard<std::mutex> lock(model_->mutex);
  return model_->probabilities_window_by_window(samples);
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
