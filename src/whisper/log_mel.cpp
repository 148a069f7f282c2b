// Whisper's front end over ATen: mel filters, log-mel spectrogram, pad_or_trim.
#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "rotary_attention/whisper/audio.h"

namespace rotary_attention::whisper {

namespace {

// librosa's Slaney mel scale: linear below 1 kHz (200/3 Hz per mel), logarithmic above.
constexpr double kHzPerMel = 200.0 / 3.0;
constexpr double kLogHz = 1000.0;
constexpr double kLogMel = kLogHz / kHzPerMel;
const double kLogStep = std::log(6.4) / 27.0;

double hz_to_mel(double hz) {
  return hz >= kLogHz ? kLogMel + std::log(hz / kLogHz) / kLogStep : hz / kHzPerMel;
}

double mel_to_hz(double mel) {
  return mel >= kLogMel ? kLogHz * std::exp(kLogStep * (mel - kLogMel)) : kHzPerMel * mel;
}

} // namespace

at::Tensor mel_filters(int64_t n_mels) {
  TORCH_CHECK(n_mels > 0, "mel_filters: n_mels must be positive, got ", n_mels);
  const int64_t bins = kFftSize / 2 + 1;
  // n_mels + 2 band edges evenly spaced in mel from 0 Hz to the Nyquist
  // frequency (numpy's linspace: i * step, the last edge exactly the end).
  const double top = hz_to_mel(kSampleRate / 2.0);
  const double step = top / static_cast<double>(n_mels + 1);
  std::vector<double> edges(n_mels + 2);
  for (int64_t i = 0; i < n_mels + 2; ++i) {
    edges[i] = mel_to_hz(i == n_mels + 1 ? top : static_cast<double>(i) * step);
  }
  const double bin_hz = 1.0 / (static_cast<double>(kFftSize) / kSampleRate);
  auto filters = at::zeros({n_mels, bins}, at::kFloat);
  auto f = filters.accessor<float, 2>();
  for (int64_t m = 0; m < n_mels; ++m) {
    // Triangles rising from edge m to m + 1 and falling to m + 2, stored in
    // fp32, then scaled to unit area (Slaney) in double, as librosa does.
    const double rise = edges[m + 1] - edges[m], fall = edges[m + 2] - edges[m + 1];
    const double area = 2.0 / (edges[m + 2] - edges[m]);
    for (int64_t k = 0; k < bins; ++k) {
      const double hz = static_cast<double>(k) * bin_hz;
      const double lower = -(edges[m] - hz) / rise;
      const double upper = (edges[m + 2] - hz) / fall;
      const float weight = static_cast<float>(std::max(0.0, std::min(lower, upper)));
      f[m][k] = static_cast<float>(static_cast<double>(weight) * area);
    }
  }
  return filters;
}

at::Tensor log_mel_spectrogram(const at::Tensor& audio, int64_t n_mels, int64_t padding) {
  TORCH_CHECK(
      audio.defined() && audio.dim() >= 1 && audio.is_floating_point(),
      "log_mel_spectrogram: expected floating-point samples of shape (..., n)");
  TORCH_CHECK(padding >= 0, "log_mel_spectrogram: padding must be >= 0, got ", padding);
  auto samples = padding > 0 ? at::constant_pad_nd(audio, {0, padding}) : audio;
  TORCH_CHECK(
      samples.size(-1) > kFftSize / 2,
      "log_mel_spectrogram: ",
      samples.size(-1),
      " samples are too few for a frame (at least ",
      kFftSize / 2 + 1,
      ")");
  const auto window = at::hann_window(kFftSize, samples.options());
  const auto stft = at::stft(
      samples,
      kFftSize,
      kHopLength,
      kFftSize,
      window,
      /*center=*/true,
      "reflect",
      /*normalized=*/false,
      /*onesided=*/true,
      /*return_complex=*/true);
  const auto magnitudes = at::abs(stft.narrow(-1, 0, stft.size(-1) - 1)).pow(2);
  const auto filters = mel_filters(n_mels).to(magnitudes.device());
  auto log_spec = at::clamp_min(at::matmul(filters, magnitudes), 1e-10).log10();
  log_spec = at::maximum(log_spec, log_spec.max() - 8.0);
  return (log_spec + 4.0) / 4.0;
}

at::Tensor pad_or_trim(const at::Tensor& array, int64_t length) {
  TORCH_CHECK(
      array.defined() && array.dim() >= 1, "pad_or_trim: expected a tensor of shape (..., n)");
  TORCH_CHECK(length >= 0, "pad_or_trim: length must be >= 0, got ", length);
  const int64_t n = array.size(-1);
  if (n > length) {
    return array.narrow(-1, 0, length);
  }
  if (n < length) {
    return at::constant_pad_nd(array, {0, length - n});
  }
  return array;
}

} // namespace rotary_attention::whisper
