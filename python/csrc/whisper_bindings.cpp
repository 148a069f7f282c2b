// rotary_attention._C: the Whisper fork in C++ (model, front end, tokenizer,
// decoding loop). The Python face (options, results) is
// python/rotary_attention/whisper_model.py.
#include <ATen/CPUGeneratorImpl.h>
#include <pybind11/stl.h>
#include <torch/python.h>

#include "../../src/whisper/dense_linear.h"
#include "../../src/whisper/few_rows_linear.h"
#include "../../src/whisper/token_search.h"
#include "rotary_attention/whisper/audio.h"
#include "rotary_attention/whisper/decoding.h"
#include "rotary_attention/whisper/transcribe.h"
#include "rotary_attention/whisper/word_timing.h"
#include "rotary_attention/whisper/writers.h"

namespace py = pybind11;
namespace rw = rotary_attention::whisper;

namespace {

// Options set by name from a dict, through each struct's `fields()`: an
// unknown name is a TypeError naming the accepted ones.
template <class Options>
Options options_from(const py::dict& given, const char* what) {
  Options options;
  for (const auto& [key, value] : given) {
    const auto name = py::cast<std::string>(key);
    bool known = false;
    Options::fields([&](const char* field, auto member) {
      if (name == field) {
        known = true;
        using Value = std::remove_reference_t<decltype(options.*member)>;
        try {
          options.*member = py::cast<Value>(value);
        } catch (const py::cast_error&) {
          const std::string given = py::cast<std::string>(py::repr(value));
          throw py::type_error(std::string(what) + "(): option " + name + " got " + given);
        }
      }
    });
    if (!known) {
      std::string names;
      Options::fields([&](const char* field, auto) {
        names += std::string(names.empty() ? "" : ", ") + field;
      });
      throw py::type_error(
          std::string(what) + "() got an unexpected option " + name + " (accepted: " + names + ")");
    }
  }
  return options;
}

template <class Options>
py::dict defaults() {
  const Options options;
  py::dict out;
  Options::fields([&](const char* name, auto member) { out[name] = py::cast(options.*member); });
  return out;
}

// A result struct as whisper's dict; its text is valid UTF-8 (the tokenizer
// replaced invalid bytes by U+FFFD).
template <class Result>
py::dict as_dict(const Result& result) {
  py::dict out;
  Result::fields([&](const char* name, auto member) { out[name] = py::cast(result.*member); });
  return out;
}

// Speech ranges as silero-vad's dicts ({"start": sample, "end": sample}).
py::list speech_dicts(const std::vector<rw::SpeechRange>& ranges) {
  py::list out;
  for (const auto& r : ranges) {
    py::dict d;
    d["start"] = r.start;
    d["end"] = r.end;
    out.append(d);
  }
  return out;
}

// A segment as whisper's dict: "words" last, and only with word timestamps.
py::dict segment_dict(const rw::Segment& segment) {
  py::dict out = as_dict(segment);
  if (segment.words) {
    py::list words;
    for (const auto& word : *segment.words) {
      words.append(as_dict(word));
    }
    out["words"] = words;
  }
  return out;
}

// whisper.transcribe's result dict.
py::dict transcription_dict(const rw::Transcription& result) {
  py::list segments;
  for (const auto& segment : result.segments) {
    segments.append(segment_dict(segment));
  }
  py::dict out;
  out["text"] = py::str(result.text);
  out["segments"] = segments;
  out["language"] = result.language;
  return out;
}

// Fields read by name from a dict (whisper's keys) into a struct.
template <class Result>
Result from_dict(const py::handle& dict) {
  Result result;
  Result::fields([&](const char* name, auto member) {
    using Value = std::remove_reference_t<decltype(result.*member)>;
    result.*member = py::cast<Value>(dict[name]);
  });
  return result;
}

// whisper.transcribe's keywords: TranscribeOptions' own, the decoding
// options, and faster-whisper's vad_parameters (a dict).
rw::TranscribeOptions transcribe_options(
    const py::dict& options, const std::shared_ptr<rw::SileroVad>& vad) {
  // Options of both structs, each by its own name; the VAD's apart.
  py::dict own, decoding, vad_parameters;
  bool has_vad_parameters = false;
  bool found = false;
  const auto is_own = [&](const std::string& key) {
    found = false;
    rw::TranscribeOptions::fields([&](const char* name, auto) { found |= key == name; });
    return found;
  };
  for (const auto& [key, value] : options) {
    const auto name = py::cast<std::string>(key);
    if (name == "vad_parameters") {
      if (!value.is_none()) {
        vad_parameters = py::cast<py::dict>(value);
        has_vad_parameters = true;
      }
      continue;
    }
    (is_own(name) ? own : decoding)[key] = value;
  }
  auto o = options_from<rw::TranscribeOptions>(own, "transcribe");
  o.decoding = options_from<rw::DecodingOptions>(decoding, "transcribe");
  if (has_vad_parameters) {
    o.vad_parameters = options_from<rw::VadOptions>(vad_parameters, "vad_parameters");
  }
  o.vad_model = vad;
  return o;
}

} // namespace

