// CPU kernels of rotary_attention::rotary and ::rotary_backward: argument
// checks, cos/sin tables, then the rotation loop for this CPU's instruction set.

#include <ATen/ATen.h>
#include <ATen/Version.h>
#include <torch/library.h>

#include "../rotary_args.h"
#include "../rotary_tables.h"
#include "rotary_kernel.h"

namespace rotary_attention::ops::cpu {
namespace {

using RotateFn = void (*)(const RotateArgs&);

// Follow ATen's own choice of instruction set (it honours ATEN_CPU_CAPABILITY).
RotateFn pick_rotate() {
#if defined(__x86_64__) || defined(_M_X64)
  const std::string capability = at::get_cpu_capability();
  if (capability == "AVX512") {
    return &rotate_avx512;
  }
  if (capability == "AVX2") {
    return &rotate_avx2;
  }
#endif
  return &rotate_default;
}

// Rotates x into `out`, or into x itself when out is undefined.
at::Tensor rotary_cpu_impl(
    const char* op,
    const at::Tensor& x,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions,
    int64_t offset,
    c10::string_view layout,
    int64_t rotary_dim,
    bool inverse,
    bool in_place = false) {
  const int64_t rd = check_rotary_args(op, x, inv_freq, positions, layout, rotary_dim)
                         .guard_int(__FILE__, __LINE__);
  TORCH_CHECK(x.device().is_cpu(), op, ": the CPU kernel got x on ", x.device());
  Layouts layouts = parse_layout(layout);
  if (inverse) {
    std::swap(layouts.in, layouts.out);
  }
  at::Tensor out = in_place ? x : at::empty(x.sizes(), x.options().memory_format(at::MemoryFormat::Contiguous));
  if (x.numel() == 0) {
    return out;
  }
  const RotaryTables tables = make_rotary_tables(x, inv_freq, positions, offset);
  const RotateArgs args{x, out, tables.cos, tables.sin, tables.per_batch, layouts, inverse, rd, in_place};
  static const RotateFn rotate = pick_rotate();
  rotate(args);
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

void rotary_inplace_cpu(
    at::Tensor& x,
    const at::Tensor& inv_freq,
    const std::optional<at::Tensor>& positions,
    int64_t offset,
    c10::string_view layout,
    int64_t rotary_dim) {
  check_in_place_target(x);
  rotary_cpu_impl("rotary_", x, inv_freq, positions, offset, layout, rotary_dim, false, true);
}

} // namespace

TORCH_LIBRARY_IMPL(rotary_attention, CPU, m) {
  m.impl("rotary", &rotary_cpu);
  m.impl("rotary_backward", &rotary_backward_cpu);
  m.impl("rotary_", &rotary_inplace_cpu);
}

} // namespace rotary_attention::ops::cpu
