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

/// Which format a weight file is written in; from_extension picks safetensors
/// for a path ending in ".safetensors", torch.save's otherwise.
enum class WeightFileFormat { from_extension, torch_save, safetensors };

/// Reads named tensors from a file written by Python's `torch.save(d, path)`
/// (a state dict, an OrderedDict or a plain dict with string keys) or by
/// safetensors' `save_file`; the format is read from the content. Every size
/// and offset is checked against the file before anything is allocated.
std::unordered_map<std::string, torch::Tensor> load_tensors(const std::string& path);

/// Reads a file written by Python's `torch.save(module.state_dict(), path)`
/// or safetensors' `save_file` and loads it strictly. With a `prefix` (e.g.
/// "decoder.blocks.3.attn."), the file is a whole model's checkpoint: the entries whose keys start
/// with the prefix are loaded, the prefix removed, strictly; the rest is ignored.
void load_state_dict(
    torch::nn::Module& module, const std::string& path, const std::string& prefix = "");

/// The entries of `state` whose keys start with `prefix`, the prefix removed.
std::unordered_map<std::string, torch::Tensor> entries_under(
    const std::unordered_map<std::string, torch::Tensor>& state, const std::string& prefix);

/// Writes named tensors, in the given order: in `torch.save`'s format Python
/// reads them as a dict with `torch.load(path)` (weights_only too); as
/// safetensors, with `safetensors.torch.load_file(path)`.
void save_tensors(
    const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
    const std::string& path,
    WeightFileFormat format = WeightFileFormat::from_extension);

/// Writes the module's state dict (see save_tensors): the original layer
/// accepts what Python reads back in `load_state_dict`.
void save_state_dict(
    const torch::nn::Module& module,
    const std::string& path,
    WeightFileFormat format = WeightFileFormat::from_extension);

} // namespace rotary_attention
