// CPU kernels of rotary_attention::rotary and ::rotary_backward: argument
// checks, cos/sin tables, then the rotation loop for this CPU's instruction set.

#include <ATen/ATen.h>
#include <torch/library.h>

#include "../rotary_args.h"
#include "../rotary_tables.h"
#include "rotary_kernel.h"

namespace rotary_attention::ops::cpu {
namespace {

bool cpu_has_avx2() {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c");
  return has;
#else
  return false;
#endif
}

at::Tensor rotary_cpu_impl(
    const char* op,
    const at::Tensor& x,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions,
    int64_t offset,
    c10::string_view layout,
    int64_t rotary_dim,
    bool inverse) {
  const int64_t rd = check_rotary_args(op, x, inv_freq, positions, layout, rotary_dim)
                         .guard_int(__FILE__, __LINE__);
  TORCH_CHECK(x.device().is_cpu(), op, ": the CPU kernel got x on ", x.device());
  Layouts layouts = parse_layout(layout);
  if (inverse) {
    std::swap(layouts.in, layouts.out);
  }
  at::Tensor out = at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  if (x.numel() == 0) {
    return out;
  }
  const RotaryTables tables = make_rotary_tables(x, inv_freq, positions, offset);
  const RotateArgs args{x, out, tables.cos, tables.sin, tables.per_batch, layouts, inverse, rd};
  if (cpu_has_avx2()) {
    rotate_avx2(args);
  } else {
    rotate_default(args);
  }
  return out;
}

at::Tensor rotary_cpu(
    const at::Tensor& x,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions,
    int64_t offset,
    c10::string_view layout,
    int64_t rotary_dim) {
  return rotary_cpu_impl("rotary", x, inv_freq, positions, offset, layout, rotary_dim, false);
}

at::Tensor rotary_backward_cpu(
    const at::Tensor& grad,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions,
    int64_t offset,
    c10::string_view layout,
    int64_t rotary_dim) {
  return rotary_cpu_impl(
      "rotary_backward", grad, inv_freq, positions, offset, layout, rotary_dim, true);
}

} // namespace

TORCH_LIBRARY_IMPL(rotary_attention, CPU, m) {
  m.impl("rotary", &rotary_cpu);
  m.impl("rotary_backward", &rotary_backward_cpu);
}

} // namespace rotary_attention::ops::cpu
