#pragma once
// What every kernel of rotary_attention::decode_attention shares: the
// argument checks (symbolic sizes, so the Meta kernel traces) and the
// composition of ATen ops that serves where the CPU loop does not.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

namespace rotary_attention::ops {

// Checks shapes, dtypes and devices (not the lengths' values, which are data);
// returns the logits' scale (`scale`, or 1/sqrt(head_dim)).
double check_decode_attention_args(
    const at::Tensor& q,
    const at::Tensor& key_cache,
    const at::Tensor& value_cache,
    const at::Tensor& lengths,
    int64_t n_head,
    std::optional<double> scale);

// ATen's scaled_dot_product_attention over the whole capacity, with the
// lengths as a boolean mask (the CUDA kernel, and the CPU one for dtypes
// the loop does not take).
at::Tensor decode_attention_by_sdpa(
    const at::Tensor& q,
    const at::Tensor& key_cache,
    const at::Tensor& value_cache,
    const at::Tensor& lengths,
    int64_t n_head,
    bool causal,
    double scale);

} // namespace rotary_attention::ops