void bind_whisper(py::module& m) {
  py::class_<rw::Tokenizer>(m, "_WhisperTokenizer")
      .def(
          py::init<const std::string&, int64_t, std::optional<int64_t>>(),
          py::arg("path"),
          py::arg("num_languages"),
          py::arg("n_vocab") = std::nullopt)
      .def("decode", &rw::Tokenizer::decode)
      .def("encode", &rw::Tokenizer::encode, py::arg("text"))
      .def("decode_with_timestamps", &rw::Tokenizer::decode_with_timestamps)
      .def(
          "encode_piece",
          [](const rw::Tokenizer& t, const py::bytes& piece) {
            return t.encode_piece(std::string(piece));
          })
      .def("non_speech_tokens", &rw::Tokenizer::non_speech_tokens)
      .def(
          "split_to_word_tokens",
          &rw::Tokenizer::split_to_word_tokens,
          py::arg("tokens"),
          py::arg("language"))
      .def("sot_sequence", &rw::Tokenizer::sot_sequence)
      .def_property_readonly("n_vocab", &rw::Tokenizer::n_vocab)
      .def_property_readonly("eot", &rw::Tokenizer::eot)
      .def_property_readonly("sot", &rw::Tokenizer::sot)
      .def_property_readonly("no_speech", &rw::Tokenizer::no_speech)
      .def_property_readonly("timestamp_begin", &rw::Tokenizer::timestamp_begin);

  py::class_<rw::WhisperImpl, std::shared_ptr<rw::WhisperImpl>>(m, "_WhisperModel")
      .def_static(
          "load", &rw::WhisperImpl::load, py::arg("path"), py::call_guard<py::gil_scoped_release>())
      .def_static(
          "from_state_dict",
          [](const std::map<std::string, int64_t>& dims,
             const std::unordered_map<std::string, torch::Tensor>& state) {
            rw::ModelDimensions d;
            for (const auto& [name, field] : rw::ModelDimensions::fields()) {
              const auto it = dims.find(name);
              TORCH_CHECK(it != dims.end(), "Whisper.from_state_dict: dims has no ", name);
              d.*field = it->second;
            }
            py::gil_scoped_release released;
            return rw::WhisperImpl::from_state_dict(d, state);
          },
          py::arg("dims"),
          py::arg("state_dict"))
      .def_property_readonly(
          "dims",
          [](const rw::WhisperImpl& w) {
            const auto& d = w.dims;
            py::dict out;
            for (const auto& [name, field] : rw::ModelDimensions::fields()) {
              out[name] = d.*field;
            }
            return out;
          })
      .def_property(
          "alignment_heads",
          [](const rw::WhisperImpl& w) { return w.alignment_heads(); },
          [](rw::WhisperImpl& w, const py::object& heads) {
            if (py::isinstance<py::str>(heads)) {
              w.set_alignment_heads(
                  rw::openai_alignment_heads(py::cast<std::string>(heads), &w.dims));
            } else {
              w.set_alignment_heads(py::cast<rw::AlignmentHeads>(heads));
            }
          })
      .def(
          "find_alignment",
          [](const std::shared_ptr<rw::WhisperImpl>& w,
             const rw::Tokenizer& tokenizer,
             const std::string& language,
             const std::vector<int64_t>& text_tokens,
             const torch::Tensor& audio_features,
             int64_t num_frames,
             int64_t median_filter_width) {
            std::vector<rw::WordTiming> timings;
            {
              py::gil_scoped_release released;
              rw::Whisper model(w);
              timings = rw::find_alignment(
                  model,
                  tokenizer,
                  language,
                  "transcribe",
                  text_tokens,
                  audio_features,
                  num_frames,
                  median_filter_width);
            }
            py::list out;
            for (const auto& t : timings) {
              py::dict d;
              d["word"] = py::str(t.word);
              d["tokens"] = t.tokens;
              d["start"] = t.start;
              d["end"] = t.end;
              d["probability"] = t.probability;
              out.append(d);
            }
            return out;
          },
          py::arg("tokenizer"),
          py::arg("language"),
          py::arg("text_tokens"),
          py::arg("audio_features"),
          py::arg("num_frames"),
          py::arg("median_filter_width") = 7)
      .def(
          "embed_audio",
          [](const std::shared_ptr<rw::WhisperImpl>& w, const torch::Tensor& mel) {
            torch::NoGradGuard no_grad;
            return w->embed_audio(mel);
          },
          py::call_guard<py::gil_scoped_release>())
      .def(
          "logits",
          [](const std::shared_ptr<rw::WhisperImpl>& w,
             const torch::Tensor& tokens,
             const torch::Tensor& features) {
            torch::NoGradGuard no_grad;
            return w->logits(tokens, features);
          },
          py::call_guard<py::gil_scoped_release>());

  // A decoder's inference made once (int8 weights are quantized then):
  // whisper's `Inference` (logits, rearrange_kv_cache, cleanup_caching) in C++.
  py::class_<rw::WhisperInference>(m, "_WhisperInference")
      .def(
          py::init([](const std::shared_ptr<rw::WhisperImpl>& w,
                      const std::string& compute_type,
                      bool own_caches) {
            return std::make_unique<rw::WhisperInference>(
                rw::Whisper(w), rw::compute_type_from_string(compute_type), own_caches);
          }),
          py::arg("model"),
          py::arg("compute_type") = "float32",
          py::arg("own_caches") = true,
          py::call_guard<py::gil_scoped_release>())
      .def(
          "logits",
          [](rw::WhisperInference& i, const torch::Tensor& tokens, const torch::Tensor& features) {
            torch::NoGradGuard no_grad;
            return i.logits(tokens, features);
          },
          py::arg("tokens"),
          py::arg("audio_features"),
          py::call_guard<py::gil_scoped_release>())
      .def(
          "logits_at",
          [](rw::WhisperInference& i,
             const torch::Tensor& tokens,
             const torch::Tensor& features,
             const std::vector<int64_t>& positions) {
            torch::NoGradGuard no_grad;
            return i.logits_at(tokens, features, positions);
          },
          py::arg("tokens"),
          py::arg("audio_features"),
          py::arg("positions"),
          py::call_guard<py::gil_scoped_release>())
      .def(
          "reorder",
          &rw::WhisperInference::reorder,
          py::arg("source_rows"),
          py::call_guard<py::gil_scoped_release>())
      .def("reset", &rw::WhisperInference::reset)
      .def(
          "decode",
          [](rw::WhisperInference& inference,
             const rw::Tokenizer& tokenizer,
             const torch::Tensor& mel_or_features,
             const py::dict& options) {
            const auto o = options_from<rw::DecodingOptions>(options, "decode");
            std::vector<rw::DecodingResult> results;
            {
              py::gil_scoped_release released;
              results = rw::decode(inference, tokenizer, mel_or_features, o);
            }
            py::list out;
            for (const auto& r : results) {
              out.append(as_dict(r));
            }
            return out;
          },
          py::arg("tokenizer"),
          py::arg("mel_or_features"),
          py::arg("options"))
      .def(
          "transcribe",
          [](rw::WhisperInference& inference,
             const rw::Tokenizer& tokenizer,
             const torch::Tensor& audio,
             const py::dict& options,
             const py::object& progress,
             const std::shared_ptr<rw::SileroVad>& vad) {
            auto o = transcribe_options(options, vad);
            rw::TranscribeProgress report;
            if (!progress.is_none()) {
              report = [&progress](
                           const std::vector<rw::Segment>& segments, int64_t seek, int64_t total) {
                py::gil_scoped_acquire acquired;
                py::list added;
                for (const auto& segment : segments) {
                  added.append(segment_dict(segment));
                }
                progress(added, seek, total);
              };
            }
            rw::Transcription result;
            {
              py::gil_scoped_release released;
              result = rw::transcribe(inference, tokenizer, audio, o, report);
            }
            return transcription_dict(result);
          },
          py::arg("tokenizer"),
          py::arg("audio"),
          py::arg("options"),
          py::arg("progress") = py::none(),
          py::arg("vad") = nullptr)
      .def(
          "transcribe_batched",
          [](rw::WhisperInference& inference,
             const rw::Tokenizer& tokenizer,
             const std::vector<torch::Tensor>& audios,
             const py::dict& options,
             const std::shared_ptr<rw::SileroVad>& vad) {
            const auto o = transcribe_options(options, vad);
            std::vector<rw::Transcription> results;
            {
              py::gil_scoped_release released;
              results = rw::transcribe_batched(inference, tokenizer, audios, o);
            }
            py::list out;
            for (const auto& r : results) {
              out.append(transcription_dict(r));
            }
            return out;
          },
          py::arg("tokenizer"),
          py::arg("audios"),
          py::arg("options"),
          py::arg("vad"));

  py::class_<rw::SileroVad, std::shared_ptr<rw::SileroVad>>(m, "_SileroVad")
      .def(
          py::init<const std::string&>(), py::arg("path"), py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("path", &rw::SileroVad::path)
      .def_property_readonly("runs_windows_together", &rw::SileroVad::runs_windows_together)
      .def(
          "speech_probabilities",
          &rw::SileroVad::speech_probabilities,
          py::arg("audio"),
          py::call_guard<py::gil_scoped_release>())
      .def(
          "speech_timestamps",
          [](rw::SileroVad& vad, const torch::Tensor& audio, const py::dict& options) {
            const auto o = options_from<rw::VadOptions>(options, "speech_timestamps");
            std::vector<rw::SpeechRange> ranges;
            {
              py::gil_scoped_release released;
              ranges = rw::speech_timestamps(vad, audio, o);
            }
            return speech_dicts(ranges);
          },
          py::arg("audio"),
          py::arg("options") = py::dict());
  m.def("_vad_defaults", [] { return defaults<rw::VadOptions>(); });
  m.def(
      "_speech_ranges_from_probabilities",
      [](const std::vector<float>& probabilities, int64_t audio_samples, const py::dict& options) {
        return speech_dicts(
            rw::speech_ranges_from_probabilities(
                probabilities, audio_samples, options_from<rw::VadOptions>(options, "vad")));
      },
      py::arg("probabilities"),
      py::arg("audio_samples"),
      py::arg("options") = py::dict());
  // faster-whisper's SpeechTimestampsMap over `ranges`, for its tests.
  m.def(
      "_original_time",
      [](const std::vector<std::pair<int64_t, int64_t>>& ranges,
         double seconds,
         std::optional<size_t> range,
         bool is_end) {
        std::vector<rw::SpeechRange> speech;
        for (const auto& [start, end] : ranges) {
          speech.push_back({start, end});
        }
        return rw::SpeechTimeMap(speech).original_time(seconds, range, is_end);
      },
      py::arg("ranges"),
      py::arg("seconds"),
      py::arg("range") = std::nullopt,
      py::arg("is_end") = false);

  m.def("_decoding_defaults", [] { return defaults<rw::DecodingOptions>(); });
  m.def("_transcribe_defaults", [] { return defaults<rw::TranscribeOptions>(); });
  m.def("_compression_ratio", &rw::compression_ratio, py::arg("text"));
  // A result dict (whisper's keys) as the writers write it.
  m.def(
      "_format_transcription",
      [](const py::dict& result, const std::string& format, const py::dict& options) {
        rw::Transcription t;
        t.text = py::cast<std::string>(result["text"]);
        t.language = py::cast<std::string>(result["language"]);
        for (const auto& item : result["segments"]) {
          auto segment = from_dict<rw::Segment>(item);
          if (item.contains("words")) {
            segment.words.emplace();
            for (const auto& word : item["words"]) {
              segment.words->push_back(from_dict<rw::Word>(word));
            }
          }
          t.segments.push_back(std::move(segment));
        }
        const auto writer = options_from<rw::WriterOptions>(options, "format");
        return py::bytes(rw::format_transcription(t, format, writer));
      },
      py::arg("result"),
      py::arg("format"),
      py::arg("options") = py::dict());
  m.def("_mel_filters", &rw::mel_filters, py::arg("n_mels"));
  m.def("_writer_defaults", [] { return defaults<rw::WriterOptions>(); });
  // whisper.timing's pieces, for their tests against whisper's own.
  m.def(
      "_openai_alignment_heads",
      [](const std::string& name) { return rw::openai_alignment_heads(name); },
      py::arg("name"));
  m.def("_median_filter", &rw::median_filter, py::arg("x"), py::arg("width"));
  m.def("_dtw", &rw::dtw, py::arg("x"));
  m.def(
      "_merge_punctuations",
      [](const std::vector<std::pair<std::string, std::vector<int64_t>>>& words,
         const std::string& prepended,
         const std::string& appended) {
        std::vector<rw::WordTiming> alignment;
        for (const auto& [word, tokens] : words) {
          alignment.push_back({word, tokens});
        }
        rw::merge_punctuations(alignment, prepended, appended);
        std::vector<std::pair<std::string, std::vector<int64_t>>> out;
        for (const auto& t : alignment) {
          out.emplace_back(t.word, t.tokens);
        }
        return out;
      },
      py::arg("words"),
      py::arg("prepended"),
      py::arg("appended"));
  m.def(
      "_find_vocabulary",
      &rw::find_vocabulary,
      py::arg("checkpoint"),
      py::arg("multilingual"),
      py::arg("folders"),
      py::arg("how_to_pass"));
  // The decoder's few-rows product, for its tests and benchmarks.
  m.def(
      "_few_rows_linear",
      [](const torch::Tensor& x,
         const torch::Tensor& weight,
         const std::optional<torch::Tensor>& bias,
         const std::optional<torch::Tensor>& scale) {
        return rw::detail::few_rows_linear(
            x, weight, bias.value_or(torch::Tensor()), scale.value_or(torch::Tensor()));
      },
      py::arg("x"),
      py::arg("weight"),
      py::arg("bias") = std::nullopt,
      py::arg("scale") = std::nullopt,
      py::call_guard<py::gil_scoped_release>());
  m.def("_quantize_rows_int8", &rw::detail::quantize_rows_int8, py::arg("weight"));
  // The many-rows product with either backend, and the one this machine takes.
  m.def(
      "_dense_linear",
      [](const torch::Tensor& x,
         const torch::Tensor& weight,
         const std::optional<torch::Tensor>& bias,
         const std::string& backend) {
        TORCH_CHECK(
            backend == "onednn" || backend == "aten",
            "_dense_linear: backend must be onednn or aten, got '",
            backend,
            "'");
        return rw::detail::dense_linear(
            x,
            weight,
            bias.value_or(torch::Tensor()),
            backend == "onednn" ? rw::detail::DenseLinearBackend::kOneDnn
                                : rw::detail::DenseLinearBackend::kATen);
      },
      py::arg("x"),
      py::arg("weight"),
      py::arg("bias") = std::nullopt,
      py::arg("backend"),
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "_dense_attention",
      [](const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, int64_t n_head) {
        torch::NoGradGuard no_grad;
        return rw::detail::dense_attention(q, k, v, n_head);
      },
      py::arg("q"),
      py::arg("k"),
      py::arg("v"),
      py::arg("n_head"),
      py::call_guard<py::gil_scoped_release>());
  m.def("_dense_linear_backend", [] {
    return rw::detail::dense_linear_backend() == rw::detail::DenseLinearBackend::kOneDnn ? "onednn"
                                                                                         : "aten";
  });
  // One sampling step of the decoding loop over [rows, vocabulary] logits,
  // for the sampler's tests.
  m.def(
      "_sample_tokens",
      [](const torch::Tensor& logits,
         double temperature,
         uint64_t seed,
         bool reproduce_whisper_samples) {
        TORCH_CHECK(
            logits.dim() == 2 && logits.scalar_type() == torch::kFloat,
            "_sample_tokens: logits must be float32 [rows, vocabulary], got ",
            logits.sizes(),
            " ",
            logits.scalar_type());
        rw::detail::GreedySearch search(
            /*eot=*/-1,
            /*group=*/1,
            temperature,
            at::make_generator<at::CPUGeneratorImpl>(seed),
            reproduce_whisper_samples);
        rw::detail::Rows rows(static_cast<size_t>(logits.size(0)), std::vector<int64_t>{0});
        std::vector<float> sum_logprobs(rows.size());
        search.update(rows, logits.contiguous(), sum_logprobs);
        std::vector<int64_t> drawn;
        for (const auto& row : rows) {
          drawn.push_back(row.back());
        }
        return drawn;
      },
      py::arg("logits"),
      py::arg("temperature"),
      py::arg("seed"),
      py::arg("reproduce_whisper_samples") = false,
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "_log_mel_spectrogram",
      &rw::log_mel_spectrogram,
      py::arg("audio"),
      py::arg("n_mels"),
      py::arg("padding"),
      py::call_guard<py::gil_scoped_release>());
  m.def("_pad_or_trim", &rw::pad_or_trim, py::arg("array"), py::arg("length"));
  m.def(
      "_load_audio",
      &rw::load_audio,
      py::arg("path"),
      py::arg("sample_rate"),
      py::call_guard<py::gil_scoped_release>());
}
