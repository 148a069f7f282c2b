#include "rotary_attention/serialize.h"

#include "weight_files/safetensors_file.h"
#include "weight_files/torch_save_reader.h"
#include "weight_files/torch_save_writer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <set>
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
  // Converted to each target's dtype and device first: a conversion that
  // fails (a dtype without a copy kernel, a device out of memory) fails
  // before the module is touched. The copies into the module then cannot.
  std::vector<std::pair<torch::Tensor, torch::Tensor>> staged;
  for (const auto& [name, target] : own) {
    auto it = state.find(name);
    if (it != state.end()) {
      try {
        staged.emplace_back(
            target, it->second.to(target.options(), /*non_blocking=*/false, /*copy=*/true));
      } catch (const c10::Error& e) {
        TORCH_CHECK(
            false,
            "load_state_dict: nothing was loaded: \"",
            name,
            "\" of dtype ",
            it->second.scalar_type(),
            " cannot be converted to the module's ",
            target.scalar_type(),
            " (",
            e.what_without_backtrace(),
            ")");
      }
    }
  }
  for (auto& [target, value] : staged) {
    target.copy_(value);
  }
  return result;
}

namespace {

// "blocks.1" addresses "blocks.1.x", never "blocks.10.x".
std::string with_dot(const std::string& prefix) {
  return prefix.empty() || prefix.back() == '.' ? prefix : prefix + ".";
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) {
    row[j] = j;
  }
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// The dotted prefixes that hold tensors nearest to `wanted`: first those that
// end with it (the same layer inside a wrapper, e.g. "model_state_dict."),
// then by edit distance.
std::vector<std::string> nearest_prefixes(
    const std::vector<std::string>& paths, const std::string& wanted, size_t n) {
  std::set<std::string> prefixes;
  for (const auto& path : paths) {
    for (size_t dot = path.find('.'); dot != std::string::npos; dot = path.find('.', dot + 1)) {
      prefixes.insert(path.substr(0, dot + 1));
    }
  }
  std::vector<std::pair<std::pair<bool, size_t>, std::string>> scored;
  for (const auto& p : prefixes) {
    const bool ends_with = p.size() >= wanted.size() &&
                           p.compare(p.size() - wanted.size(), wanted.size(), wanted) == 0;
    scored.push_back({{!ends_with, ends_with ? p.size() : edit_distance(p, wanted)}, p});
  }
  std::sort(scored.begin(), scored.end());
  std::vector<std::string> out;
  for (size_t i = 0; i < scored.size() && i < n; ++i) {
    out.push_back(scored[i].second);
  }
  return out;
}

} // namespace

std::unordered_map<std::string, torch::Tensor> load_tensors(
    const std::string& path, const std::string& prefix_in) {
  const std::string prefix = with_dot(prefix_in);
  // The format is read from the content: a zip is torch.save's, an 8-byte
  // length followed by '{' is safetensors'.
  std::string first(9, '\0');
  {
    std::ifstream in(path, std::ios::binary);
    TORCH_CHECK(in.good(), "load_tensors: cannot open '", path, "'");
    in.read(first.data(), static_cast<std::streamsize>(first.size()));
    first.resize(static_cast<size_t>(in.gcount()));
  }
  detail::TorchSaveContents read;
  const bool zip = first.rfind("PK\x03\x04", 0) == 0;
  if (zip || detail::starts_like_safetensors(first)) {
    try {
      if (zip) {
        read = detail::read_torch_save(path, prefix);
      } else {
        for (auto& [key, tensor] : detail::read_safetensors(path)) {
          read.top_level_keys.push_back(key);
          read.tensor_paths.push_back(key);
          if (key.compare(0, prefix.size(), prefix) == 0 && key.size() > prefix.size()) {
            read.tensors.emplace_back(key.substr(prefix.size()), tensor);
          }
        }
      }
    } catch (const c10::Error& e) {
      // Errors from LibTorch itself (as_strided's bounds check on a
      // tensor's sizes, strides and offset) get the loader's prefix and the
      // file's name.
      const std::string message = e.what_without_backtrace();
      if (message.rfind("load_tensors:", 0) == 0) {
        throw;
      }
      TORCH_CHECK(false, "load_tensors: '", path, "' is malformed: ", message);
    }
  } else {
    TORCH_CHECK(
        false,
        "load_tensors: '",
        path,
        "' is neither a torch.save zip file nor a safetensors file (files from torch.save ",
        "with _use_new_zipfile_serialization=False are not read: save them again without it)");
  }
  if (!prefix.empty() && read.tensors.empty()) {
    std::vector<std::string> top(
        read.top_level_keys.begin(),
        read.top_level_keys.begin() + std::min<size_t>(read.top_level_keys.size(), 20));
    TORCH_CHECK(
        false,
        "load_tensors: no entry of '",
        path,
        "' is a tensor under the prefix \"",
        prefix,
        "\"; its top-level keys: [",
        join(top),
        read.top_level_keys.size() > top.size() ? ", ..." : "",
        "]; the nearest prefixes that hold tensors: [",
        join(nearest_prefixes(read.tensor_paths, prefix, 3)),
        "]");
  }
  std::unordered_map<std::string, torch::Tensor> state;
  for (auto& [key, tensor] : read.tensors) {
    TORCH_CHECK(
        state.emplace(key, tensor).second,
        "load_tensors: '",
        path,
        "' names \"",
        prefix + key,
        "\" twice");
  }
  return state;
}

std::unordered_map<std::string, torch::Tensor> entries_under(
    const std::unordered_map<std::string, torch::Tensor>& state, const std::string& prefix_in) {
  const std::string prefix = with_dot(prefix_in);
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
  load_state_dict(module, load_tensors(path, prefix), /*strict=*/true);
}

void save_tensors(
    const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
    const std::string& path,
    WeightFileFormat format) {
  std::set<std::string> names;
  for (const auto& [name, tensor] : tensors) {
    TORCH_CHECK(names.insert(name).second, "save_tensors: the name \"", name, "\" is given twice");
    TORCH_CHECK(tensor.defined(), "save_tensors: \"", name, "\" is an undefined tensor");
  }
  if (format == WeightFileFormat::from_extension) {
    format = std::filesystem::path(path).extension() == ".safetensors"
                 ? WeightFileFormat::safetensors
                 : WeightFileFormat::torch_save;
  }
  if (format == WeightFileFormat::safetensors) {
    detail::write_safetensors(tensors, path);
  } else {
    detail::write_torch_save_dict(tensors, path);
  }
}

void save_state_dict(
    const torch::nn::Module& module, const std::string& path, WeightFileFormat format) {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    tensors.emplace_back(item.key(), item.value());
  }
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    tensors.emplace_back(item.key(), item.value());
  }
  save_tensors(tensors, path, format);
}

} // namespace rotary_attention
