// rotary-whisper: a Whisper fork's checkpoint and audio files in, text out.
// The first 30 s of each file are decoded as `whisper.decode` decodes
// `log_mel_spectrogram(pad_or_trim(audio))`; options carry openai-whisper's names.
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include <iostream>
#include <sstream>

#include "rotary_attention/whisper/audio.h"
#include "rotary_attention/whisper/decoding.h"

namespace rw = rotary_attention::whisper;

namespace {

std::vector<int64_t> token_list(const std::string& text, const char* what) {
  std::vector<int64_t> tokens;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    size_t used = 0;
    int64_t value = 0;
    try {
      value = std::stoll(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size()) {
      throw CLI::ValidationError(what, "expected comma-separated token ids, got '" + text + "'");
    }
    tokens.push_back(value);
  }
  return tokens;
}

} // namespace

int main(int argc, char** argv) {
  CLI::App app{"Transcribe audio with a Whisper fork built from rotary_attention's layers"};
  std::string model_path, tokenizer_path, output_format = "txt", suppress_tokens = "-1", prompt,
                                          prefix, compute_type = "float32";
  std::vector<std::string> audio_paths;
  rw::DecodingOptions options;
  std::optional<std::string> language;
  std::optional<int64_t> beam_size, sample_len;
  std::optional<double> patience, length_penalty;
  double max_initial_timestamp = 1.0;
  bool without_timestamps = false, keep_blank = false;
  int threads = 0;
  app.add_option("--model", model_path, "checkpoint saved as openai-whisper saves it")->required();
  app.add_option("--tokenizer", tokenizer_path, "the .tiktoken vocabulary (gpt2 or multilingual)")
      ->required();
  app.add_option("--language", language, "language spoken (code or name); detected if not given");
  app.add_option("--task", options.task, "transcribe, or translate into English")
      ->check(CLI::IsMember({"transcribe", "translate"}));
  app.add_option("--beam_size", beam_size, "beams in beam search (greedy if not given)");
  app.add_option(
      "--patience", patience, "beam search patience (finished candidates = beam_size * patience)");
  app.add_option(
      "--length_penalty",
      length_penalty,
      "NMT length penalty alpha in [0, 1]; default: length normalisation");
  app.add_option("--sample_len", sample_len, "maximum tokens to sample (default n_text_ctx / 2)");
  app.add_option(
      "--suppress_tokens",
      suppress_tokens,
      "comma-separated token ids; -1: non-speech symbols; '' none");
  app.add_flag("--without_timestamps", without_timestamps, "text tokens only");
  app.add_option("--max_initial_timestamp", max_initial_timestamp, "seconds; 0 for no limit");
  app.add_flag("--no_suppress_blank", keep_blank, "let the first token be a blank");
  app.add_option("--prompt", prompt, "comma-separated prompt tokens (previous context)");
  app.add_option("--prefix", prefix, "comma-separated prefix tokens (start of this text)");
  app.add_option("--output_format", output_format, "txt (the text) or json (one line per file)")
      ->check(CLI::IsMember({"txt", "json"}));
  app.add_option(
         "--compute_type",
         compute_type,
         "weights a decode step reads: float32, or int8 (quantized per output row)")
      ->check(CLI::IsMember({"float32", "int8"}));
  app.add_option("--threads", threads, "torch's intra-op threads (0: torch's default)");
  app.add_option("audio", audio_paths, "audio files (WAV, FLAC, Ogg, ...)")->required();
  try {
    app.parse(argc, argv);
    options.language = language;
    options.beam_size = beam_size;
    options.patience = patience;
    options.length_penalty = length_penalty;
    options.sample_len = sample_len;
    options.suppress_tokens = suppress_tokens.empty()
                                  ? std::vector<int64_t>{}
                                  : token_list(suppress_tokens, "--suppress_tokens");
    options.without_timestamps = without_timestamps;
    options.max_initial_timestamp = max_initial_timestamp;
    options.suppress_blank = !keep_blank;
    if (!prompt.empty())
      options.prompt = token_list(prompt, "--prompt");
    if (!prefix.empty())
      options.prefix = token_list(prefix, "--prefix");
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (threads > 0) {
    at::set_num_threads(threads);
  }

  std::shared_ptr<rw::WhisperImpl> model;
  std::unique_ptr<rw::Tokenizer> tokenizer;
  std::unique_ptr<rw::WhisperInference> inference;
  try {
    model = rw::WhisperImpl::load(model_path);
    tokenizer = std::make_unique<rw::Tokenizer>(
        tokenizer_path, model->dims.num_languages(), model->dims.n_vocab);
    inference = std::make_unique<rw::WhisperInference>(
        rw::Whisper(model), rw::compute_type_from_string(compute_type));
  } catch (const std::exception& e) {
    const auto* error = dynamic_cast<const c10::Error*>(&e);
    std::cerr << "rotary-whisper: " << (error ? error->what_without_backtrace() : e.what()) << "\n";
    return 2;
  }
  int status = 0;
  for (const auto& path : audio_paths) {
    try {
      const auto audio = rw::load_audio(path);
      const auto mel = rw::log_mel_spectrogram(rw::pad_or_trim(audio), model->dims.n_mels);
      const auto result = rw::decode(*inference, *tokenizer, mel.unsqueeze(0), options).front();
      if (output_format == "json") {
        nlohmann::json line{
            {"file", path},
            {"text", result.text},
            {"tokens", result.tokens},
            {"avg_logprob", result.avg_logprob},
            {"no_speech_prob", result.no_speech_prob},
            {"language", result.language}};
        std::cout << line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
                  << std::endl;
      } else {
        std::cout << result.text << std::endl;
      }
    } catch (const std::exception& e) {
      const auto* error = dynamic_cast<const c10::Error*>(&e);
      std::cerr << "rotary-whisper: " << path << ": "
                << (error ? error->what_without_backtrace() : e.what()) << "\n";
      status = 1;
    }
  }
  return status;
}
