// Audio files in: libsndfile decodes, libsoxr resamples, channels averaged.
#include <ATen/ATen.h>
#include <sndfile.h>
#include <soxr.h>

#include <memory>
#include <vector>

#include "rotary_attention/whisper/audio.h"

namespace rotary_attention::whisper {

at::Tensor load_audio(const std::string& path, int64_t sample_rate) {
  TORCH_CHECK(sample_rate > 0, "load_audio: sample_rate must be positive, got ", sample_rate);
  SF_INFO info{};
  std::unique_ptr<SNDFILE, int (*)(SNDFILE*)> file(
      sf_open(path.c_str(), SFM_READ, &info), sf_close);
  TORCH_CHECK(
      file != nullptr, "load_audio: cannot read '", path, "' as audio: ", sf_strerror(nullptr));
  TORCH_CHECK(
      info.frames > 0 && info.channels > 0, "load_audio: '", path, "' holds no audio (0 samples)");
  // Integer formats read as float are scaled by 1/32768 for 16 bits: the
  // samples Whisper's ffmpeg call gives for a 16-bit file.
  std::vector<float> interleaved(static_cast<size_t>(info.frames) * info.channels);
  const sf_count_t got = sf_readf_float(file.get(), interleaved.data(), info.frames);
  TORCH_CHECK(
      got > 0,
      "load_audio: '",
      path,
      "': no samples could be decoded (",
      sf_strerror(file.get()),
      ")");
  auto mono = at::empty({got}, at::kFloat);
  float* m = mono.data_ptr<float>();
  for (sf_count_t i = 0; i < got; ++i) {
    double sum = 0;
    for (int c = 0; c < info.channels; ++c) {
      sum += interleaved[static_cast<size_t>(i) * info.channels + c];
    }
    m[i] = static_cast<float>(sum / info.channels);
  }
  if (info.samplerate == sample_rate) {
    return mono;
  }
  const double ratio = static_cast<double>(sample_rate) / info.samplerate;
  const size_t capacity = static_cast<size_t>(static_cast<double>(got) * ratio) + 16;
  auto out = at::empty({static_cast<int64_t>(capacity)}, at::kFloat);
  size_t written = 0;
  const soxr_quality_spec_t quality = soxr_quality_spec(SOXR_HQ, 0);
  const soxr_error_t error = soxr_oneshot(
      info.samplerate,
      static_cast<double>(sample_rate),
      1,
      m,
      static_cast<size_t>(got),
      nullptr,
      out.data_ptr<float>(),
      capacity,
      &written,
      nullptr,
      &quality,
      nullptr);
  TORCH_CHECK(error == nullptr, "load_audio: resampling '", path, "' failed: ", error);
  TORCH_CHECK(written > 0, "load_audio: '", path, "' is too short to resample");
  return out.narrow(0, 0, static_cast<int64_t>(written)).clone();
}

} // namespace rotary_attention::whisper
