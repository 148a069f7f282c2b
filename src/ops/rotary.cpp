// The operator schema (the library's only TORCH_LIBRARY block) and the C++
// entry points, which call through the dispatcher so that autograd, Meta,
// CPU and CUDA kernels are all reached the same way as from Python.

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "rotary_attention/ops/rotary.h"

namespace rotary_attention {

TORCH_LIBRARY(rotary_attention, m) {
  m.def(
      "rotary(Tensor x, Tensor inv_freq, Tensor? positions=None, int offset=0, "
      "str layout=\"seed\", int rotary_dim=-1) -> Tensor");
  m.def(
      "rotary_backward(Tensor grad, Tensor inv_freq, Tensor? positions=None, "
      "int offset=0, str layout=\"seed\", int rotary_dim=-1) -> Tensor");
}

at::Tensor rotary(
    const at::Tensor& x,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions,
    int64_t offset,
    c10::string_view layout,
    int64_t rotary_dim) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("rotary_attention::rotary", "")
                       .typed<decltype(rotary)>();
  return op.call(x, inv_freq, positions, offset, layout, rotary_dim);
}

at::Tensor rotary_backward(
    const at::Tensor& grad,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions,
    int64_t offset,
    c10::string_view layout,
    int64_t rotary_dim) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("rotary_attention::rotary_backward", "")
                       .typed<decltype(rotary_backward)>();
  return op.call(grad, inv_freq, positions, offset, layout, rotary_dim);
}

bool built_with_cuda() {
#ifdef ROTARY_ATTENTION_WITH_CUDA
  return true;
#else
  return false;
#endif
}

namespace detail {
int64_t operators_registered() {
  return 1;
}
} // namespace detail

} // namespace rotary_attention
