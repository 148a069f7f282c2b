#pragma once

#include <ATen/core/Tensor.h>

#include <string>

#include "rotary_attention/detail/keep_linked.h"

namespace rotary_attention::whisper {

/// Whisper's audio constants: 16 kHz, 25 ms windows every 10 ms, 30 s chunks.
constexpr int64_t kSampleRate = 16000;
constexpr int64_t kFftSize = 400;
constexpr int64_t kHopLength = 160;
constexpr int64_t kChunkSamples = 30 * kSampleRate;
constexpr int64_t kChunkFrames = kChunkSamples / kHopLength;

/// librosa's Slaney-style mel filterbank for 16 kHz and a 400-point FFT
/// (`librosa.filters.mel(sr=16000, n_fft=400, n_mels=n_mels)`, the values in
/// openai-whisper's `assets/mel_filters.npz`): (n_mels, 201) fp32.
at::Tensor mel_filters(int64_t n_mels);

/// Whisper's `log_mel_spectrogram(audio, n_mels, padding)`: 16-kHz samples
/// (..., n) -> (..., n_mels, n / 160) with `at::stft` (Hann window), power,
/// mel filters, log10 clamped at 1e-10, floored at max - 8, then (x + 4) / 4.
at::Tensor log_mel_spectrogram(const at::Tensor& audio, int64_t n_mels = 80, int64_t padding = 0);

/// Whisper's `pad_or_trim`: the last dimension zero-padded or cut to `length`.
at::Tensor pad_or_trim(const at::Tensor& array, int64_t length = kChunkSamples);

/// Reads an audio file (any format libsndfile reads: WAV, FLAC, Ogg, MP3 with
/// libsndfile >= 1.1, ...) as mono fp32 samples at `sample_rate`: channels
/// averaged, resampled with libsoxr (high quality) when the file's rate
/// differs. An unreadable, unsupported or empty file is an error naming it.
at::Tensor load_audio(const std::string& path, int64_t sample_rate = kSampleRate);

} // namespace rotary_attention::whisper
