// CPU kernel of rotary_attention::rotary and ::rotary_backward.
//
// One pass over x: each (b, t, h) row of D features is read once (directly, or
// through a small per-thread buffer when it is strided or half precision),
// rotated with at::vec and written once. cos/sin come from tables computed
// once per (position, frequency).

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <vector>

#include "../rotary_args.h"
#include "../rotary_tables.h"

namespace rotary_attention::ops {
namespace {

using at::vec::Vectorized;

// Rotates one row of `half` pairs. `Inverse` applies the transpose (rotation
// by -angle). The expression order matches the original's
// `x1 * cos - x2 * sin`, `x1 * sin + x2 * cos`, so fp32 results are the same
// floats.
template <typename T, PairLayout In, PairLayout Out, bool Inverse>
void rotate_row(const T* in, T* out, const T* cos, const T* sin, int64_t half) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  int64_t j = 0;
  for (; j + V <= half; j += V) {
    Vec x1, x2;
    if constexpr (In == PairLayout::Interleaved) {
      std::tie(x1, x2) = at::vec::deinterleave2(Vec::loadu(in + 2 * j), Vec::loadu(in + 2 * j + V));
    } else {
      x1 = Vec::loadu(in + j);
      x2 = Vec::loadu(in + half + j);
    }
    const Vec c = Vec::loadu(cos + j);
    const Vec s = Vec::loadu(sin + j);
    Vec o1, o2;
    if constexpr (Inverse) {
      o1 = x1 * c + x2 * s;
      o2 = x2 * c - x1 * s;
    } else {
      o1 = x1 * c - x2 * s;
      o2 = x1 * s + x2 * c;
    }
    if constexpr (Out == PairLayout::Interleaved) {
      auto [a, b] = at::vec::interleave2(o1, o2);
      a.store(out + 2 * j);
      b.store(out + 2 * j + V);
    } else {
      o1.store(out + j);
      o2.store(out + half + j);
    }
  }
  for (; j < half; ++j) {
    const T x1 = In == PairLayout::Interleaved ? in[2 * j] : in[j];
    const T x2 = In == PairLayout::Interleaved ? in[2 * j + 1] : in[half + j];
    const T c = cos[j];
    const T s = sin[j];
    const T o1 = Inverse ? x1 * c + x2 * s : x1 * c - x2 * s;
    const T o2 = Inverse ? x2 * c - x1 * s : x1 * s + x2 * c;
    if constexpr (Out == PairLayout::Interleaved) {
      out[2 * j] = o1;
      out[2 * j + 1] = o2;
    } else {
      out[j] = o1;
      out[half + j] = o2;
    }
  }
}

template <typename T>
using RowFn = void (*)(const T*, T*, const T*, const T*, int64_t);

template <typename T, bool Inverse>
RowFn<T> pick_row_fn(Layouts l) {
  using P = PairLayout;
  if (l.in == P::Interleaved) {
    return l.out == P::Interleaved ? &rotate_row<T, P::Interleaved, P::Interleaved, Inverse>
                                   : &rotate_row<T, P::Interleaved, P::Split, Inverse>;
  }
  return l.out == P::Interleaved ? &rotate_row<T, P::Split, P::Interleaved, Inverse>
                                 : &rotate_row<T, P::Split, P::Split, Inverse>;
}

template <typename scalar_t, typename math_t>
void rotate_all(
    const at::Tensor& x,
    at::Tensor& out,
    const RotaryTables& tables,
    Layouts layouts,
    bool inverse,
    int64_t rotary_dim) {
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3);
  const int64_t sb = x.stride(0), st = x.stride(1), sh = x.stride(2), sd = x.stride(3);
  const int64_t half = rotary_dim / 2;
  const scalar_t* x_data = x.const_data_ptr<scalar_t>();
  scalar_t* out_data = out.mutable_data_ptr<scalar_t>();
  const math_t* cos_data = tables.cos.const_data_ptr<math_t>();
  const math_t* sin_data = tables.sin.const_data_ptr<math_t>();
  const bool per_batch = tables.per_batch;
  const RowFn<math_t> row_fn =
      inverse ? pick_row_fn<math_t, true>(layouts) : pick_row_fn<math_t, false>(layouts);
  // Rows are read in place when they already are contiguous math_t.
  constexpr bool same_type = std::is_same_v<scalar_t, math_t>;
  const bool direct_in = same_type && sd == 1;

  const int64_t rows = B * T * H;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
    std::vector<math_t> in_buf(direct_in ? 0 : D);
    std::vector<math_t> out_buf(same_type ? 0 : D);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t h = r % H;
      const int64_t t = (r / H) % T;
      const int64_t b = r / (H * T);
      const scalar_t* src = x_data + b * sb + t * st + h * sh;
      scalar_t* dst = out_data + r * D;
      const math_t* in;
      if constexpr (same_type) {
        if (direct_in) {
          in = src;
        } else {
          for (int64_t d = 0; d < D; ++d) {
            in_buf[d] = src[d * sd];
          }
          in = in_buf.data();
        }
      } else {
        if (sd == 1) {
          at::vec::convert(src, in_buf.data(), D);
        } else {
          for (int64_t d = 0; d < D; ++d) {
            in_buf[d] = static_cast<math_t>(src[d * sd]);
          }
        }
        in = in_buf.data();
      }
      math_t* row_out;
      if constexpr (same_type) {
        row_out = dst;
      } else {
        row_out = out_buf.data();
      }
      const int64_t p = per_batch ? b * T + t : t;
      row_fn(in, row_out, cos_data + p * half, sin_data + p * half, half);
      // Features past rotary_dim pass through unchanged.
      for (int64_t d = rotary_dim; d < D; ++d) {
        row_out[d] = in[d];
      }
      if constexpr (!same_type) {
        at::vec::convert(row_out, dst, D);
      }
    }
  });
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
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rotary_cpu", [&] {
    if (tables.cos.scalar_type() == at::kDouble) {
      rotate_all<scalar_t, double>(x, out, tables, layouts, inverse, rd);
    } else {
      rotate_all<scalar_t, float>(x, out, tables, layouts, inverse, rd);
    }
  });
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

} // namespace rotary_attention::ops
