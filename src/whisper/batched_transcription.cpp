// faster-whisper's BatchedInferencePipeline through the C++ decoding loop:
// Silero VAD's speech gathered into chunks of up to 30 s, the chunks of every
// audio decoded batch_size at a time, times mapped back.
#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>

#include "detect_language.h"
#include "rotary_attention/whisper/audio.h"
#include "rotary_attention/whisper/decoding.h"
#include "rotary_attention/whisper/tokenizer.h"
#include "rotary_attention/whisper/transcribe.h"
#include "rotary_attention/whisper/word_timing.h"
#include "segmenter.h"
#include "transcribe_checks.h"

namespace rotary_attention::whisper {

namespace {

constexpr double kMaxChunkSeconds = 30.0; // faster-whisper's chunk_length

// One chunk of speech: ranges of one audio joined end to end.
struct SpeechChunk {
  size_t audio = 0;
  at::Tensor samples;
  int64_t offset = 0; ///< samples of the audio's joined speech before it
};

// faster-whisper's collect_chunks(audio, ranges, max_duration=30): ranges
// joined until the next would pass 30 s.
void collect_chunks(
    size_t index,
    const at::Tensor& audio,
    const std::vector<SpeechRange>& ranges,
    std::vector<SpeechChunk>& out) {
  const auto max_samples = static_cast<int64_t>(kMaxChunkSeconds * kSampleRate);
  std::vector<at::Tensor> pieces;
  int64_t length = 0, before = 0;
  for (const auto& r : ranges) {
    if (length + (r.end - r.start) > max_samples && !pieces.empty()) {
      out.push_back({index, at::cat(pieces), before});
      before += length;
      pieces.clear();
      length = 0;
    }
    pieces.push_back(audio.narrow(0, r.start, r.end - r.start));
    length += r.end - r.start;
  }
  if (!pieces.empty()) {
    out.push_back({index, at::cat(pieces), before});
  }
}

std::string text_of(const Tokenizer& tokenizer, const std::vector<Segment>& segments) {
  std::vector<int64_t> tokens;
  for (const auto& s : segments) {
    tokens.insert(tokens.end(), s.tokens.begin(), s.tokens.end());
  }
  return tokenizer.decode(tokens);
}

} // namespace

std::vector<Transcription> transcribe_batched(
    WhisperInference& inference,
    const Tokenizer& tokenizer,
    const std::vector<at::Tensor>& audios,
    const TranscribeOptions& options,
    const BatchedProgress& progress) {
  TORCH_CHECK(options.batch_size.has_value(), "transcribe_batched: options.batch_size is not set");
  TORCH_CHECK(
      *options.batch_size >= 1,
      "transcribe: batch_size must be at least 1, got ",
      *options.batch_size);
  TORCH_CHECK(
      options.vad_model != nullptr,
      "transcribe: batch_size needs a Silero VAD model (vad_model): the batched pipeline decodes "
      "the speech chunks it finds");
  detail::check_options(options);
  for (const auto& audio : audios) {
    detail::check_audio(audio);
  }
  at::NoGradGuard no_grad;
  Whisper model = inference.model();
  detail::check_alignment_heads(*model, options);
  const auto& dims = model->dims;
  // faster-whisper's batched defaults: speech cut at 30 s, silences from 160 ms.
  VadOptions vad;
  vad.min_silence_duration_ms = 160;
  if (options.vad_parameters) {
    vad = *options.vad_parameters;
  }
  vad.max_speech_duration_s = kMaxChunkSeconds;

  std::vector<std::vector<SpeechRange>> ranges;
  std::vector<SpeechChunk> chunks;
  std::vector<int64_t> speech_frames(audios.size(), 0), frames_done(audios.size(), 0);
  for (size_t i = 0; i < audios.size(); ++i) {
    const auto audio = audios[i].to(at::kFloat).contiguous();
    ranges.push_back(speech_timestamps(*options.vad_model, audio, vad));
    collect_chunks(i, audio, ranges.back(), chunks);
    for (const auto& r : ranges.back()) {
      speech_frames[i] += (r.end - r.start) / kHopLength;
    }
  }
  const int64_t window_frames = kChunkFrames;
  const int64_t input_stride = window_frames / dims.n_audio_ctx;
  const auto mel_of = [&](const SpeechChunk& chunk) {
    return pad_or_trim(log_mel_spectrogram(chunk.samples, dims.n_mels, 0), window_frames);
  };

  DecodingOptions decoding = options.decoding;
  decoding.temperature = options.temperatures.front();
  if (decoding.temperature > 0) {
    decoding.beam_size.reset(), decoding.patience.reset();
  } else {
    decoding.best_of.reset();
  }
  if (options.seed) {
    decoding.generator = at::make_generator<at::CPUGeneratorImpl>(*options.seed);
  }
  if (options.initial_prompt) {
    decoding.prompt = tokenizer.encode(" " + strip(*options.initial_prompt));
  }
  if (!decoding.language) {
    if (!dims.is_multilingual() || chunks.empty()) {
      decoding.language = "en";
    } else {
      // Detected on the first chunk, as faster-whisper detects it on the first 30 s of speech.
      const auto features = model->embed_audio(mel_of(chunks.front()).unsqueeze(0));
      decoding.language = detail::detect_language(inference, tokenizer, features, decoding);
    }
  }

  std::vector<Transcription> out(audios.size());
  std::vector<double> last_speech_end(audios.size(), 0.0);
  for (auto& t : out) {
    t.language = *decoding.language;
  }
  const auto batch = static_cast<size_t>(*options.batch_size);
  for (size_t first = 0; first < chunks.size(); first += batch) {
    const size_t n = std::min(batch, chunks.size() - first);
    std::vector<at::Tensor> mels;
    for (size_t k = 0; k < n; ++k) {
      mels.push_back(mel_of(chunks[first + k]));
    }
    const auto features = model->embed_audio(at::stack(mels)).to(at::kFloat);
    const auto results = decode(inference, tokenizer, features, decoding);
    for (size_t k = 0; k < n; ++k) {
      const auto& chunk = chunks[first + k];
      const int64_t frames = chunk.samples.size(0) / kHopLength;
      const double offset = static_cast<double>(chunk.offset) / kSampleRate;
      auto window = detail::segments_of_window(
          tokenizer,
          results[k],
          static_cast<int64_t>(std::nearbyint(offset * 100)),
          offset,
          frames,
          input_stride);
      if (options.word_timestamps) {
        last_speech_end[chunk.audio] = add_word_timestamps(
            window.segments,
            model,
            tokenizer,
            *decoding.language,
            decoding.task,
            features.narrow(0, static_cast<int64_t>(k), 1),
            frames,
            options.prepend_punctuations,
            options.append_punctuations,
            last_speech_end[chunk.audio]);
      }
      auto& result = out[chunk.audio];
      detail::clear_empty_segments(window.segments);
      detail::restore_original_times(window.segments, SpeechTimeMap(ranges[chunk.audio]));
      for (auto& segment : window.segments) {
        segment.id = static_cast<int64_t>(result.segments.size());
        result.segments.push_back(segment);
      }
      frames_done[chunk.audio] += frames;
      if (progress) {
        progress(
            chunk.audio, window.segments, frames_done[chunk.audio], speech_frames[chunk.audio]);
      }
    }
  }
  for (auto& t : out) {
    t.text = text_of(tokenizer, t.segments);
  }
  return out;
}

} // namespace rotary_attention::whisper
