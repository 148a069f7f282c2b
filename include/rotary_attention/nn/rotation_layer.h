#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>

#include "rotary_attention/nn/options.h"

namespace rotary_attention {

/// `x @ rotation_matrix` over the last dimension. The matrix is the identity
/// at construction; `reset_parameters()` makes it a random orthogonal one (as
/// in the original, the constructor does not call it).
class RotationLayerImpl : public torch::nn::Cloneable<RotationLayerImpl> {
 public:
  explicit RotationLayerImpl(const RotationLayerOptions& options_);

  void reset() override;
  void reset_parameters();
  torch::Tensor forward(const torch::Tensor& x);
  void pretty_print(std::ostream& stream) const override;

  RotationLayerOptions options;
  torch::Tensor rotation_matrix;
};

TORCH_MODULE(RotationLayer);

} // namespace rotary_attention
