#include <ATen/ATen.h>

#include "cached_text_decoder.h"
#include "rotary_attention/whisper/decoding.h"

namespace rotary_attention::whisper {

ComputeType compute_type_from_string(const std::string& name) {
  if (name == "float32") {
    return ComputeType::kFloat32;
  }
  TORCH_CHECK(name == "int8", "compute_type: expected \"float32\" or \"int8\", got \"", name, "\"");
  return ComputeType::kInt8;
}

WhisperInference::WhisperInference(Whisper model, ComputeType compute_type, bool own_caches)
    : model_(std::move(model)), compute_type_(compute_type), cache_(model_->dims.n_text_ctx) {
  if (own_caches && detail::CachedTextDecoder::supports(*model_->decoder)) {
    cached_ = std::make_unique<detail::CachedTextDecoder>(model_->decoder, compute_type);
    return;
  }
  TORCH_CHECK(
      compute_type == ComputeType::kFloat32,
      "WhisperInference: compute_type int8 needs the decoder's own caches: an fp32 CPU model in "
      "eval mode whose attention layers have the default options (sdpa, LayerNorm, relative "
      "positions)");
  // A beam reads its audio's keys and values once per step, not once per row.
  cache_.set_shared_keys_read_once(true);
}

WhisperInference::~WhisperInference() = default;

at::Tensor WhisperInference::logits(const at::Tensor& tokens, const at::Tensor& audio_features) {
  const int64_t rows = tokens.size(0), n_audio = audio_features.size(0);
  TORCH_CHECK(
      n_audio > 0 && rows % n_audio == 0,
      "WhisperInference: ",
      rows,
      " rows of tokens for ",
      n_audio,
      " audios");
  if (cached_) {
    return cached_->logits(tokens, audio_features);
  }
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

at::Tensor WhisperInference::logits_at(
    const at::Tensor& tokens,
    const at::Tensor& audio_features,
    const std::vector<int64_t>& positions) {
  if (cached_ && audio_features.size(0) > 0 && tokens.size(0) % audio_features.size(0) == 0) {
    check_positions(positions, tokens.size(-1));
    return cached_->logits(tokens, audio_features, positions);
  }
  return DecoderInference::logits_at(tokens, audio_features, positions);
}

void WhisperInference::reorder(const std::vector<int64_t>& source_rows) {
  const auto source = at::tensor(source_rows, at::kLong);
  if (cached_) {
    cached_->reorder(source);
  } else {
    cache_.reorder(source);
  }
}

void WhisperInference::reset() {
  if (cached_) {
    cached_->reset();
  }
  cache_.clear();
  features_ = at::Tensor();
}

} // namespace rotary_attention::whisper
