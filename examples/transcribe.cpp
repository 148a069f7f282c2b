// The whole Whisper fork from C++: checkpoint and vocabulary in, text out.
//   transcribe fork.pt multilingual.tiktoken speech.wav
#include <rotary_attention/whisper/audio.h>
#include <rotary_attention/whisper/decoding.h>

#include <iostream>

namespace rw = rotary_attention::whisper;

int main(int argc, char** argv) {
  if (argc != 4) {
    std::cerr << "usage: transcribe CHECKPOINT VOCABULARY AUDIO\n";
    return 2;
  }
  auto model = rw::Whisper(rw::WhisperImpl::load(argv[1])); // openai-whisper's checkpoint format
  rw::Tokenizer tokenizer(argv[2], model->dims.num_languages(), model->dims.n_vocab);

  auto audio = rw::load_audio(argv[3]); // mono, 16 kHz
  auto mel = rw::log_mel_spectrogram(rw::pad_or_trim(audio), model->dims.n_mels);

  rw::DecodingOptions options;
  options.language = "en"; // or leave it out: detected
  options.beam_size = 5;
  for (const auto& result : rw::decode(model, tokenizer, mel.unsqueeze(0), options)) {
    std::cout << result.text << "  (" << result.tokens.size() << " tokens, avg_logprob "
              << result.avg_logprob << ", no_speech_prob " << result.no_speech_prob << ")\n";
  }
}
