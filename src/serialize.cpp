#include "rotary_attention/serialize.h"

#include <torch/serialize.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <sstream>

namespace rotary_attention {
namespace {

std::string join(const std::vector<std::string>& keys) {
  std::ostringstream s;
  for (size_t i = 0; i < keys.size(); ++i) {
    s << (i ? ", " : "") << '"' << keys[i] << '"';
  }
  return s.str();
}

std::vector<char> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in, "load_tensors: cannot open '", path, "'");
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
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
      s << "size mismatch for \"" << name << "\": copying a tensor of shape "
        << it->second.sizes() << " from the state dict, the module's shape is "
        << target.sizes();
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
      "load_state_dict: nothing was loaded: missing keys [", join(result.missing_keys),
      "], unexpected keys [", join(result.unexpected_keys), "]");

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
  const torch::IValue loaded = torch::pickle_load(read_file(path));
  TORCH_CHECK(
      loaded.isGenericDict(),
      "load_tensors: '", path, "' does not hold a state dict (a dict of tensors), found ",
      loaded.tagKind());
  std::unordered_map<std::string, torch::Tensor> state;
  for (const auto& item : loaded.toGenericDict()) {
    TORCH_CHECK(
        item.key().isString(), "load_tensors: '", path, "' has a non-string key");
    TORCH_CHECK(
        item.value().isTensor(), "load_tensors: the value of \"",
        item.key().toStringRef(), "\" in '", path, "' is not a tensor");
    state.emplace(item.key().toStringRef(), item.value().toTensor());
  }
  return state;
}

void load_state_dict(torch::nn::Module& module, const std::string& path) {
  load_state_dict(module, load_tensors(path), /*strict=*/true);
}

void save_state_dict(const torch::nn::Module& module, const std::string& path) {
  c10::Dict<std::string, torch::Tensor> dict;
  for (const auto& [name, tensor] : state_dict(module)) {
    dict.insert(name, tensor.detach());
  }
  const std::vector<char> bytes = torch::pickle_save(dict);
  std::ofstream out(path, std::ios::binary);
  TORCH_CHECK(out, "save_state_dict: cannot open '", path, "' for writing");
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  TORCH_CHECK(out.good(), "save_state_dict: writing '", path, "' failed");
}

} // namespace rotary_attention
