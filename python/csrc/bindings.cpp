// rotary_attention._C: thin pybind11 bindings of the C++ modules. Python-side
// conveniences (state_dict, keyword calls, returning self) live in
// python/rotary_attention/_modules.py.

#include <pybind11/stl.h>
#include <torch/python.h>

#include "rotary_attention/rotary_attention.h"

#include <sstream>

namespace py = pybind11;
namespace ra = rotary_attention;

namespace {

torch::Tensor or_undefined(const std::optional<torch::Tensor>& t) {
  return t.has_value() ? *t : torch::Tensor();
}

py::tuple load_into(
    torch::nn::Module& m,
    const std::unordered_map<std::string, torch::Tensor>& state,
    bool strict) {
  const ra::LoadResult r = ra::load_state_dict(m, state, strict);
  return py::make_tuple(r.missing_keys, r.unexpected_keys);
}

ra::WeightFileFormat file_format(const std::string& name) {
  if (name.empty()) {
    return ra::WeightFileFormat::from_extension;
  }
  if (name == "torch_save") {
    return ra::WeightFileFormat::torch_save;
  }
  TORCH_CHECK(
      name == "safetensors",
      "format must be \"torch_save\", \"safetensors\" or None (from the extension), not \"",
      name,
      "\"");
  return ra::WeightFileFormat::safetensors;
}

} // namespace

