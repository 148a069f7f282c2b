// rotary-whisper: a Whisper checkpoint (a fork's, or one of Whisper's own) and
// audio files in, transcripts out, as openai-whisper's `whisper` command
// writes them: each file transcribed whole (`whisper.transcribe`), its
// segments printed, and txt, vtt, srt, tsv and json files written into
// --output_dir. Options carry whisper's command-line names and defaults.
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <CLI/CLI.hpp>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <type_traits>

#include "rotary_attention/whisper/audio.h"
#include "rotary_attention/whisper/decoding.h"
#include "rotary_attention/whisper/tokenizer.h"
#include "rotary_attention/whisper/transcribe.h"
#include "rotary_attention/whisper/writers.h"

namespace rw = rotary_attention::whisper;
namespace fs = std::filesystem;

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
      throw CLI::ValidationError(what, "expected comma-separated integers, got '" + text + "'");
    }
    tokens.push_back(value);
  }
  return tokens;
}

std::vector<double> seconds_list(const std::string& text) {
  std::vector<double> values;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    try {
      size_t used = 0;
      values.push_back(std::stod(item, &used));
      if (used != item.size()) {
        throw std::invalid_argument(item);
      }
    } catch (const std::exception&) {
      throw CLI::ValidationError(
          "--clip_timestamps", "expected comma-separated seconds, got '" + text + "'");
    }
  }
  return values;
}

// whisper's optional_float / optional_int: "None" or a number.
template <class T>
std::optional<T> optional_number(const std::string& text, const char* what) {
  if (text == "None") {
    return std::nullopt;
  }
  try {
    size_t used = 0;
    const T value = std::is_integral_v<T> ? static_cast<T>(std::stoll(text, &used))
                                          : static_cast<T>(std::stod(text, &used));
    if (used == text.size()) {
      return value;
    }
  } catch (const std::exception&) {
  }
  throw CLI::ValidationError(what, "expected a number or None, got '" + text + "'");
}

// whisper's str2bool: exactly "True" or "False".
bool str2bool(const std::string& text, const char* what) {
  if (text == "True" || text == "False") {
    return text == "True";
  }
  throw CLI::ValidationError(what, "expected True or False, got '" + text + "'");
}

std::string message_of(const std::exception& e) {
  const auto* error = dynamic_cast<const c10::Error*>(&e);
  return error ? error->what_without_backtrace() : e.what();
}

// Where openai-whisper's vocabularies may lie when --tokenizer is not given
// (rw::find_vocabulary looks beside the checkpoint first): RA_WHISPER_ASSETS,
// or the openai-whisper installed beside this command.
std::vector<std::string> vocabulary_folders() {
  std::vector<std::string> folders;
  // (Set by the Python console script: the installed openai-whisper's assets.)
  if (const char* assets = std::getenv("RA_WHISPER_ASSETS")) {
    folders.emplace_back(assets);
  }
  std::error_code error;
  const fs::path self = fs::read_symlink("/proc/self/exe", error);
  if (!error) {
    // site-packages/rotary_attention/bin/rotary-whisper, or a venv's bin/.
    folders.push_back(
        (self.parent_path().parent_path().parent_path() / "whisper" / "assets").string());
    const fs::path lib = self.parent_path().parent_path() / "lib";
    if (fs::is_directory(lib, error)) {
      for (const auto& entry : fs::directory_iterator(lib, error)) {
        folders.push_back((entry.path() / "site-packages" / "whisper" / "assets").string());
      }
    }
  }
  return folders;
}

