#include "rotary_attention/nn/rotary_embedding.h"

#include "rotary_attention/ops/rotary.h"

namespace rotary_attention {

RotaryEmbeddingImpl::RotaryEmbeddingImpl(const RotaryEmbeddingOptions& options_)
    : options(options_) {
  reset();
}

void RotaryEmbeddingImpl::reset() {
  const int64_t dim = options.dim();
  TORCH_CHECK(
      dim > 0 && dim % 2 == 0,
      "RotaryEmbedding: dim (the head dim) must be positive and even, got ",
      dim);
  // As the original: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), where
  // Python's `1.0 / t` is `t.reciprocal() * 1.0`.
  auto exponent = torch::arange(0, dim, 2).to(torch::kFloat) / dim;
  inv_freq = register_buffer("inv_freq", torch::pow(options.base(), exponent).reciprocal());
}

torch::Tensor RotaryEmbeddingImpl::rotate_queries_or_keys(const torch::Tensor& x) {
  return rotary(x, inv_freq);
}

void RotaryEmbeddingImpl::pretty_print(std::ostream& stream) const {
  stream << "rotary_attention::RotaryEmbedding(dim=" << options.dim() << ", base=" << options.base()
         << ")";
}

} // namespace rotary_attention
