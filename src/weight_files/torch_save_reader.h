#pragma once
// Reader for files written by Python's torch.save(dict_of_tensors): the zip
// container with data.pkl and one record per storage. LibTorch's own
// unpickler turns collections.OrderedDict (what state_dict() returns) into
// None, so state dicts need this small reader of the pickle subset they use.

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

namespace rotary_attention::detail {

/// (key, tensor) pairs in file order; tensors are on the CPU.
std::vector<std::pair<std::string, at::Tensor>> read_torch_save_dict(const std::string& path);

} // namespace rotary_attention::detail
