#pragma once

#include <torch/nn/module.h>

#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "rotary_attention/detail/keep_linked.h"

namespace rotary_attention {

/// Parameters and buffers of `module` under their dotted names, the keys
/// Python's `state_dict()` uses.
std::unordered_map<std::string, torch::Tensor> state_dict(const torch::nn::Module& module);

/// Keys a non-strict load skipped, as Python's `load_state_dict` reports them.
struct LoadResult {
  std::vector<std::string> missing_keys;
  std::vector<std::string> unexpected_keys;
};

/// Copies `state` into the module's parameters and buffers (converting dtype
/// and device as Python's `load_state_dict` does). Every key and shape is
/// checked before anything is copied, so on error the module is unchanged.
/// strict: a missing or unexpected key is an error naming the key.
LoadResult load_state_dict(
    torch::nn::Module& module,
    const std::unordered_map<std::string, torch::Tensor>& state,
    bool strict = true);

/// Reads a dict of tensors written by Python's `torch.save(d, path)` (a
/// state dict, an OrderedDict or a plain dict with string keys).
std::unordered_map<std::string, torch::Tensor> load_tensors(const std::string& path);

/// Reads a file written by Python's `torch.save(module.state_dict(), path)`
/// and loads it strictly. With a `prefix` (e.g. "decoder.blocks.3.attn."),
/// the file is a whole model's checkpoint: the entries whose keys start with
/// the prefix are loaded, the prefix removed, strictly; the rest is ignored.
void load_state_dict(
    torch::nn::Module& module, const std::string& path, const std::string& prefix = "");

/// The entries of `state` whose keys start with `prefix`, the prefix removed.
std::unordered_map<std::string, torch::Tensor> entries_under(
    const std::unordered_map<std::string, torch::Tensor>& state, const std::string& prefix);

/// Writes named tensors in `torch.save`'s format, in the given order: Python
/// reads them as a dict with `torch.load(path)` (weights_only too).
void save_tensors(
    const std::vector<std::pair<std::string, torch::Tensor>>& tensors, const std::string& path);

/// Writes the module's state dict in `torch.save`'s format: Python reads it
/// with `torch.load(path)` (weights_only too) and the original layer accepts
/// it in `load_state_dict`.
void save_state_dict(const torch::nn::Module& module, const std::string& path);

} // namespace rotary_attention
