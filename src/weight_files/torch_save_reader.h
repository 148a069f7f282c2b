#pragma once
// Reader for files written by Python's torch.save (state dicts, and the
// nested checkpoints of openai-whisper, Lightning and others): the zip
// container with data.pkl and one record per storage. LibTorch's own
// unpickler turns collections.OrderedDict (what state_dict() returns) into
// None and runs any global, so checkpoints need this small reader of the
// pickle subset they use, restricted as torch.load(weights_only=True).

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

namespace rotary_attention::detail {

/// What a weight file holds, tensors addressed by dotted paths through nested
/// containers (dict keys that are strings or integers, list and tuple indices).
struct TorchSaveContents {
  std::vector<std::string> top_level_keys; ///< the root container's keys, in file order
  std::vector<std::string> tensor_paths;   ///< every tensor's path, in file order
  /// The tensors whose paths start with `prefix` (which ends with '.' or is
  /// empty), the prefix removed, on the CPU; no other storage is read.
  std::vector<std::pair<std::string, at::Tensor>> tensors;
  /// Every integer's path and value, whatever the prefix (openai-whisper's
  /// "dims.n_mels" and the like: checkpoints describe their model with them).
  std::vector<std::pair<std::string, int64_t>> integers;
};

/// Reads a file written by Python's torch.save: dicts (OrderedDicts), lists
/// and tuples of tensors and plain values (numbers, strings, bytes, None),
/// nested to any depth. Any global beyond tensors, storages and OrderedDict is
/// refused by name when the pickle names it.
TorchSaveContents read_torch_save(const std::string& path, const std::string& prefix);

} // namespace rotary_attention::detail
