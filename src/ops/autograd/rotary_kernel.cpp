// Autograd for the rotary operators, in C++ so that C++ training, TorchScript
// and Python all get gradients without any Python registration.
//
// Both operators are linear in their first argument and each one's backward is
// the other, so derivatives of any order chain through the dispatcher.

#include <torch/autograd.h>
#include <torch/library.h>

#include "rotary_attention/ops/rotary.h"

namespace rotary_attention::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

template <bool Backward>
class RotaryFunction : public torch::autograd::Function<RotaryFunction<Backward>> {
 public:
  static at::Tensor forward(
      AutogradContext* ctx,
      const at::Tensor& x,
      const at::Tensor& inv_freq,
      const std::optional<at::Tensor>& positions,
      int64_t offset,
      c10::string_view layout,
      int64_t rotary_dim) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({inv_freq, positions.value_or(at::Tensor())});
    ctx->saved_data["offset"] = offset;
    ctx->saved_data["layout"] = std::string(layout);
    ctx->saved_data["rotary_dim"] = rotary_dim;
    return Backward ? rotary_backward(x, inv_freq, positions, offset, layout, rotary_dim)
                    : rotary(x, inv_freq, positions, offset, layout, rotary_dim);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const std::optional<at::Tensor> positions =
        saved[1].defined() ? std::optional<at::Tensor>(saved[1]) : std::nullopt;
    const int64_t offset = ctx->saved_data["offset"].toInt();
    const std::string layout = ctx->saved_data["layout"].toStringRef();
    const int64_t rotary_dim = ctx->saved_data["rotary_dim"].toInt();
    const at::Tensor& grad = grad_outputs[0];
    at::Tensor grad_x =
        Backward ? rotary(grad, saved[0], positions, offset, layout, rotary_dim)
                 : rotary_backward(grad, saved[0], positions, offset, layout, rotary_dim);
    return {grad_x, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor rotary_autograd(
    const at::Tensor& x,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions,
    int64_t offset,
    c10::string_view layout,
    int64_t rotary_dim) {
  return RotaryFunction<false>::apply(x, inv_freq, positions, offset, layout, rotary_dim);
}

at::Tensor rotary_backward_autograd(
    const at::Tensor& grad,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions,
    int64_t offset,
    c10::string_view layout,
    int64_t rotary_dim) {
  return RotaryFunction<true>::apply(grad, inv_freq, positions, offset, layout, rotary_dim);
}

// The in-place variant is for inference: refuse to overwrite a tensor autograd
// needs, then bump x's version as ADInplaceOrView would.
void rotary_inplace_autograd(
    at::Tensor& x,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions,
    int64_t offset,
    c10::string_view layout,
    int64_t rotary_dim) {
  TORCH_CHECK(
      !(at::GradMode::is_enabled() && x.requires_grad()),
      "rotary_: the in-place variant is for inference, but x requires grad; use rotary() "
      "(differentiable) or run under torch.no_grad()");
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    rotary_(x, inv_freq, positions, offset, layout, rotary_dim);
  }
  if (!x.is_inference()) {
    x.unsafeGetTensorImpl()->bump_version();
  }
}

} // namespace

TORCH_LIBRARY_IMPL(rotary_attention, Autograd, m) {
  m.impl("rotary", &rotary_autograd);
  m.impl("rotary_backward", &rotary_backward_autograd);
  m.impl("rotary_", &rotary_inplace_autograd);
}

} // namespace rotary_attention::ops
