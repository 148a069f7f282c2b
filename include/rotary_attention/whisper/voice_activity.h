#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "rotary_attention/detail/keep_linked.h"

namespace rotary_attention::whisper {

/// Voice-activity options: faster-whisper's `VadOptions` (names and defaults)
/// and the two of the silero-vad package's `get_speech_timestamps` that
/// faster-whisper fixes.
struct VadOptions {
  /// Probabilities from this on are speech...
  double threshold = 0.5;
  /// ...and, inside speech, below this silence (none: threshold - 0.15, at least 0.01).
  std::optional<double> neg_threshold;
  /// Speech shorter than this is dropped.
  int64_t min_speech_duration_ms = 0;
  /// Longer speech is cut (at a silence of over `min_silence_at_max_speech_ms`
  /// inside it when there is one).
  double max_speech_duration_s = std::numeric_limits<double>::infinity();
  /// Silence that ends speech.
  int64_t min_silence_duration_ms = 2000;
  /// Added to each side of a speech range.
  int64_t speech_pad_ms = 400;
  /// The shortest silence a cut at max_speech_duration_s may use.
  int64_t min_silence_at_max_speech_ms = 98;
  /// The cut at max_speech_duration_s at the longest silence inside (the
  /// silero-vad package's default) rather than the last one (faster-whisper's).
  bool use_max_poss_sil_at_max_speech = false;

  template <class Visitor>
  static void fields(Visitor&& visit) {
    visit("threshold", &VadOptions::threshold);
    visit("neg_threshold", &VadOptions::neg_threshold);
    visit("min_speech_duration_ms", &VadOptions::min_speech_duration_ms);
    visit("max_speech_duration_s", &VadOptions::max_speech_duration_s);
    visit("min_silence_duration_ms", &VadOptions::min_silence_duration_ms);
    visit("speech_pad_ms", &VadOptions::speech_pad_ms);
    visit("min_silence_at_max_speech_ms", &VadOptions::min_silence_at_max_speech_ms);
    visit("use_max_poss_sil_at_max_speech", &VadOptions::use_max_poss_sil_at_max_speech);
  }
};

/// A range of speech in samples of the 16-kHz audio: [start, end).
struct SpeechRange {
  int64_t start = 0, end = 0;
  bool operator==(const SpeechRange& other) const {
    return start == other.start && end == other.end;
  }
};

/// Silero VAD (`silero_vad.jit` of the silero-vad package), loaded as the
/// TorchScript model it is with `torch::jit::load`: a speech probability for
/// each 512-sample window of 16-kHz audio, the model carrying its state and
/// the previous window's last samples from one window to the next.
/// speech_probabilities may be called from several threads.
class SileroVad {
 public:
  /// Loads `path`; a file that is not a TorchScript model, or one without
  /// Silero's `reset_states` and its (window, 16000) -> probability forward,
  /// is an error naming the file. Nothing is kept on failure.
  explicit SileroVad(const std::string& path);
  ~SileroVad();
  SileroVad(const SileroVad&) = delete;
  SileroVad& operator=(const SileroVad&) = delete;

  /// The probability of speech in each 512-sample window of `audio` (1-D,
  /// 16 kHz; the last window padded with zeros), from a fresh state.
  std::vector<float> speech_probabilities(const at::Tensor& audio);

  /// Whether the windows run together (Silero 5 and 6, whose weights are read
  /// from the module: only the LSTM runs window by window), giving the
  /// module's own probabilities bit for bit, as checked on a probe signal
  /// when the model loads; otherwise the module's forward runs window by window.
  bool runs_windows_together() const;

  const std::string& path() const {
    return path_;
  }

 private:
  struct Model;
  std::unique_ptr<Model> model_;
  std::string path_;
};

/// The silero-vad package's `get_speech_timestamps_from_probs` at 16 kHz:
/// speech ranges from the windows' probabilities (thresholds, minimum speech
/// and silence, maximum speech, padding) for audio of `audio_samples`.
std::vector<SpeechRange> speech_ranges_from_probabilities(
    const std::vector<float>& probabilities, int64_t audio_samples, const VadOptions& options);

/// The silero-vad package's `get_speech_timestamps(audio, model, ...)` at 16 kHz.
std::vector<SpeechRange> speech_timestamps(
    SileroVad& vad, const at::Tensor& audio, const VadOptions& options = {});

/// Times in the audio that holds only the speech ranges (joined end to end)
/// as times in the original audio: faster-whisper's `SpeechTimestampsMap`,
/// rounded to 10 ms as it rounds them.
class SpeechTimeMap {
 public:
  explicit SpeechTimeMap(const std::vector<SpeechRange>& ranges);
  /// The range a time of the joined audio falls in; an end that falls exactly
  /// on a range's end stays in that range.
  size_t range_of(double seconds, bool is_end = false) const;
  /// The original time of `seconds`, in the range `range` (default: range_of).
  double original_time(double seconds, std::optional<size_t> range = {}, bool is_end = false) const;

 private:
  std::vector<int64_t> range_ends_;    ///< each range's end in the joined audio (samples)
  std::vector<double> silence_before_; ///< seconds removed before each range
};

} // namespace rotary_attention::whisper