// --vad_parameters "threshold=0.6,min_silence_duration_ms=500": VadOptions by name.
rw::VadOptions vad_options(const std::string& text) {
  rw::VadOptions options;
  std::stringstream in(text);
  std::string item;
  while (std::getline(in, item, ',')) {
    const size_t equals = item.find('=');
    const std::string name = item.substr(0, equals);
    const std::string value = equals == std::string::npos ? "" : item.substr(equals + 1);
    bool known = false;
    rw::VadOptions::fields([&](const char* field, auto member) {
      if (name != field) {
        return;
      }
      known = true;
      using Value = std::remove_reference_t<decltype(options.*member)>;
      if constexpr (std::is_same_v<Value, bool>) {
        options.*member = str2bool(value, "--vad_parameters");
      } else if constexpr (std::is_same_v<Value, std::optional<double>>) {
        options.*member = optional_number<double>(value, "--vad_parameters");
      } else {
        const auto number = optional_number<Value>(value, "--vad_parameters");
        if (!number) {
          throw CLI::ValidationError("--vad_parameters", name + " needs a number");
        }
        options.*member = *number;
      }
    });
    if (!known) {
      throw CLI::ValidationError(
          "--vad_parameters", "expected name=value,... of VadOptions, got '" + item + "'");
    }
  }
  return options;
}

} // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "Transcribe audio files with a Whisper checkpoint (a fork built from rotary_attention's "
      "layers, or Whisper's own) in C++"};
  std::string model_path, tokenizer_path,
      output_dir = ".", output_format = "all", suppress_tokens = "-1", prompt, prefix,
      compute_type = "float32", verbose = "True", condition = "True", carry = "False",
      increment = "0.2", compression = "2.4", logprob = "-1.0", no_speech = "0.6", best_of = "5",
      beam_size = "5", patience = "None", clip_timestamps = "0", fp16 = "True",
      word_timestamps = "False", highlight_words = "False", max_line_width = "None",
      max_line_count = "None", max_words_per_line = "None", hallucination_silence = "None",
      alignment_heads, vad_filter = "False", vad_model, vad_parameters;
  std::vector<std::string> audio_paths;
  rw::TranscribeOptions options;
  rw::WriterOptions writer;
  std::optional<std::string> language, initial_prompt, length_penalty;
  std::optional<int64_t> sample_len;
  std::optional<uint64_t> seed;
  std::optional<int64_t> batch_size;
  double temperature = 0.0, max_initial_timestamp = 1.0;
  bool without_timestamps = false, keep_blank = false;
  int threads = 0;
  app.add_option("--model", model_path, "checkpoint saved as openai-whisper saves it")->required();
  app.add_option(
      "--tokenizer",
      tokenizer_path,
      "the .tiktoken vocabulary; default: gpt2 or multilingual.tiktoken beside the checkpoint or "
      "in an installed openai-whisper");
  app.add_option("--output_dir,-o", output_dir, "directory to save the outputs")
      ->capture_default_str();
  app.add_option("--output_format,-f", output_format, "format of the output file")
      ->check(CLI::IsMember({"txt", "vtt", "srt", "tsv", "json", "all"}))
      ->capture_default_str();
  app.add_option("--verbose", verbose, "print progress and debug messages (True or False)")
      ->capture_default_str();
  app.add_option("--task", options.decoding.task, "transcribe, or translate into English")
      ->check(CLI::IsMember({"transcribe", "translate"}))
      ->capture_default_str();
  app.add_option("--language", language, "language spoken (code or name); detected if not given");
  app.add_option("--temperature", temperature, "temperature to use for sampling")
      ->capture_default_str();
  app.add_option("--best_of", best_of, "candidates when sampling with non-zero temperature")
      ->capture_default_str();
  app.add_option("--beam_size", beam_size, "beams in beam search, when temperature is zero")
      ->capture_default_str();
  app.add_option("--patience", patience, "beam search patience (None: 1.0)")->capture_default_str();
  app.add_option(
      "--length_penalty",
      length_penalty,
      "NMT length penalty alpha in [0, 1]; default: length normalisation");
  app.add_option(
         "--suppress_tokens",
         suppress_tokens,
         "comma-separated token ids; -1: non-speech symbols; '' none")
      ->capture_default_str();
  app.add_option(
      "--initial_prompt", initial_prompt, "text to provide as a prompt for the first window");
  app.add_option(
         "--carry_initial_prompt",
         carry,
         "the initial prompt opens every window's prompt (True/False)")
      ->capture_default_str();
  app.add_option(
         "--condition_on_previous_text",
         condition,
         "the previous output is the next window's prompt (True/False)")
      ->capture_default_str();
  app.add_option("--fp16", fp16, "accepted for whisper's sake; the CPU computes in fp32")
      ->capture_default_str();
  app.add_option(
         "--temperature_increment_on_fallback",
         increment,
         "temperature increase on fallback (None: no fallback)")
      ->capture_default_str();
  app.add_option(
         "--compression_ratio_threshold", compression, "above it a window fails (None: no check)")
      ->capture_default_str();
  app.add_option("--logprob_threshold", logprob, "below it a window fails (None: no check)")
      ->capture_default_str();
  app.add_option(
         "--no_speech_threshold",
         no_speech,
         "above it (and a failing log-probability) a window is silence")
      ->capture_default_str();
  app.add_option(
         "--clip_timestamps",
         clip_timestamps,
         "comma-separated start,end,... seconds of clips to process")
      ->capture_default_str();
  app.add_option(
      "--seed", seed, "seed of sampling's generator (default: torch's default generator)");
  app.add_option(
      "--sample_len", sample_len, "maximum tokens to sample per window (default n_text_ctx / 2)");
  app.add_flag(
      "--without_timestamps", without_timestamps, "text tokens only (one segment per window)");
  app.add_option("--max_initial_timestamp", max_initial_timestamp, "seconds; 0 for no limit")
      ->capture_default_str();
  app.add_flag("--no_suppress_blank", keep_blank, "let the first token be a blank");
  app.add_option("--prompt", prompt, "comma-separated prompt token ids for the first window");
  app.add_option("--prefix", prefix, "comma-separated prefix token ids for every window");
  app.add_option(
         "--compute_type",
         compute_type,
         "weights a decode step reads: float32, or int8 (quantized per output row)")
      ->check(CLI::IsMember({"float32", "int8"}))
      ->capture_default_str();
  app.add_option(
         "--word_timestamps",
         word_timestamps,
         "word-level timestamps, from the cross-attention and DTW (True/False)")
      ->capture_default_str();
  app.add_option(
         "--prepend_punctuations",
         options.prepend_punctuations,
         "with word timestamps, these marks join the next word")
      ->capture_default_str();
  app.add_option(
         "--append_punctuations",
         options.append_punctuations,
         "with word timestamps, these marks join the previous word")
      ->capture_default_str();
  app.add_option(
         "--highlight_words",
         highlight_words,
         "(with word timestamps) underline each word as it is spoken in srt and vtt")
      ->capture_default_str();
  app.add_option(
         "--max_line_width",
         max_line_width,
         "(with word timestamps) characters in a line before it breaks")
      ->capture_default_str();
  app.add_option("--max_line_count", max_line_count, "(with word timestamps) lines in a subtitle")
      ->capture_default_str();
  app.add_option(
         "--max_words_per_line",
         max_words_per_line,
         "(with word timestamps, no effect with --max_line_width) words in a line")
      ->capture_default_str();
  app.add_option(
         "--hallucination_silence_threshold",
         hallucination_silence,
         "(with word timestamps) skip silences longer than this many seconds before a likely "
         "hallucination")
      ->capture_default_str();
  app.add_option(
      "--alignment_heads",
      alignment_heads,
      "cross-attention heads word timestamps follow: an openai model's name (tiny.en, base, "
      "large-v3, ...) or layer,head;layer,head;... (default: openai's for its releases, else the "
      "last half of the decoder's layers)");
  app.add_option(
         "--vad_filter",
         vad_filter,
         "transcribe only the speech Silero VAD finds, times mapped back (True/False)")
      ->capture_default_str();
  app.add_option(
      "--vad_model",
      vad_model,
      "Silero VAD's TorchScript file (default: silero_vad.jit of an installed silero-vad)");
  app.add_option(
      "--vad_parameters",
      vad_parameters,
      "faster-whisper's VadOptions as name=value,... (threshold, neg_threshold, "
      "min_speech_duration_ms, max_speech_duration_s, min_silence_duration_ms, speech_pad_ms)");
  app.add_option(
      "--batch_size",
      batch_size,
      "faster-whisper's batched pipeline: the speech chunks (up to 30 s, Silero VAD) of all the "
      "files decoded this many at a time, each once at the first temperature, no previous text");
  app.add_option("--threads", threads, "torch's intra-op threads (0: torch's default)")
      ->capture_default_str();
  app.add_option("audio", audio_paths, "audio files (WAV, FLAC, Ogg, MP3, ...)")->required();
  bool print_segments = true;
  try {
    app.parse(argc, argv);
    auto& d = options.decoding;
    d.language = language;
    print_segments = str2bool(verbose, "--verbose");
    str2bool(fp16, "--fp16");
    options.condition_on_previous_text = str2bool(condition, "--condition_on_previous_text");
    options.carry_initial_prompt = str2bool(carry, "--carry_initial_prompt");
    options.initial_prompt = initial_prompt;
    options.compression_ratio_threshold =
        optional_number<double>(compression, "--compression_ratio_threshold");
    options.logprob_threshold = optional_number<double>(logprob, "--logprob_threshold");
    options.no_speech_threshold = optional_number<double>(no_speech, "--no_speech_threshold");
    d.best_of = optional_number<int64_t>(best_of, "--best_of");
    d.beam_size = optional_number<int64_t>(beam_size, "--beam_size");
    d.patience = optional_number<double>(patience, "--patience");
    if (length_penalty) {
      d.length_penalty = optional_number<double>(*length_penalty, "--length_penalty");
    }
    d.sample_len = sample_len;
    d.suppress_tokens = suppress_tokens.empty() ? std::vector<int64_t>{}
                                                : token_list(suppress_tokens, "--suppress_tokens");
    d.without_timestamps = without_timestamps;
    d.max_initial_timestamp = max_initial_timestamp;
    d.suppress_blank = !keep_blank;
    if (!prefix.empty()) {
      d.prefix = token_list(prefix, "--prefix");
    }
    options.clip_timestamps = seconds_list(clip_timestamps);
    options.seed = seed;
    // whisper's cli: np.arange(temperature, 1.0 + 1e-6, increment), or the one value.
    const auto step = optional_number<double>(increment, "--temperature_increment_on_fallback");
    options.temperatures.clear();
    if (step) {
      if (!(*step > 0)) {
        throw CLI::ValidationError(
            "--temperature_increment_on_fallback", "expected a positive number or None");
      }
      const auto count = static_cast<int64_t>(std::ceil((1.0 + 1e-6 - temperature) / *step));
      for (int64_t i = 0; i < count; ++i) {
        options.temperatures.push_back(temperature + static_cast<double>(i) * *step);
      }
    } else {
      options.temperatures.push_back(temperature);
    }
    if (options.temperatures.empty()) {
      throw CLI::ValidationError("--temperature", "must be at most 1 with a fallback increment");
    }
    options.word_timestamps = str2bool(word_timestamps, "--word_timestamps");
    options.vad_filter = str2bool(vad_filter, "--vad_filter");
    if (!vad_parameters.empty()) {
      options.vad_parameters = vad_options(vad_parameters);
    }
    writer.highlight_words = str2bool(highlight_words, "--highlight_words");
    writer.max_line_width = optional_number<int64_t>(max_line_width, "--max_line_width");
    writer.max_line_count = optional_number<int64_t>(max_line_count, "--max_line_count");
    writer.max_words_per_line =
        optional_number<int64_t>(max_words_per_line, "--max_words_per_line");
    options.hallucination_silence_threshold =
        optional_number<double>(hallucination_silence, "--hallucination_silence_threshold");
    // whisper's cli: the word options need word timestamps.
    if (!options.word_timestamps) {
      for (const auto& [name, given] : std::initializer_list<std::pair<const char*, bool>>{
               {"--highlight_words", writer.highlight_words},
               {"--max_line_count", writer.max_line_count.has_value()},
               {"--max_line_width", writer.max_line_width.has_value()},
               {"--max_words_per_line", writer.max_words_per_line.has_value()}}) {
        if (given) {
          throw CLI::ValidationError(name, "requires --word_timestamps True");
        }
      }
    }
    if (writer.max_words_per_line && writer.max_line_width) {
      std::cerr << "rotary-whisper: warning: --max_words_per_line has no effect with "
                   "--max_line_width\n";
    }
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
    if (tokenizer_path.empty()) {
      tokenizer_path = rw::find_vocabulary(
          model_path, model->dims.is_multilingual(), vocabulary_folders(), "--tokenizer PATH");
    }
    tokenizer = std::make_unique<rw::Tokenizer>(
        tokenizer_path, model->dims.num_languages(), model->dims.n_vocab);
    inference = std::make_unique<rw::WhisperInference>(
        rw::Whisper(model), rw::compute_type_from_string(compute_type));
    if (!prompt.empty()) {
      options.decoding.prompt = token_list(prompt, "--prompt");
    }
    options.batch_size = batch_size;
    if (options.vad_filter || options.batch_size) {
      if (vad_model.empty()) {
        const char* found = std::getenv("RA_SILERO_VAD");
        if (found == nullptr || !fs::exists(found)) {
          throw std::runtime_error(
              "--vad_filter True and --batch_size need Silero VAD's model: pip install "
              "silero-vad==6.2.3, or give --vad_model PATH (silero_vad.jit)");
        }
        vad_model = found;
      }
      options.vad_model = std::make_shared<rw::SileroVad>(vad_model);
    }
    if (!alignment_heads.empty()) {
      model->set_alignment_heads(rw::parse_alignment_heads(alignment_heads, model->dims));
    }
    fs::create_directories(output_dir);
  } catch (const std::exception& e) {
    std::cerr << "rotary-whisper: " << message_of(e) << "\n";
    return 2;
  }
  int status = 0;
  if (options.batch_size) {
    // Every file's speech chunks batched together; a file that cannot be read
    // is reported, the others transcribed.
    std::vector<std::string> paths;
    std::vector<at::Tensor> audios;
    for (const auto& path : audio_paths) {
      try {
        audios.push_back(rw::load_audio(path));
        paths.push_back(path);
      } catch (const std::exception& e) {
        std::cerr << "rotary-whisper: " << path << ": " << message_of(e) << "\n";
        status = 1;
      }
    }
    try {
      rw::BatchedProgress progress;
      if (print_segments) {
        progress = [](size_t, const std::vector<rw::Segment>& segments, int64_t, int64_t) {
          for (const auto& s : segments) {
            std::cout << "[" << rw::format_timestamp(s.start) << " --> "
                      << rw::format_timestamp(s.end) << "] " << s.text << std::endl;
          }
        };
      }
      const auto results =
          rw::transcribe_batched(*inference, *tokenizer, audios, options, progress);
      for (size_t i = 0; i < paths.size(); ++i) {
        rw::write_transcription(results[i], paths[i], output_dir, output_format, writer);
      }
    } catch (const std::exception& e) {
      std::cerr << "rotary-whisper: " << message_of(e) << "\n";
      status = 1;
    }
    return status;
  }
  for (const auto& path : audio_paths) {
    try {
      const auto audio = rw::load_audio(path);
      rw::TranscribeProgress progress;
      if (print_segments) {
        progress = [](const std::vector<rw::Segment>& segments, int64_t, int64_t) {
          for (const auto& s : segments) {
            std::cout << "[" << rw::format_timestamp(s.start) << " --> "
                      << rw::format_timestamp(s.end) << "] " << s.text << std::endl;
          }
        };
      }
      const auto result = rw::transcribe(*inference, *tokenizer, audio, options, progress);
      rw::write_transcription(result, path, output_dir, output_format, writer);
    } catch (const std::exception& e) {
      std::cerr << "rotary-whisper: " << path << ": " << message_of(e) << "\n";
      status = 1;
    }
  }
  return status;
}
