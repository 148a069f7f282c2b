#include <ATen/ATen.h>

#include "rotary_attention/whisper/decoding.h"

namespace rotary_attention::whisper {

WhisperInference::WhisperInference(Whisper model)
    : model_(std::move(model)), cache_(model_->dims.n_text_ctx) {
  // A beam reads its audio's keys and values once per step, not once per row.
  cache_.set_shared_keys_read_once(true);
}

at::Tensor WhisperInference::logits(const at::Tensor& tokens, const at::Tensor& audio_features) {
  const int64_t rows = tokens.size(0), n_audio = audio_features.size(0);
  TORCH_CHECK(
      n_audio > 0 && rows % n_audio == 0,
      "WhisperInference: ",
      rows,
      " rows of tokens for ",
      n_audio,
      " audios");
  // One audio's features serve its whole beam (the cache keeps batch-1 audio
  // keys for every row); several audios with beams get a row each.
  const at::Tensor* features = &audio_features;
  if (n_audio > 1 && rows != n_audio) {
    if (!features_.defined()) {
      features_ = audio_features.repeat_interleave(rows / n_audio, 0);
    }
    features = &features_;
  }
  return model_->decoder->forward(tokens, *features, &cache_);
}

void WhisperInference::reorder(const std::vector<int64_t>& source_rows) {
  cache_.reorder(at::tensor(source_rows, at::kLong));
}

void WhisperInference::reset() {
  cache_.clear();
  features_ = at::Tensor();
}

} // namespace rotary_attention::whisper