#ifdef ROTARY_ATTENTION_WITH_WHISPER
void bind_whisper(py::module& m); // whisper_bindings.cpp
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "C++ (LibTorch) rotary attention layers and the rotary operator";

  py::class_<ra::KVCache>(m, "KVCache", R"doc(
Key/value cache for incremental decoding, shared by every attention layer of a
model, with the semantics of Whisper's forward hooks on `key` and `value`:
self-attention keys/values are appended each call (written in place into
buffers that grow by doubling; `capacity` preallocates), cross-attention ones
are computed on the first call and reused.)doc")
      .def(py::init<int64_t>(), py::arg("capacity") = 0)
      .def("clear", &ra::KVCache::clear, "Forget every cached entry (start a new sequence).")
      .def_property(
          "shared_keys_read_once",
          &ra::KVCache::shared_keys_read_once,
          &ra::KVCache::set_shared_keys_read_once,
          "Cross-attention keys of batch 1 shared by several rows (a beam) read once for all "
          "rows: equal to row-by-row attention up to rounding, not bit for bit.")
      .def("__len__", &ra::KVCache::size)
      .def(
          "reorder",
          &ra::KVCache::reorder,
          py::arg("indices"),
          "Re-index every entry along the batch (beam search, as Whisper's rearrange_kv_cache): "
          "row i becomes row indices[i]; fewer or repeated rows allowed; cross-attention entries "
          "of batch 1 serve every row and stay.")
      .def(
          "length",
          [](const ra::KVCache& c, const ra::MultiHeadAttentionImpl& layer) {
            return c.length(&layer);
          },
          py::arg("layer"),
          "Number of cached time steps of `layer` (0 when absent).")
      .def(
          "capacity",
          [](const ra::KVCache& c, const ra::MultiHeadAttentionImpl& layer) {
            return c.capacity(&layer);
          },
          py::arg("layer"),
          "Steps `layer`'s buffers hold before they grow (0 when absent).")
      .def(
          "get",
          [](const ra::KVCache& c, const ra::MultiHeadAttentionImpl& layer) -> py::object {
            const ra::KVCache::Entry* e = c.find(&layer);
            if (e == nullptr) {
              return py::none();
            }
            return py::make_tuple(e->key(), e->value());
          },
          py::arg("layer"),
          "(key, value) cached for `layer`, or None.");

  torch::python::bind_module<ra::RotationLayerImpl, /*force_enable=*/true>(m, "RotationLayer")
      .def(py::init<int64_t>(), py::arg("embed_dim"))
      .def("forward", &ra::RotationLayerImpl::forward, py::arg("x"))
      .def("reset_parameters", &ra::RotationLayerImpl::reset_parameters)
      .def_property_readonly(
          "rotation_matrix", [](const ra::RotationLayerImpl& r) { return r.rotation_matrix; });

  torch::python::bind_module<ra::RotaryEmbeddingImpl, /*force_enable=*/true>(m, "RotaryEmbedding")
      .def(
          py::init([](int64_t dim, double base) {
            return std::make_shared<ra::RotaryEmbeddingImpl>(
                ra::RotaryEmbeddingOptions(dim).base(base));
          }),
          py::arg("dim"),
          py::arg("base") = 10000.0)
      .def("forward", &ra::RotaryEmbeddingImpl::forward, py::arg("x"))
      .def("rotate_queries_or_keys", &ra::RotaryEmbeddingImpl::rotate_queries_or_keys, py::arg("x"))
      .def_property_readonly(
          "inv_freq", [](const ra::RotaryEmbeddingImpl& r) { return r.inv_freq; });

  torch::python::bind_module<ra::MultiHeadAttentionImpl, /*force_enable=*/true>(
      m, "MultiHeadAttention")
      .def(
          py::init([](int64_t n_state,
                      int64_t n_head,
                      double dropout_rate,
                      bool gradient_checkpointing,
                      bool group_norm,
                      bool sdpa,
                      bool absolute_positions) {
            return std::make_shared<ra::MultiHeadAttentionImpl>(
                ra::MultiHeadAttentionOptions(n_state, n_head)
                    .dropout_rate(dropout_rate)
                    .gradient_checkpointing(gradient_checkpointing)
                    .group_norm(group_norm)
                    .sdpa(sdpa)
                    .absolute_positions(absolute_positions));
          }),
          py::arg("n_state"),
          py::arg("n_head"),
          py::arg("dropout_rate") = 0.01,
          py::arg("gradient_checkpointing") = false,
          py::arg("group_norm") = false,
          py::arg("sdpa") = true,
          py::arg("absolute_positions") = false)
      .def(
          "forward",
          [](ra::MultiHeadAttentionImpl& self,
             const torch::Tensor& x,
             const std::optional<torch::Tensor>& xa,
             const std::optional<torch::Tensor>& mask,
             ra::KVCache* kv_cache) {
            return self.forward(x, or_undefined(xa), or_undefined(mask), kv_cache);
          },
          py::arg("x"),
          py::arg("xa") = py::none(),
          py::arg("mask") = py::none(),
          py::arg("kv_cache") = py::none(),
          // Pure C++ from here: other Python threads run meanwhile.
          py::call_guard<py::gil_scoped_release>())
      .def_property(
          "sdpa",
          [](const ra::MultiHeadAttentionImpl& self) { return self.options.sdpa(); },
          [](ra::MultiHeadAttentionImpl& self, bool on) { self.options.sdpa(on); })
      .def_property_readonly(
          "absolute_positions",
          [](const ra::MultiHeadAttentionImpl& self) { return self.options.absolute_positions(); })
      .def_property_readonly(
          "n_state", [](const ra::MultiHeadAttentionImpl& s) { return s.options.n_state(); })
      .def_property_readonly(
          "n_head", [](const ra::MultiHeadAttentionImpl& s) { return s.options.n_head(); })
      .def_property_readonly("head_dim", &ra::MultiHeadAttentionImpl::head_dim)
      .def_property_readonly(
          "group_norm", [](const ra::MultiHeadAttentionImpl& s) { return s.options.group_norm(); })
      .def_property_readonly(
          "gradient_checkpointing",
          [](const ra::MultiHeadAttentionImpl& s) { return s.options.gradient_checkpointing(); })
      .def_property_readonly(
          "temperature", [](const ra::MultiHeadAttentionImpl& s) { return s.temperature; });

  m.def(
      "_repr",
      [](const torch::nn::Module& mod) {
        std::ostringstream s;
        s << mod; // pretty_print, recursively
        return s.str();
      },
      py::arg("module"));
  m.def("_load_state_dict", &load_into, py::arg("module"), py::arg("state"), py::arg("strict"));
  m.def(
      "_load_state_dict_file",
      [](torch::nn::Module& mod, const std::string& path, const std::string& prefix) {
        ra::load_state_dict(mod, path, prefix);
      },
      py::arg("module"),
      py::arg("path"),
      py::arg("prefix") = "");
  m.def(
      "_load_file",
      [](const std::string& path, const std::string& prefix) {
        return ra::load_tensors(path, prefix);
      },
      py::arg("path"),
      py::arg("prefix") = "");
  m.def(
      "_save_file",
      [](const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
         const std::string& path,
         const std::string& format) { ra::save_tensors(tensors, path, file_format(format)); },
      py::arg("tensors"),
      py::arg("path"),
      py::arg("format"));
  m.def(
      "_save_state_dict_file",
      [](const torch::nn::Module& mod, const std::string& path, const std::string& format) {
        ra::save_state_dict(mod, path, file_format(format));
      },
      py::arg("module"),
      py::arg("path"),
      py::arg("format"));
  m.def("built_with_cuda", &ra::built_with_cuda);
  m.def("cpu_kernel_capability", &ra::cpu_kernel_capability);
#ifdef ROTARY_ATTENTION_WITH_WHISPER
  bind_whisper(m);
#endif
}
