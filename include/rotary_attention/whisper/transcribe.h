#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "rotary_attention/whisper/decoding_options.h"
#include "rotary_attention/whisper/voice_activity.h"

namespace rotary_attention::whisper {

class WhisperInference; // decoding.h
class Tokenizer;        // tokenizer.h

/// `whisper.transcribe`'s options (openai-whisper 20250625). `decoding` holds the `decode_options`
/// every window is decoded with; its `temperature` and `prompt` are set per window, as whisper sets
/// them. A `decoding.prompt` given here is the initial prompt as tokens
/// (whisper ignores it; `initial_prompt` is the same as text).
struct TranscribeOptions {
  DecodingOptions decoding;
  /// Tried in turn until a window's result passes the thresholds.
  std::vector<double> temperatures{0.0, 0.2, 0.4, 0.6, 0.8, 1.0};
  /// Above it, a result is too repetitive (zlib's compression ratio of its text).
  std::optional<double> compression_ratio_threshold = 2.4;
  /// Below it, a result's average log-probability fails.
  std::optional<double> logprob_threshold = -1.0;
  /// Above it (and with a failing log-probability) a window is silence.
  std::optional<double> no_speech_threshold = 0.6;
  /// The previous windows' text is the next one's prompt (reset after a
  /// window decoded above temperature 0.5).
  bool condition_on_previous_text = true;
  /// Text prompt for the first window (encoded as `" " + strip(text)`).
  std::optional<std::string> initial_prompt;
  /// The initial prompt opens every window's prompt.
  bool carry_initial_prompt = false;
  /// start,end,start,end,... seconds of the clips to transcribe; the last
  /// end defaults to the end of the audio. Empty: all of it.
  std::vector<double> clip_timestamps;
  /// Sampling's random numbers (temperatures above 0) come from a generator
  /// seeded with this; none: torch's default CPU generator, the one that
  /// `torch.manual_seed` seeds and whisper samples from.
  std::optional<uint64_t> seed;
  /// Each segment's words with their times (`whisper.timing`): the
  /// cross-attention of the model's alignment heads over the audio, aligned
  /// to the text by dynamic time warping; the seek then moves to the last
  /// word's end.
  bool word_timestamps = false;
  /// With word timestamps: these marks join the word after them...
  std::string prepend_punctuations = "\"'“¿([{-";
  /// ...and these the word before them.
  std::string append_punctuations = "\"'.。,，!！?？:：”)]}、";
  /// With word timestamps: silent periods longer than this many seconds are
  /// skipped where a segment looks like a hallucination.
  std::optional<double> hallucination_silence_threshold;
  /// Transcribe only the speech that `vad_model` finds (faster-whisper's
  /// `vad_filter`): the speech ranges joined end to end, their segments' and
  /// words' times mapped back to the audio's. Ignored with clip_timestamps,
  /// as faster-whisper ignores it.
  bool vad_filter = false;
  /// faster-whisper's VadOptions (not in `fields()`: a struct of its own);
  /// none: its defaults (with batch_size, its batched pipeline's: speech cut
  /// at 30 s, silences from 160 ms).
  std::optional<VadOptions> vad_parameters;
  /// Silero VAD, loaded once (`SileroVad(path)`); needed by vad_filter and
  /// batch_size.
  std::shared_ptr<SileroVad> vad_model;
  /// faster-whisper's BatchedInferencePipeline: the speech Silero VAD finds,
  /// gathered into chunks of up to 30 s, decoded this many chunks at a time
  /// (across files with `transcribe_batched`), each chunk once at the first
  /// temperature with no previous text as its prompt, times mapped back.
  /// None: whisper's sequential loop.
  std::optional<int64_t> batch_size;

