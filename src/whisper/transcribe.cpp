// whisper.transcribe (openai-whisper 20250625) less word timestamps: the window
// loop, the temperature fallback and the segmenter.
#include "rotary_attention/whisper/transcribe.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <zlib.h>

#include <cmath>

#include "python_tail.h"
#include "rotary_attention/whisper/audio.h"
#include "rotary_attention/whisper/decoding.h"
#include "rotary_attention/whisper/tokenizer.h"

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

void check_options(const TranscribeOptions& o) {
  TORCH_CHECK(!o.temperatures.empty(), "transcribe: temperature needs at least one value");
  for (const double t : o.temperatures) {
    TORCH_CHECK(std::isfinite(t) && t >= 0, "transcribe: temperatures must be >= 0, got ", t);
  }
  for (const double t : o.clip_timestamps) {
    TORCH_CHECK(
        std::isfinite(t) && t >= 0, "transcribe: clip_timestamps must be seconds >= 0, got ", t);
  }
  TORCH_CHECK(
      o.decoding.task == "transcribe" || o.decoding.task == "translate",
      "transcribe: task must be \"transcribe\" or \"translate\", got \"",
      o.decoding.task,
      "\"");
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

struct WindowSegments {
  std::vector<Segment> segments;
  int64_t seek_advance = 0; ///< frames the seek moves forward
};

// The segments of one window's tokens: cut after every pair of consecutive
// timestamps; a window ending on a single timestamp had no speech after it
// (the seek moves over the window), otherwise the seek moves to the last
// timestamp and the unfinished text is decoded again in the next window. With
// no pair, the whole window is one segment.
WindowSegments segments_of_window(
    const Tokenizer& tokenizer,
    const DecodingResult& result,
    int64_t seek,
    int64_t segment_size,
    int64_t input_stride) {
  const auto& tokens = result.tokens;
  const int64_t begin = tokenizer.timestamp_begin();
  const double time_offset = seconds(seek);
  const double time_precision =
      static_cast<double>(input_stride * kHopLength) / static_cast<double>(kSampleRate);
  const auto is_timestamp = [&](size_t i) { return tokens[i] >= begin; };
  const size_t n = tokens.size();
  // whisper's timestamp_tokens[-2:] == [False, True]
  const bool single_timestamp_ending = n >= 2 && !is_timestamp(n - 2) && is_timestamp(n - 1);
  std::vector<size_t> slices;
  for (size_t i = 1; i < n; ++i) {
    if (is_timestamp(i - 1) && is_timestamp(i)) {
      slices.push_back(i);
    }
  }
  const auto segment = [&](double start, double end, std::vector<int64_t> part) {
    Segment s;
    s.seek = seek;
    s.start = start;
    s.end = end;
    std::vector<int64_t> text_tokens;
    for (const int64_t t : part) {
      if (t < tokenizer.eot()) {
        text_tokens.push_back(t);
      }
    }
    s.text = tokenizer.decode(text_tokens);
    s.tokens = std::move(part);
    s.temperature = result.temperature;
    s.avg_logprob = result.avg_logprob;
    s.compression_ratio = result.compression_ratio;
    s.no_speech_prob = result.no_speech_prob;
    return s;
  };
  WindowSegments out;
  if (!slices.empty()) {
    if (single_timestamp_ending) {
      slices.push_back(n);
    }
    size_t last_slice = 0;
    for (const size_t current : slices) {
      std::vector<int64_t> part(tokens.begin() + last_slice, tokens.begin() + current);
      const int64_t start_pos = part.front() - begin, end_pos = part.back() - begin;
      out.segments.push_back(segment(
          time_offset + static_cast<double>(start_pos) * time_precision,
          time_offset + static_cast<double>(end_pos) * time_precision,
          std::move(part)));
      last_slice = current;
    }
    out.seek_advance =
        single_timestamp_ending ? segment_size : (tokens[last_slice - 1] - begin) * input_stride;
  } else {
    double duration = seconds(segment_size);
    for (size_t i = n; i-- > 0;) {
      if (is_timestamp(i)) {
        // No pair, but a timestamp: the last one ends the segment.
        if (tokens[i] != begin) {
          duration = static_cast<double>(tokens[i] - begin) * time_precision;
        }
        break;
      }
    }
    out.segments.push_back(segment(time_offset, time_offset + duration, tokens));
    out.seek_advance = segment_size;
  }
  return out;
}

} // namespace

Transcription transcribe(
    WhisperInference& inference,
    const Tokenizer& tokenizer,
    const at::Tensor& audio,
    const TranscribeOptions& options,
    const TranscribeProgress& progress) {
  check_options(options);
  TORCH_CHECK(
      audio.dim() == 1 && audio.is_floating_point(),
      "transcribe: expected audio as 1-D floating-point 16-kHz samples, got ",
      audio.scalar_type(),
      " of shape ",
      audio.sizes());
  at::NoGradGuard no_grad;
  Whisper model = inference.model();
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
      DecodingOptions detect = decoding;
      detect.task = "lang_id";
      detect.temperature = 0;
      detect.beam_size.reset(), detect.best_of.reset(), detect.patience.reset();
      decoding.language =
          decode(inference, tokenizer, features_of(0, kWindowFrames), detect).front().language;
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
    const auto result = decode_with_fallback(
        inference, tokenizer, features_of(seek, segment_size), options, decoding);

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
    auto window = segments_of_window(tokenizer, result, seek, segment_size, input_stride);
    seek += window.seek_advance;
    // An instantaneous segment, or one without text, is kept empty.
    for (auto& segment : window.segments) {
      if (segment.start == segment.end || strip(segment.text).empty()) {
        segment.text.clear();
        segment.tokens.clear();
      }
    }
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
