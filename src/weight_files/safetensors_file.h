#pragma once
// The safetensors format (https://github.com/huggingface/safetensors): an
// 8-byte little-endian header length, a JSON header naming each tensor's
// dtype, shape and byte range, then the raw little-endian data.

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

namespace rotary_attention::detail {

/// Whether the first bytes of a file look like a safetensors header.
bool starts_like_safetensors(const std::string& first_bytes);

/// (key, tensor) pairs in the order of their data; tensors are on the CPU.
/// The header and every offset are validated before anything is allocated.
std::vector<std::pair<std::string, at::Tensor>> read_safetensors(const std::string& path);

/// Writes the tensors (moved to the CPU, made contiguous) in the given order.
void write_safetensors(
    const std::vector<std::pair<std::string, at::Tensor>>& tensors, const std::string& path);

} // namespace rotary_attention::detail
