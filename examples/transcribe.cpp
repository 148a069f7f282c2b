// The whole Whisper fork from C++: checkpoint and vocabulary in, text out.
//   transcribe fork.pt multilingual.tiktoken speech.wav [float32|int8]
#include <rotary_attention/whisper/audio.h>
#include <rotary_attention/whisper/decoding.h>

#include <iostream>

namespace rw = rotary_attention::whisper;

int main(int argc, char** argv) {
  if (argc != 4 && argc != 5) {
    std::cerr << "usage: transcribe CHECKPOINT VOCABULARY AUDIO [float32|int8]\n";
    return 2;
  }
  auto model = rw::Whisper(rw::WhisperImpl::load(argv[1])); // openai-whisper's checkpoint format
  rw::Tokenizer tokenizer(argv[2], model->dims.num_languages(), model->dims.n_vocab);

  auto audio = rw::load_audio(argv[3]); // mono, 16 kHz
  auto mel = rw::log_mel_spectrogram(rw::pad_or_trim(audio), model->dims.n_mels);

  rw::DecodingOptions options;
  options.language = "en"; // or leave it out: detected
  options.beam_size = 5;
  // The weights a decode step reads: float32, or int8 (quantized once, here).
  const char* compute_type = argc == 5 ? argv[4] : "float32";
  rw::WhisperInference inference(model, rw::compute_type_from_string(compute_type));
  for (const auto& result : rw::decode(inference, tokenizer, mel.unsqueeze(0), options)) {
    std::cout << result.text << "  (" << result.tokens.size() << " tokens, avg_logprob "
              << result.avg_logprob << ", no_speech_prob " << result.no_speech_prob << ")\n";
  }
}
