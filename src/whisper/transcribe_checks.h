#pragma once
// What transcribe and the batched pipeline refuse, in one place.

#include <c10/util/Exception.h>

#include <cmath>

#include "rotary_attention/whisper/model.h"
#include "rotary_attention/whisper/transcribe.h"

namespace rotary_attention::whisper::detail {

inline void check_options(const TranscribeOptions& o) {
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

inline void check_audio(const at::Tensor& audio) {
  TORCH_CHECK(
      audio.dim() == 1 && audio.is_floating_point(),
      "transcribe: expected audio as 1-D floating-point 16-kHz samples, got ",
      audio.scalar_type(),
      " of shape ",
      audio.sizes());
}

inline void check_alignment_heads(const WhisperImpl& model, const TranscribeOptions& options) {
  TORCH_CHECK(
      !options.word_timestamps || !model.alignment_heads().empty(),
      "transcribe: word_timestamps needs the model's alignment heads, and it has none (set them "
      "with set_alignment_heads)");
}

} // namespace rotary_attention::whisper::detail
