#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include "rotary_attention/nn/options.h"

namespace rotary_attention {

/// Rotary position embedding in the original's pair layout ("interleaved_to_half":
/// pairs read interleaved, written half-split), backed
/// by the `rotary_attention::rotary` operator. Buffer: `inv_freq` (dim / 2).
class RotaryEmbeddingImpl : public torch::nn::Cloneable<RotaryEmbeddingImpl> {
 public:
  explicit RotaryEmbeddingImpl(const RotaryEmbeddingOptions& options_);

  void reset() override;
  /// `x` is (B, T, H, D); positions 0..T-1 along dim 1, as in the original.
  torch::Tensor rotate_queries_or_keys(const torch::Tensor& x);
  torch::Tensor forward(const torch::Tensor& x) {
    return rotate_queries_or_keys(x);
  }
  void pretty_print(std::ostream& stream) const override;

  RotaryEmbeddingOptions options;
  torch::Tensor inv_freq;
};

TORCH_MODULE(RotaryEmbedding);

} // namespace rotary_attention
