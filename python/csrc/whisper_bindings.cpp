// rotary_attention._C: the Whisper fork in C++ (model, front end, tokenizer,
// decoding loop). The Python face (options, results) is
// python/rotary_attention/whisper_model.py.
#include <pybind11/stl.h>
#include <torch/python.h>

#include "../../src/whisper/few_rows_linear.h"
#include "rotary_attention/whisper/audio.h"
#include "rotary_attention/whisper/decoding.h"

namespace py = pybind11;
namespace rw = rotary_attention::whisper;

void bind_whisper(py::module& m) {
  py::class_<rw::Tokenizer>(m, "_WhisperTokenizer")
      .def(
          py::init<const std::string&, int64_t, std::optional<int64_t>>(),
          py::arg("path"),
          py::arg("num_languages"),
          py::arg("n_vocab") = std::nullopt)
      .def("decode", &rw::Tokenizer::decode)
      .def("decode_with_timestamps", &rw::Tokenizer::decode_with_timestamps)
      .def(
          "encode_piece",
          [](const rw::Tokenizer& t, const py::bytes& piece) {
            return t.encode_piece(std::string(piece));
          })
      .def("non_speech_tokens", &rw::Tokenizer::non_speech_tokens)
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
             const std::string& task,
             std::optional<std::string> language,
             double temperature,
             std::optional<int64_t> sample_len,
             std::optional<int64_t> best_of,
             std::optional<int64_t> beam_size,
             std::optional<double> patience,
             std::optional<double> length_penalty,
             std::vector<int64_t> prompt,
             std::vector<int64_t> prefix,
             std::vector<int64_t> suppress_tokens,
             bool suppress_blank,
             bool without_timestamps,
             std::optional<double> max_initial_timestamp) {
            rw::DecodingOptions o;
            o.task = task, o.language = language, o.temperature = temperature;
            o.sample_len = sample_len, o.best_of = best_of, o.beam_size = beam_size;
            o.patience = patience, o.length_penalty = length_penalty;
            o.prompt = std::move(prompt), o.prefix = std::move(prefix);
            o.suppress_tokens = std::move(suppress_tokens), o.suppress_blank = suppress_blank;
            o.without_timestamps = without_timestamps,
            o.max_initial_timestamp = max_initial_timestamp;
            std::vector<rw::DecodingResult> results;
            {
              py::gil_scoped_release released;
              results = rw::decode(inference, tokenizer, mel_or_features, o);
            }
            py::list out;
            for (const auto& r : results) {
              py::dict d;
              d["language"] = r.language;
              d["language_probs"] = r.language_probs;
              d["tokens"] = r.tokens;
              // Invalid UTF-8 was already replaced by U+FFFD: the text is valid.
              d["text"] = py::str(r.text);
              d["avg_logprob"] = r.avg_logprob;
              d["no_speech_prob"] = r.no_speech_prob;
              d["temperature"] = r.temperature;
              out.append(d);
            }
            return out;
          },
          py::arg("tokenizer"),
          py::arg("mel_or_features"),
          py::arg("task"),
          py::arg("language"),
          py::arg("temperature"),
          py::arg("sample_len"),
          py::arg("best_of"),
          py::arg("beam_size"),
          py::arg("patience"),
          py::arg("length_penalty"),
          py::arg("prompt"),
          py::arg("prefix"),
          py::arg("suppress_tokens"),
          py::arg("suppress_blank"),
          py::arg("without_timestamps"),
          py::arg("max_initial_timestamp"));

  m.def("_mel_filters", &rw::mel_filters, py::arg("n_mels"));
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
