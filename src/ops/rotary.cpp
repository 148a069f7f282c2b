// The C++ entry points of the rotary operators, which call through the
// dispatcher so that autograd, Meta, CPU and CUDA kernels are all reached the
// same way as from Python; rotary_qk's composite implementation.

#include <torch/library.h>

#include "rotary_attention/ops/rotary.h"
#include "typed_op.h"

namespace rotary_attention {

using ops::typed_op;

namespace {

std::tuple<at::Tensor, at::Tensor> rotary_qk_composite(
    const at::Tensor& q,
    const at::Tensor& k,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions,
    int64_t offset,
    c10::string_view layout,
    int64_t rotary_dim) {
  TORCH_CHECK(
      q.dim() == 4 && k.dim() == 4 && q.sym_size(0) == k.sym_size(0) &&
          q.sym_size(1) == k.sym_size(1) && q.sym_size(3) == k.sym_size(3),
      "rotary_qk: q and k must be (B, T, H, D) with the same B, T and D (H may differ), got ",
      q.sym_sizes(),
      " and ",
      k.sym_sizes());
  return {
      rotary(q, inv_freq, positions, offset, layout, rotary_dim),
      rotary(k, inv_freq, positions, offset, layout, rotary_dim)};
}
} // namespace

TORCH_LIBRARY_IMPL(rotary_attention, CompositeImplicitAutograd, m) {
  m.impl("rotary_qk", &rotary_qk_composite);
}

at::Tensor rotary(
    const at::Tensor& x,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions,
    int64_t offset,
    c10::string_view layout,
    int64_t rotary_dim) {
  static const auto op = typed_op<decltype(rotary)>("rotary_attention::rotary");
  return op.call(x, inv_freq, positions, offset, layout, rotary_dim);
}

at::Tensor rotary_backward(
    const at::Tensor& grad,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions,
    int64_t offset,
    c10::string_view layout,
    int64_t rotary_dim) {
  static const auto op = typed_op<decltype(rotary_backward)>("rotary_attention::rotary_backward");
  return op.call(grad, inv_freq, positions, offset, layout, rotary_dim);
}

at::Tensor& rotary_(
    at::Tensor& x,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions,
    int64_t offset,
    c10::string_view layout,
    int64_t rotary_dim) {
  static const auto op = typed_op<void(
      at::Tensor&,
      const at::Tensor&,
      const std::optional<at::Tensor>&,
      int64_t,
      c10::string_view,
      int64_t)>("rotary_attention::rotary_");
  op.call(x, inv_freq, positions, offset, layout, rotary_dim);
  return x;
}

std::tuple<at::Tensor, at::Tensor> rotary_qk(
    const at::Tensor& q,
    const at::Tensor& k,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions,
    int64_t offset,
    c10::string_view layout,
    int64_t rotary_dim) {
  static const auto op = typed_op<decltype(rotary_qk)>("rotary_attention::rotary_qk");
  return op.call(q, k, inv_freq, positions, offset, layout, rotary_dim);
}

bool built_with_cuda() {
#ifdef ROTARY_ATTENTION_WITH_CUDA
  return true;
#else
  return false;
#endif
}

} // namespace rotary_attention
