#include "rotary_attention/nn/rotation_layer.h"

#include <torch/nn/init.h>

namespace rotary_attention {

RotationLayerImpl::RotationLayerImpl(const RotationLayerOptions& options_) : options(options_) {
  reset();
}

void RotationLayerImpl::reset() {
  TORCH_CHECK(
      options.embed_dim() > 0,
      "RotationLayer: embed_dim must be positive, got ",
      options.embed_dim());
  rotation_matrix = register_parameter("rotation_matrix", torch::eye(options.embed_dim()));
}

void RotationLayerImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  torch::nn::init::orthogonal_(rotation_matrix);
}

torch::Tensor RotationLayerImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK(
      x.dim() >= 1 && x.size(-1) == options.embed_dim(),
      "RotationLayer: expected x with last dimension ",
      options.embed_dim(),
      ", got shape ",
      x.sizes());
  return torch::matmul(x, rotation_matrix);
}

void RotationLayerImpl::pretty_print(std::ostream& stream) const {
  stream << "rotary_attention::RotationLayer(embed_dim=" << options.embed_dim() << ")";
}

} // namespace rotary_attention