  /// Each option by its name (whisper.transcribe's keyword) and member;
  /// `temperature` is `temperatures`.
  template <class Visitor>
  static void fields(Visitor&& visit) {
    visit("temperature", &TranscribeOptions::temperatures);
    visit("compression_ratio_threshold", &TranscribeOptions::compression_ratio_threshold);
    visit("logprob_threshold", &TranscribeOptions::logprob_threshold);
    visit("no_speech_threshold", &TranscribeOptions::no_speech_threshold);
    visit("condition_on_previous_text", &TranscribeOptions::condition_on_previous_text);
    visit("initial_prompt", &TranscribeOptions::initial_prompt);
    visit("carry_initial_prompt", &TranscribeOptions::carry_initial_prompt);
    visit("clip_timestamps", &TranscribeOptions::clip_timestamps);
    visit("seed", &TranscribeOptions::seed);
    visit("word_timestamps", &TranscribeOptions::word_timestamps);
    visit("prepend_punctuations", &TranscribeOptions::prepend_punctuations);
    visit("append_punctuations", &TranscribeOptions::append_punctuations);
    visit("hallucination_silence_threshold", &TranscribeOptions::hallucination_silence_threshold);
    visit("vad_filter", &TranscribeOptions::vad_filter);
    visit("batch_size", &TranscribeOptions::batch_size);
  }
};

/// One word of a segment, with word timestamps (whisper's word dict).
struct Word {
  std::string word; ///< with its leading space and merged punctuation
  double start = 0, end = 0;
  double probability = 0; ///< the mean probability of its tokens

  template <class Visitor>
  static void fields(Visitor&& visit) {
    visit("word", &Word::word);
    visit("start", &Word::start);
    visit("end", &Word::end);
    visit("probability", &Word::probability);
  }
};

/// One of `whisper.transcribe`'s segments.
struct Segment {
  int64_t id = 0;
  int64_t seek = 0; ///< the window's first mel frame
  double start = 0, end = 0;
  std::string text;
  std::vector<int64_t> tokens;
  double temperature = 0;
  double avg_logprob = 0;
  double compression_ratio = 0;
  double no_speech_prob = 0;
  /// With word timestamps only (whisper's dict has no "words" otherwise).
  std::optional<std::vector<Word>> words;

  /// Each field by its name (whisper's segment dict's key) and member, less
  /// `words`.
  template <class Visitor>
  static void fields(Visitor&& visit) {
    visit("id", &Segment::id);
    visit("seek", &Segment::seek);
    visit("start", &Segment::start);
    visit("end", &Segment::end);
    visit("text", &Segment::text);
    visit("tokens", &Segment::tokens);
    visit("temperature", &Segment::temperature);
    visit("avg_logprob", &Segment::avg_logprob);
    visit("compression_ratio", &Segment::compression_ratio);
    visit("no_speech_prob", &Segment::no_speech_prob);
  }
};

/// `whisper.transcribe`'s result.
struct Transcription {
  std::string text;
  std::vector<Segment> segments;
  std::string language;
};

/// Called after each window with the segments it added and how far the seek
/// has come (`seek` of `content_frames` mel frames).
using TranscribeProgress = std::function<void(
    const std::vector<Segment>& new_segments, int64_t seek, int64_t content_frames)>;

/// `whisper.transcribe(model, audio, **options)`: 16-kHz mono samples of any
/// length, log-mel once for the whole audio, decoded window by window (30 s)
/// with the temperature fallback, segments cut at consecutive timestamps,
/// the seek moved to the last timestamp (or over the window when it ends on
/// a single one), the previous text as the next window's prompt. The
/// language, when not given, is detected on the first window.
Transcription transcribe(
    WhisperInference& inference,
    const Tokenizer& tokenizer,
    const at::Tensor& audio,
    const TranscribeOptions& options = {},
    const TranscribeProgress& progress = {});

/// `transcribe` of several audios with `options.batch_size` (the batched
/// pipeline; required): the speech chunks of all of them decoded together,
/// `batch_size` at a time, one result per audio. `progress` gets each audio's
/// new segments (times in the audio) and how many of its speech chunks' mel
/// frames are done, of how many.
using BatchedProgress = std::function<void(
    size_t audio, const std::vector<Segment>& new_segments, int64_t done, int64_t total)>;
std::vector<Transcription> transcribe_batched(
    WhisperInference& inference,
    const Tokenizer& tokenizer,
    const std::vector<at::Tensor>& audios,
    const TranscribeOptions& options,
    const BatchedProgress& progress = {});

/// whisper's `compression_ratio`: UTF-8 bytes of `text` over their zlib
/// compression (the default level).
double compression_ratio(const std::string& text);

} // namespace rotary_attention::whisper
