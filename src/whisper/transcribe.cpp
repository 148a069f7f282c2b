// whisper.transcribe (openai-whisper 20250625): the window loop, the
// temperature fallback, the segmenter and the word-timestamp pass.
#include "rotary_attention/whisper/transcribe.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <zlib.h>

#include <cmath>

#include "detect_language.h"
#include "python_tail.h"
#include "rotary_attention/whisper/audio.h"
#include "rotary_attention/whisper/decoding.h"
#include "rotary_attention/whisper/tokenizer.h"
#include "rotary_attention/whisper/word_timing.h"
#include "segmenter.h"
#include "transcribe_checks.h"

namespace rotary_attention::whisper {

double compression_ratio(const std::string& text) {
  uLongf size = compressBound(text.size());
  std::vector<Bytef> out(size);
  const int status = compress(
      out.data(),
      &size,
      reinterpret_cast<const Bytef*>(text.data()),
      static_cast<uLong>(text.size()));
  TORCH_CHECK(status == Z_OK, "compression_ratio: zlib failed with status ", status);
  return static_cast<double>(text.size()) / static_cast<double>(size);
}

namespace {

constexpr int64_t kFramesPerSecond = kSampleRate / kHopLength;
constexpr int64_t kWindowFrames = kChunkFrames; // N_FRAMES: 30 s of mel frames

// Python's seconds of `frames` mel frames: frames * HOP_LENGTH / SAMPLE_RATE.
double seconds(int64_t frames) {
  return static_cast<double>(frames * kHopLength) / static_cast<double>(kSampleRate);
}

// decode_with_fallback: each temperature in turn until the result is neither
// too repetitive nor too improbable, or is silence.
DecodingResult decode_with_fallback(
    WhisperInference& inference,
    const Tokenizer& tokenizer,
    const at::Tensor& features,
    const TranscribeOptions& options,
    DecodingOptions decoding) {
  DecodingResult result;
  for (const double t : options.temperatures) {
    DecodingOptions attempt = decoding;
    attempt.temperature = t;
    if (t > 0) {
      attempt.beam_size.reset();
      attempt.patience.reset();
    } else {
      attempt.best_of.reset();
    }
    result = decode(inference, tokenizer, features, attempt).front();
    bool needs_fallback = false;
    if (options.compression_ratio_threshold &&
        result.compression_ratio > *options.compression_ratio_threshold) {
      needs_fallback = true; // too repetitive
    }
    if (options.logprob_threshold && result.avg_logprob < *options.logprob_threshold) {
      needs_fallback = true; // too improbable
    }
    if (options.no_speech_threshold && result.no_speech_prob > *options.no_speech_threshold &&
        options.logprob_threshold && result.avg_logprob < *options.logprob_threshold) {
      needs_fallback = false; // silence
    }
    if (!needs_fallback) {
      break;
    }
  }
  return result;
}

// whisper's get_end: the last word's end, else the last segment's end.
std::optional<double> end_of_speech(const std::vector<Segment>& segments) {
  for (auto s = segments.rbegin(); s != segments.rend(); ++s) {
    if (s->words && !s->words->empty()) {
      return s->words->back().end;
    }
  }
  if (segments.empty()) {
    return std::nullopt;
  }
  return segments.back().end;
}

// An anomalous word is very short, very long or improbable.
double word_anomaly_score(const Word& word) {
  const double duration = word.end - word.start;
  double score = 0.0;
  if (word.probability < 0.15) {
    score += 1.0;
  }
  if (duration < 0.133) {
    score += (0.133 - duration) * 15;
  }
  if (duration > 2.0) {
    score += duration - 2.0;
  }
  return score;
}

// A segment whose first eight words (punctuation aside) are mostly anomalous.
bool is_segment_anomaly(const Segment* segment) {
  if (segment == nullptr || !segment->words || segment->words->empty()) {
    return false;
  }
  static const std::string punctuation = "\"'“¿([{-\"'.。,，!！?？:：”)]}、";
  double score = 0;
  size_t counted = 0;
  for (const auto& w : *segment->words) {
    // Python's `not in`: not a substring of the marks.
    if (counted < 8 && punctuation.find(w.word) == std::string::npos) {
      score += word_anomaly_score(w);
      ++counted;
    }
  }
  return score >= 3 || score + 0.01 >= static_cast<double>(counted);
}

const Segment* next_segment_with_words(const std::vector<Segment>& segments, size_t from) {
  for (size_t i = from; i < segments.size(); ++i) {
    if (segments[i].words && !segments[i].words->empty()) {
      return &segments[i];
    }
  }
  return nullptr;
}

// Where one window stands, for the word-timestamp pass.
struct WindowPlace {
  int64_t previous_seek; ///< the window's first frame
  int64_t segment_size;  ///< its frames
  int64_t content_frames;
  bool single_timestamp_ending;
};

// whisper.transcribe's `if word_timestamps:` block for one window's
// segments: their words, the seek moved to the last word's end and, with a
// hallucination_silence_threshold, silences before likely hallucinations
// skipped (segments from a hallucination on are dropped). Returns false when
// the whole window is dropped: its first segment a likely hallucination after
// a long silence.
bool place_words(
    std::vector<Segment>& segments,
    int64_t& seek,
    double& last_speech_end,
    const WindowPlace& place,
    WhisperInference& inference,
    const Tokenizer& tokenizer,
    const DecodingOptions& decoding,
    const at::Tensor& features,
    const TranscribeOptions& options) {
  Whisper model = inference.model();
  add_word_timestamps(
      segments,
      model,
      tokenizer,
      *decoding.language,
      decoding.task,
      features,
      place.segment_size,
      options.prepend_punctuations,
      options.append_punctuations,
      last_speech_end);
  const double time_offset = seconds(place.previous_seek);
  const double window_end_time = seconds(place.previous_seek + kWindowFrames);
  const auto frames_at = [](double t) {
    return static_cast<int64_t>(std::nearbyint(t * kFramesPerSecond));
  };
  if (!place.single_timestamp_ending) {
    const auto last_word_end = end_of_speech(segments);
    if (last_word_end && *last_word_end > time_offset) {
      seek = frames_at(*last_word_end);
    }
  }
  if (options.hallucination_silence_threshold) {
    const double threshold = *options.hallucination_silence_threshold;
    if (!place.single_timestamp_ending) {
      const auto last_word_end = end_of_speech(segments);
      if (last_word_end && *last_word_end > time_offset) {
        seek = window_end_time - *last_word_end > threshold
                   ? frames_at(*last_word_end)
                   : place.previous_seek + place.segment_size;
      }
    }
    // A first segment that may be a hallucination: skip the silence before it.
    if (const Segment* first = next_segment_with_words(segments, 0);
        first != nullptr && is_segment_anomaly(first)) {
      const double gap = first->start - time_offset;
      if (gap > threshold) {
        seek = place.previous_seek + frames_at(gap);
        return false;
      }
    }
    // A hallucination between silences (or other hallucinations): seek past
    // the silence before it and drop it and what follows.
    double hallucination_last_end = last_speech_end;
    const double content_duration = seconds(place.content_frames);
    for (size_t i = 0; i < segments.size(); ++i) {
      const Segment& segment = segments[i];
      if (!segment.words || segment.words->empty()) {
        continue;
      }
      if (is_segment_anomaly(&segment)) {
        const Segment* next = next_segment_with_words(segments, i + 1);
        const double next_start = next != nullptr ? next->words->front().start
                                                  : time_offset + seconds(place.segment_size);
        const bool silence_before = segment.start - hallucination_last_end > threshold ||
                                    segment.start < threshold || segment.start - time_offset < 2.0;
        const bool silence_after = next_start - segment.end > threshold ||
                                   is_segment_anomaly(next) || window_end_time - segment.end < 2.0;
        if (silence_before && silence_after) {
          seek = frames_at(std::max(time_offset + 1, segment.start));
          if (content_duration - segment.end < threshold) {
            seek = place.content_frames;
          }
          segments.erase(segments.begin() + static_cast<std::ptrdiff_t>(i), segments.end());
          break;
        }
      }
      hallucination_last_end = segment.end;
    }
  }
  if (const auto last_word_end = end_of_speech(segments)) {
    last_speech_end = *last_word_end;
  }
  return true;
}

bool clips_everything(const std::vector<double>& clip_timestamps) {
  return clip_timestamps.empty() || (clip_timestamps.size() == 1 && clip_timestamps[0] == 0);
}

// Only the speech Silero VAD finds, joined end to end, times mapped back.
Transcription transcribe_speech(
    WhisperInference& inference,
    const Tokenizer& tokenizer,
    const at::Tensor& audio,
    const TranscribeOptions& options,
    const TranscribeProgress& progress) {
  const auto ranges =
      speech_timestamps(*options.vad_model, audio, options.vad_parameters.value_or(VadOptions{}));
  std::vector<at::Tensor> pieces;
  for (const auto& r : ranges) {
    pieces.push_back(audio.narrow(0, r.start, r.end - r.start));
  }
  const auto speech = pieces.empty() ? audio.narrow(0, 0, 0) : at::cat(pieces);
  TranscribeOptions inner = options;
  inner.vad_filter = false;
  if (ranges.empty()) {
    return transcribe(inference, tokenizer, speech, inner, progress);
  }
  const SpeechTimeMap map(ranges);
  TranscribeProgress mapped;
  if (progress) {
    mapped = [&](const std::vector<Segment>& added, int64_t seek, int64_t total) {
      auto copy = added;
      detail::restore_original_times(copy, map);
      progress(copy, seek, total);
    };
  }
  auto result = transcribe(inference, tokenizer, speech, inner, mapped);
  detail::restore_original_times(result.segments, map);
  return result;
}

} // namespace

Transcription transcribe(
    WhisperInference& inference,
    const Tokenizer& tokenizer,
    const at::Tensor& audio,
    const TranscribeOptions& options,
    const TranscribeProgress& progress) {
  detail::check_options(options);
  detail::check_audio(audio);
  at::NoGradGuard no_grad;
  if (options.batch_size) {
    BatchedProgress report;
    if (progress) {
      report = [&](size_t, const std::vector<Segment>& added, int64_t done, int64_t total) {
        progress(added, done, total);
      };
    }
    return transcribe_batched(inference, tokenizer, {audio}, options, report).front();
  }
  if (options.vad_filter && clips_everything(options.clip_timestamps)) {
    TORCH_CHECK(
        options.vad_model != nullptr,
        "transcribe: vad_filter needs a Silero VAD model (vad_model: silero-vad's "
        "silero_vad/data/silero_vad.jit, loaded with SileroVad)");
    return transcribe_speech(inference, tokenizer, audio, options, progress);
  }
  Whisper model = inference.model();
  detail::check_alignment_heads(*model, options);
  const auto& dims = model->dims;
  // The whole audio's log-mel at once, with 30 s of silence after it (its
  // normalisation is over all of it, as whisper's).
  const auto mel = log_mel_spectrogram(
      audio.to(at::kFloat).contiguous(), dims.n_mels, kWindowFrames * kHopLength);
  const int64_t content_frames = mel.size(-1) - kWindowFrames;
  const auto features_of = [&](int64_t seek, int64_t size) {
    auto window = pad_or_trim(mel.narrow(-1, seek, size), kWindowFrames);
    return model->embed_audio(window.unsqueeze(0)).to(at::kFloat);
  };

  DecodingOptions decoding = options.decoding;
  if (options.seed) {
    decoding.generator = at::make_generator<at::CPUGeneratorImpl>(*options.seed);
  }
  if (!decoding.language) {
    if (!dims.is_multilingual()) {
      decoding.language = "en";
    } else {
      decoding.language =
          detail::detect_language(inference, tokenizer, features_of(0, kWindowFrames), decoding);
    }
  }
  Transcription out;
  // As given (whisper returns decode_options["language"] unchanged), or detected.
  out.language = *decoding.language;

  std::vector<std::pair<int64_t, int64_t>> clips;
  {
    std::vector<int64_t> points;
    for (const double t : options.clip_timestamps) {
      points.push_back(static_cast<int64_t>(std::nearbyint(t * kFramesPerSecond)));
    }
    if (points.empty()) {
      points.push_back(0);
    }
    if (points.size() % 2 == 1) {
      points.push_back(content_frames);
    }
    for (size_t i = 0; i < points.size(); i += 2) {
      clips.emplace_back(points[i], points[i + 1]);
    }
  }
  TORCH_CHECK(
      kWindowFrames % dims.n_audio_ctx == 0,
      "transcribe: n_audio_ctx=",
      dims.n_audio_ctx,
      " does not divide the window's ",
      kWindowFrames,
      " frames");
  const int64_t input_stride = kWindowFrames / dims.n_audio_ctx; // mel frames per output token

  std::vector<int64_t> all_tokens;
  size_t prompt_reset_since = 0;
  int64_t remaining_prompt_length = dims.n_text_ctx / 2 - 1;
  std::vector<int64_t> initial_prompt_tokens;
  TORCH_CHECK(
      !(options.initial_prompt && !options.decoding.prompt.empty()),
      "transcribe: give the initial prompt as text (initial_prompt) or as tokens (prompt), not "
      "both");
  if (options.initial_prompt) {
    initial_prompt_tokens = tokenizer.encode(" " + strip(*options.initial_prompt));
  } else {
    initial_prompt_tokens = options.decoding.prompt; // the initial prompt as tokens
  }
  all_tokens = initial_prompt_tokens;
  remaining_prompt_length -= static_cast<int64_t>(initial_prompt_tokens.size());

  if (options.word_timestamps && decoding.task == "translate") {
    TORCH_WARN("Word-level timestamps on translations may not be reliable.");
  }
  double last_speech_end = 0.0; // seconds, with word timestamps
  size_t clip = 0;
  int64_t seek = clips.front().first;
  while (clip < clips.size()) {
    const auto [clip_start, clip_end] = clips[clip];
    seek = std::max(seek, clip_start);
    if (seek >= clip_end) {
      if (++clip < clips.size()) {
        seek = clips[clip].first;
      }
      continue;
    }
    const int64_t segment_size = std::min({kWindowFrames, content_frames - seek, clip_end - seek});
    if (segment_size <= 0) {
      // A clip that starts past the audio's end: nothing left in it.
      if (++clip < clips.size()) {
        seek = clips[clip].first;
      }
      continue;
    }
    if (options.carry_initial_prompt) {
      const size_t ignored = std::max(initial_prompt_tokens.size(), prompt_reset_since);
      decoding.prompt = initial_prompt_tokens;
      const auto rest = detail::python_tail(all_tokens, remaining_prompt_length, ignored);
      decoding.prompt.insert(decoding.prompt.end(), rest.begin(), rest.end());
    } else {
      decoding.prompt = detail::python_tail(all_tokens, 0, prompt_reset_since);
    }
    const auto features = features_of(seek, segment_size);
    const auto result = decode_with_fallback(inference, tokenizer, features, options, decoding);

    if (options.no_speech_threshold) {
      // No voice activity, unless the log-probability is high enough.
      bool skip = result.no_speech_prob > *options.no_speech_threshold;
      if (options.logprob_threshold && result.avg_logprob > *options.logprob_threshold) {
        skip = false;
      }
      if (skip) {
        seek += segment_size; // to the next window
        if (progress) {
          progress({}, std::min(content_frames, seek), content_frames);
        }
        continue;
      }
    }
    const int64_t previous_seek = seek;
    auto window = detail::segments_of_window(
        tokenizer, result, seek, seconds(seek), segment_size, input_stride);
    seek += window.seek_advance;
    if (options.word_timestamps &&
        !place_words(
            window.segments,
            seek,
            last_speech_end,
            {previous_seek, segment_size, content_frames, window.single_timestamp_ending},
            inference,
            tokenizer,
            decoding,
            features,
            options)) {
      if (progress) {
        progress({}, std::min(content_frames, seek), content_frames);
      }
      continue;
    }
    detail::clear_empty_segments(window.segments);
    for (auto& segment : window.segments) {
      segment.id = static_cast<int64_t>(out.segments.size());
      all_tokens.insert(all_tokens.end(), segment.tokens.begin(), segment.tokens.end());
      out.segments.push_back(segment);
    }
    if (!options.condition_on_previous_text || result.temperature > 0.5) {
      // No prompt after a high temperature.
      prompt_reset_since = all_tokens.size();
    }
    if (progress) {
      std::vector<Segment> added(
          out.segments.end() - static_cast<std::ptrdiff_t>(window.segments.size()),
          out.segments.end());
      progress(added, std::min(content_frames, seek), content_frames);
    }
  }
  out.text = tokenizer.decode(
      std::vector<int64_t>(
          all_tokens.begin() + static_cast<std::ptrdiff_t>(initial_prompt_tokens.size()),
          all_tokens.end()));
  return out;
}

} // namespace rotary_attention::whisper
