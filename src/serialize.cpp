#include "rotary_attention/serialize.h"

#include <caffe2/serialize/inline_container.h>
#include <torch/csrc/jit/serialization/pickler.h>

#include "torch_save_reader.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <string>

namespace rotary_attention {
namespace {

std::string join(const std::vector<std::string>& keys) {
  std::ostringstream s;
  for (size_t i = 0; i < keys.size(); ++i) {
    s << (i ? ", " : "") << '"' << keys[i] << '"';
  }
  return s.str();
}

} // namespace

std::unordered_map<std::string, torch::Tensor> state_dict(const torch::nn::Module& module) {
  std::unordered_map<std::string, torch::Tensor> out;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    out.emplace(item.key(), item.value());
  }
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    out.emplace(item.key(), item.value());
  }
  return out;
}

LoadResult load_state_dict(
    torch::nn::Module& module,
    const std::unordered_map<std::string, torch::Tensor>& state,
    bool strict) {
  const auto own = state_dict(module);
  LoadResult result;
  std::vector<std::string> mismatches;
  for (const auto& [name, target] : own) {
    auto it = state.find(name);
    if (it == state.end()) {
      result.missing_keys.push_back(name);
      continue;
    }
    TORCH_CHECK(
        it->second.defined(), "load_state_dict: the value of \"", name, "\" is not a tensor");
    if (it->second.sizes() != target.sizes()) {
      std::ostringstream s;
      s << "size mismatch for \"" << name << "\": copying a tensor of shape " << it->second.sizes()
        << " from the state dict, the module's shape is " << target.sizes();
      mismatches.push_back(s.str());
    }
  }
  for (const auto& item : state) {
    if (own.find(item.first) == own.end()) {
      result.unexpected_keys.push_back(item.first);
    }
  }
  std::sort(result.missing_keys.begin(), result.missing_keys.end());
  std::sort(result.unexpected_keys.begin(), result.unexpected_keys.end());
  std::sort(mismatches.begin(), mismatches.end());
  if (!mismatches.empty()) {
    std::ostringstream s;
    for (const auto& m : mismatches) {
      s << "\n  " << m;
    }
    TORCH_CHECK(false, "load_state_dict: nothing was loaded:", s.str());
  }
  TORCH_CHECK(
      !strict || (result.missing_keys.empty() && result.unexpected_keys.empty()),
      "load_state_dict: nothing was loaded: missing keys [",
      join(result.missing_keys),
      "], unexpected keys [",
      join(result.unexpected_keys),
      "]");

  torch::NoGradGuard no_grad;
  for (const auto& [name, target] : own) {
    auto it = state.find(name);
    if (it != state.end()) {
      // Like Python's load_state_dict: copy_ converts dtype and device.
      const_cast<torch::Tensor&>(target).copy_(it->second);
    }
  }
  return result;
}

std::unordered_map<std::string, torch::Tensor> load_tensors(const std::string& path) {
  std::unordered_map<std::string, torch::Tensor> state;
  for (auto& [key, tensor] : detail::read_torch_save_dict(path)) {
    state.emplace(key, tensor);
  }
  return state;
}

std::unordered_map<std::string, torch::Tensor> entries_under(
    const std::unordered_map<std::string, torch::Tensor>& state, const std::string& prefix) {
  std::unordered_map<std::string, torch::Tensor> under;
  for (const auto& [key, tensor] : state) {
    if (key.size() > prefix.size() && key.compare(0, prefix.size(), prefix) == 0) {
      under.emplace(key.substr(prefix.size()), tensor);
    }
  }
  return under;
}

void load_state_dict(
    torch::nn::Module& module, const std::string& path, const std::string& prefix) {
  auto state = load_tensors(path);
  if (!prefix.empty()) {
    state = entries_under(state, prefix);
    TORCH_CHECK(
        !state.empty(),
        "load_state_dict: no entry of '",
        path,
        "' has a key starting with \"",
        prefix,
        "\"; nothing was loaded");
  }
  load_state_dict(module, state, /*strict=*/true);
}

void save_tensors(
    const std::vector<std::pair<std::string, torch::Tensor>>& tensors, const std::string& path) {
  // torch.save's zip layout: data.pkl plus one record per storage under data/.
  // torch::pickle_save would tag the dict with a TorchScript type, which
  // torch.load(weights_only=True) refuses; an untagged dict loads anywhere.
  c10::impl::GenericDict dict(c10::StringType::get(), c10::TensorType::get());
  for (const auto& [name, tensor] : tensors) {
    dict.insert(name, tensor.detach());
  }
  std::vector<char> pickled;
  int64_t next_id = 0;
  torch::jit::Pickler pickler(
      [&](const char* data, size_t size) { pickled.insert(pickled.end(), data, data + size); },
      /*tensor_table=*/nullptr,
      /*type_renamer=*/nullptr,
      /*memoized_class_types=*/nullptr,
      /*get_tensor_id=*/[&](const at::Tensor&) { return std::to_string(next_id++); },
      /*tag_aggregates=*/false);
  pickler.protocol();
  pickler.pushIValue(dict);
  pickler.stop();

  caffe2::serialize::PyTorchStreamWriter writer(path);
  writer.writeRecord("byteorder", "little", 6);
  for (size_t i = 0; i < pickler.tensorData().size(); ++i) {
    const auto data = torch::jit::getWriteableTensorData(pickler.tensorData()[i]);
    writer.writeRecord("data/" + std::to_string(i), data.data(), data.sizeInBytes());
  }
  writer.writeRecord("data.pkl", pickled.data(), pickled.size());
  writer.writeEndOfFile();
  TORCH_CHECK(writer.finalized(), "save_tensors: writing '", path, "' failed");
}

void save_state_dict(const torch::nn::Module& module, const std::string& path) {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    tensors.emplace_back(item.key(), item.value());
  }
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    tensors.emplace_back(item.key(), item.value());
  }
  save_tensors(tensors, path);
}

} // namespace rotary_attention
