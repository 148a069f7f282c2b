#pragma once
// Writer of torch.save's zip format for a dict of named tensors.

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

namespace rotary_attention::detail {

/// Writes the tensors, in order, as a dict that Python's `torch.load` reads
/// (weights_only too).
void write_torch_save_dict(
    const std::vector<std::pair<std::string, at::Tensor>>& tensors, const std::string& path);

} // namespace rotary_attention::detail
