#pragma once
// The language of a window, as whisper.transcribe detects it: a greedy
// lang_id pass over its audio features, with the caller's other options.

#include "rotary_attention/whisper/decoding.h"

namespace rotary_attention::whisper::detail {

inline std::string detect_language(
    WhisperInference& inference,
    const Tokenizer& tokenizer,
    const at::Tensor& features,
    const DecodingOptions& decoding) {
  DecodingOptions detect = decoding;
  detect.task = "lang_id";
  detect.temperature = 0;
  detect.beam_size.reset(), detect.best_of.reset(), detect.patience.reset();
  return decode(inference, tokenizer, features, detect).front().language;
}

} // namespace rotary_attention::whisper::detail
