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

/// Reads named tensors from a file written by Python's `torch.save(obj, path)`
/// or by safetensors' `save_file`; the format is read from the content.
/// `obj` may nest dicts (OrderedDicts; string or integer keys), lists and
/// tuples of tensors and plain values (numbers, strings, bytes, None) to any
/// depth, as checkpoints do (openai-whisper's `{"dims", "model_state_dict"}`,
/// Lightning's `{"state_dict", "epoch", "optimizer_states", ...}`): tensors
/// are named by dotted paths through them ("model_state_dict.decoder.ln.weight",
/// "optimizer_states.0.state.3.exp_avg"); plain values are skipped. Globals
/// are refused by name unless torch.load(weights_only=True) allows them
/// (tensors, storages, OrderedDict), before any object is built. Every size
/// and offset is checked against the file before anything is allocated.
/// With a `prefix` ("model_state_dict.decoder.blocks.3.attn", with or without
/// the final dot, which is implied: "blocks.1" never matches "blocks.10"),
/// only the tensors under it, the prefix removed; no other tensor is read.
/// A prefix with nothing under it is an error listing the top-level keys and
/// the nearest prefixes that hold tensors.
std::unordered_map<std::string, torch::Tensor> load_tensors(
    const std::string& path, const std::string& prefix = "");

/// Reads a file written by Python's `torch.save(module.state_dict(), path)`
/// or safetensors' `save_file` and loads it strictly. With a `prefix` (e.g.
/// "model_state_dict.decoder.blocks.3.attn."), the file is a whole model's
/// checkpoint: the tensors under the prefix are loaded (see load_tensors),
/// the prefix removed, strictly; the rest is ignored. On any error the module
/// is unchanged.
void load_state_dict(
    torch::nn::Module& module, const std::string& path, const std::string& prefix = "");

/// The entries of `state` whose keys start with `prefix` (the final dot
/// implied, as in load_tensors), the prefix removed.
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
