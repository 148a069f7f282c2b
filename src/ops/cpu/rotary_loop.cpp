// The CPU rotation loop, compiled once per instruction set: CMake sets the
// flags, CPU_CAPABILITY (the namespace of this copy, and of the at::vec code
// it instantiates) and CPU_CAPABILITY_<impl> (which at::vec implementation).
// -ffp-contract=off keeps x1 * c - x2 * s as two roundings, as in the original.
//
// One pass over x: each (b, t) token's H rows of D features are read once
// (in place, or through a small per-thread buffer when strided or half
// precision), rotated with at::vec and written once; cos/sin rows are read
// once per token and shared by its heads.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <vector>

#include "rotary_loop.h"
#if defined(CPU_CAPABILITY_AVX512)
#include "rotary_row_bf16_avx512.h"
#endif

#ifndef CPU_CAPABILITY
#error "CMake compiles this file with CPU_CAPABILITY set"
#endif

namespace rotary_attention::ops::cpu::CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

// Two fp32 vectors rounded (to nearest even) into one 16-bit vector.
template <typename scalar_t>
inline Vectorized<scalar_t> narrow(const Vectorized<float>& lo, const Vectorized<float>& hi) {
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
    // One instruction instead of ATen's integer rounding, where it gives ATen's bits.
    if (bf16_avx512::hardware_rounding_exact(lo, hi)) {
      return Vectorized<scalar_t>((__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
  }
#endif
  return at::vec::convert_from_float<scalar_t>(lo, hi);
}

// One row of `half` pairs. The expression order matches the original's
// `x1 * cos - x2 * sin`, `x1 * sin + x2 * cos`, so fp32 results are its floats.
template <typename T, PairLayout In, PairLayout Out, bool Inverse>
inline void rotate_row(const T* in, T* out, const T* cos, const T* sin, int64_t half) {
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

// Contiguous row conversions to and from the math type, vectorised for the
// 16-bit floats (at::vec::convert handles the rest).
template <typename scalar_t, typename math_t>
inline void load_row(const scalar_t* src, math_t* dst, int64_t n) {
  if constexpr (at::vec::is_reduced_floating_point_v<scalar_t>) {
    using VecS = Vectorized<scalar_t>;
    constexpr int64_t VF = Vectorized<float>::size();
    int64_t i = 0;
    for (; i + VecS::size() <= n; i += VecS::size()) {
      auto [lo, hi] = at::vec::convert_to_float<scalar_t>(VecS::loadu(src + i));
      lo.store(dst + i);
      hi.store(dst + i + VF);
    }
    for (; i < n; ++i) {
      dst[i] = static_cast<float>(src[i]);
    }
  } else {
    at::vec::convert(src, dst, n);
  }
}

template <typename math_t, typename scalar_t>
inline void store_row(const math_t* src, scalar_t* dst, int64_t n) {
  if constexpr (at::vec::is_reduced_floating_point_v<scalar_t>) {
    using VecF = Vectorized<float>;
    constexpr int64_t VS = Vectorized<scalar_t>::size();
    int64_t i = 0;
    for (; i + VS <= n; i += VS) {
      narrow<scalar_t>(VecF::loadu(src + i), VecF::loadu(src + i + VecF::size())).store(dst + i);
    }
    for (; i < n; ++i) {
      dst[i] = static_cast<scalar_t>(src[i]);
    }
  } else {
    at::vec::convert(src, dst, n);
  }
}

// One contiguous fp16/bf16 row straight from x to out, converting in
// registers: 2V pairs per step (V fp32 lanes), so each load and store is a
// whole 16-bit vector. Needs half % (2V) == 0; same roundings as the
// buffered path (exact widening, one round-to-nearest-even narrowing).
template <typename scalar_t, PairLayout In, PairLayout Out, bool Inverse>
inline void rotate_row_16bit(
    const scalar_t* in, scalar_t* out, const float* cos, const float* sin, int64_t half) {
  using VecF = Vectorized<float>;
  using VecS = Vectorized<scalar_t>;
  constexpr int64_t V = VecF::size();
  static_assert(VecS::size() == 2 * V, "a 16-bit vector holds two fp32 vectors");
  auto rotate =
      [](const VecF& x1, const VecF& x2, const VecF& c, const VecF& s, VecF& o1, VecF& o2) {
        if constexpr (Inverse) {
          o1 = x1 * c + x2 * s;
          o2 = x2 * c - x1 * s;
        } else {
          o1 = x1 * c - x2 * s;
          o2 = x1 * s + x2 * c;
        }
      };
  for (int64_t j = 0; j < half; j += 2 * V) {
    VecF x1a, x2a, x1b, x2b;
    if constexpr (In == PairLayout::Interleaved) {
      auto [a0, a1] = at::vec::convert_to_float<scalar_t>(VecS::loadu(in + 2 * j));
      auto [b0, b1] = at::vec::convert_to_float<scalar_t>(VecS::loadu(in + 2 * j + 2 * V));
      std::tie(x1a, x2a) = at::vec::deinterleave2(a0, a1);
      std::tie(x1b, x2b) = at::vec::deinterleave2(b0, b1);
    } else {
      std::tie(x1a, x1b) = at::vec::convert_to_float<scalar_t>(VecS::loadu(in + j));
      std::tie(x2a, x2b) = at::vec::convert_to_float<scalar_t>(VecS::loadu(in + half + j));
    }
    VecF o1a, o2a, o1b, o2b;
    rotate(x1a, x2a, VecF::loadu(cos + j), VecF::loadu(sin + j), o1a, o2a);
    rotate(x1b, x2b, VecF::loadu(cos + j + V), VecF::loadu(sin + j + V), o1b, o2b);
    if constexpr (Out == PairLayout::Interleaved) {
      auto [p0, p1] = at::vec::interleave2(o1a, o2a);
      auto [q0, q1] = at::vec::interleave2(o1b, o2b);
      narrow<scalar_t>(p0, p1).store(out + 2 * j);
      narrow<scalar_t>(q0, q1).store(out + 2 * j + 2 * V);
    } else {
      narrow<scalar_t>(o1a, o1b).store(out + j);
      narrow<scalar_t>(o2a, o2b).store(out + half + j);
    }
  }
}

template <typename scalar_t, typename math_t, PairLayout In, PairLayout Out, bool Inverse>
void rotate_all(const RotateArgs& a) {
  const at::Tensor& x = a.x;
  const int64_t B = x.size(0), T = x.size(1), H = x.size(2), D = x.size(3);
  const int64_t sb = x.stride(0), st = x.stride(1), sh = x.stride(2), sd = x.stride(3);
  const int64_t rd = a.rotary_dim, half = rd / 2;
  const scalar_t* x_data = x.const_data_ptr<scalar_t>();
  scalar_t* out_data = a.out.mutable_data_ptr<scalar_t>();
  const at::Tensor& o = a.out; // x itself for the in-place variant
  const int64_t ob = o.stride(0), ot = o.stride(1), oh = o.stride(2), od = o.stride(3);
  const math_t* cos_data = a.cos.const_data_ptr<math_t>();
  const math_t* sin_data = a.sin.const_data_ptr<math_t>();
  const bool per_batch = a.per_batch;
  constexpr bool same_type = std::is_same_v<scalar_t, math_t>;
  const bool direct_in = same_type && sd == 1; // rows read in place
  // Rows are written in place unless the output aliases the input (in-place
  // variant: a row's pairs are read and written at different places) or is strided.
  const bool direct_out = same_type && od == 1 && !a.in_place;
  // 16-bit rows that are contiguous on both sides skip the fp32 row buffers.
  constexpr bool reduced =
      at::vec::is_reduced_floating_point_v<scalar_t> && std::is_same_v<math_t, float>;
  const bool fused_16bit = reduced && sd == 1 && od == 1 && !a.in_place && rd == D &&
                           half % (2 * Vectorized<float>::size()) == 0;
#if defined(CPU_CAPABILITY_AVX512)
  const bool bf16_rows = std::is_same_v<scalar_t, at::BFloat16> && sd == 1 && od == 1 &&
                         !a.in_place && rd == D && half % 16 == 0;
#endif

  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(H * D, 1));
  at::parallel_for(0, B * T, grain, [&](int64_t begin, int64_t end) {
    std::vector<math_t> in_buf(direct_in ? 0 : D);
    std::vector<math_t> out_buf(direct_out ? 0 : D);
    for (int64_t token = begin; token < end; ++token) {
      const int64_t b = token / T, t = token % T;
      const int64_t p = per_batch ? token : t;
      const math_t* cos_row = cos_data + p * half;
      const math_t* sin_row = sin_data + p * half;
#if defined(CPU_CAPABILITY_AVX512)
      if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
        if (bf16_rows) {
          bf16_avx512::rotate_token<In, Out, Inverse>(
              x_data + b * sb + t * st,
              out_data + b * ob + t * ot,
              H,
              sh,
              oh,
              cos_row,
              sin_row,
              half);
          continue;
        }
      }
#endif
      for (int64_t h = 0; h < H; ++h) {
        const scalar_t* src = x_data + b * sb + t * st + h * sh;
        scalar_t* dst = out_data + b * ob + t * ot + h * oh;
        if constexpr (reduced) {
          if (fused_16bit) {
            rotate_row_16bit<scalar_t, In, Out, Inverse>(src, dst, cos_row, sin_row, half);
            continue;
          }
        }
        const math_t* in;
        if (direct_in) {
          in = reinterpret_cast<const math_t*>(src);
        } else {
          if (sd == 1) {
            load_row(src, in_buf.data(), D);
          } else {
            for (int64_t d = 0; d < D; ++d) {
              in_buf[d] = static_cast<math_t>(src[d * sd]);
            }
          }
          in = in_buf.data();
        }
        math_t* row_out = direct_out ? reinterpret_cast<math_t*>(dst) : out_buf.data();
        rotate_row<math_t, In, Out, Inverse>(in, row_out, cos_row, sin_row, half);
        std::copy(in + rd, in + D, row_out + rd); // features past rotary_dim pass through
        if (!direct_out) {
          if (od == 1) {
            store_row(row_out, dst, D);
          } else {
            for (int64_t d = 0; d < D; ++d) {
              dst[d * od] = static_cast<scalar_t>(row_out[d]);
            }
          }
        }
      }
    }
  });
}

template <typename scalar_t, typename math_t>
void rotate_typed(const RotateArgs& a) {
  with_layouts(a.layouts, a.inverse, [&]<PairLayout In, PairLayout Out, bool Inverse>() {
    rotate_all<scalar_t, math_t, In, Out, Inverse>(a);
  });
}

} // namespace

void rotate(const RotateArgs& a) {
  const bool double_math = a.cos.scalar_type() == at::kDouble;
  switch (a.x.scalar_type()) {
    case at::kFloat:
      return double_math ? rotate_typed<float, double>(a) : rotate_typed<float, float>(a);
    case at::kDouble:
      return rotate_typed<double, double>(a);
    case at::kHalf:
      return rotate_typed<at::Half, float>(a);
    case at::kBFloat16:
      return rotate_typed<at::BFloat16, float>(a);
    default:
      TORCH_CHECK(false, "rotary: unsupported dtype ", a.x.scalar_type());
  }
}

} // namespace rotary_attention::ops::cpu::CPU_CAPABILITY
