// Meta kernels: shapes and dtypes only, with symbolic sizes, so FakeTensor,
// torch.compile and torch.export trace the operator without running it.

#include <ATen/ATen.h>
#include <torch/library.h>

#include "../rotary_frontend.h"

namespace rotary_attention::ops {
namespace {

at::Tensor rotary_meta(
    const at::Tensor& x,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions,
    int64_t offset,
    c10::string_view layout,
    int64_t rotary_dim) {
  check_rotary_args("rotary", x, inv_freq, positions, layout, rotary_dim);
  return at::empty_symint(x.sym_sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
}

void rotary_inplace_meta(
    at::Tensor& x,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions,
    int64_t offset,
    c10::string_view layout,
    int64_t rotary_dim) {
  check_rotary_args("rotary_", x, inv_freq, positions, layout, rotary_dim);
}

} // namespace

TORCH_LIBRARY_IMPL(rotary_attention, Meta, m) {
  m.impl("rotary", &rotary_meta);
  m.impl("rotary_backward", &rotary_meta);
  m.impl("rotary_", &rotary_inplace_meta);
}

} // namespace rotary_attention::ops
