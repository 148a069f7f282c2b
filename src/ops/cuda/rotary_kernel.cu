// CUDA kernels of rotary_attention::rotary, ::rotary_backward and ::rotary_:
// the shared front end (rotary_frontend.h), then one launch on the current stream.
//
// Each thread owns rotation pair j of one token (b, t): it computes the angle
// float(position) * inv_freq[j] and its sin/cos once, then rotates that pair
// in all H heads. Interleaved pairs are read (and written) with one 2-element
// vector access when the rows are contiguous and aligned. Math is fp32 (fp64
// for fp64 x or frequencies); products and sums are rounded separately (no
// FMA), as the original's `x1 * cos - x2 * sin`.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>

#include "../rotary_frontend.h"

namespace rotary_attention::ops::cuda {
namespace {

struct Shape {
  int64_t tokens, T, H, D;
  int64_t sb, st, sh, sd; // x's strides, in elements
  int64_t ob, ot, oh, od; // out's strides (out is x for the in-place variant)
  int64_t half;           // rotary_dim / 2
  int64_t rotary_dim;
  int64_t offset;
  bool per_batch;   // positions are (B, T), else (T,)
  bool pair_access; // interleaved pairs may be read as one aligned vector
  bool pair_store;  // ... and written as one
};

template <typename T>
struct alignas(2 * sizeof(T)) Pair {
  T a, b;
};

__device__ __forceinline__ void sin_cos(float a, float* s, float* c) {
  sincosf(a, s, c);
}
__device__ __forceinline__ void sin_cos(double a, double* s, double* c) {
  sincos(a, s, c);
}
__device__ __forceinline__ float mul(float a, float b) {
  return __fmul_rn(a, b);
}
__device__ __forceinline__ double mul(double a, double b) {
  return __dmul_rn(a, b);
}
__device__ __forceinline__ float add(float a, float b) {
  return __fadd_rn(a, b);
}
__device__ __forceinline__ double add(double a, double b) {
  return __dadd_rn(a, b);
}
__device__ __forceinline__ float sub(float a, float b) {
  return __fsub_rn(a, b);
}
__device__ __forceinline__ double sub(double a, double b) {
  return __dsub_rn(a, b);
}

template <
    typename scalar_t,
    typename math_t,
    typename angle_t,
    PairLayout In,
    PairLayout Out,
    bool Inverse>
__global__ void rotate_kernel(
    const scalar_t* x, // not __restrict__: out is x for the in-place variant
    scalar_t* out,
    const angle_t* __restrict__ inv_freq,
    const int64_t* __restrict__ positions,
    Shape s) {
  const int64_t token = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (token >= s.tokens) {
    return;
  }
  const int64_t b = token / s.T, t = token % s.T;
  const int64_t pos = (positions ? positions[s.per_batch ? token : t] : t) + s.offset;
  const scalar_t* src = x + b * s.sb + t * s.st;
  scalar_t* dst = out + b * s.ob + t * s.ot;

  for (int64_t j = threadIdx.x; j < s.half; j += blockDim.x) {
    // Angle and its sin/cos in the frequencies' dtype, as on the CPU.
    angle_t sn_a, cs_a;
    sin_cos(mul(static_cast<angle_t>(pos), inv_freq[j]), &sn_a, &cs_a);
    const math_t sn = static_cast<math_t>(sn_a), cs = static_cast<math_t>(cs_a);
    const int64_t i1 = In == PairLayout::Interleaved ? 2 * j : j;
    const int64_t i2 = In == PairLayout::Interleaved ? 2 * j + 1 : j + s.half;
    for (int64_t h = 0; h < s.H; ++h) {
      const scalar_t* row = src + h * s.sh;
      math_t x1, x2;
      if (In == PairLayout::Interleaved && s.pair_access) {
        const Pair<scalar_t> p = *reinterpret_cast<const Pair<scalar_t>*>(row + i1);
        x1 = static_cast<math_t>(p.a);
        x2 = static_cast<math_t>(p.b);
      } else {
        x1 = static_cast<math_t>(row[i1 * s.sd]);
        x2 = static_cast<math_t>(row[i2 * s.sd]);
      }
      const math_t r1 = Inverse ? add(mul(x1, cs), mul(x2, sn)) : sub(mul(x1, cs), mul(x2, sn));
      const math_t r2 = Inverse ? sub(mul(x2, cs), mul(x1, sn)) : add(mul(x1, sn), mul(x2, cs));
      scalar_t* row_out = dst + h * s.oh;
      if (Out == PairLayout::Interleaved && s.pair_store) {
        *reinterpret_cast<Pair<scalar_t>*>(row_out + 2 * j) =
            Pair<scalar_t>{static_cast<scalar_t>(r1), static_cast<scalar_t>(r2)};
      } else {
        const int64_t o1 = Out == PairLayout::Interleaved ? 2 * j : j;
        const int64_t o2 = Out == PairLayout::Interleaved ? 2 * j + 1 : j + s.half;
        row_out[o1 * s.od] = static_cast<scalar_t>(r1);
        row_out[o2 * s.od] = static_cast<scalar_t>(r2);
      }
    }
  }
  // Features past rotary_dim pass through.
  for (int64_t d = s.rotary_dim + threadIdx.x; d < s.D; d += blockDim.x) {
    for (int64_t h = 0; h < s.H; ++h) {
      dst[h * s.oh + d * s.od] = src[h * s.sh + d * s.sd];
    }
  }
}

template <
    typename scalar_t,
    typename math_t,
    typename angle_t,
    PairLayout In,
    PairLayout Out,
    bool Inverse>
void launch(
    const at::Tensor& x,
    at::Tensor& out,
    const at::Tensor& freq,
    const at::Tensor& pos,
    const Shape& s) {
  // x: pairs; y: tokens per block, so a block holds ~256 threads.
  const int64_t bx =
      std::min<int64_t>(128, ((std::max<int64_t>(s.half, s.D - s.rotary_dim) + 31) / 32) * 32);
  const int64_t by = std::max<int64_t>(1, 256 / bx);
  const dim3 block(static_cast<unsigned>(bx), static_cast<unsigned>(by));
  const dim3 grid(static_cast<unsigned>((s.tokens + by - 1) / by));
  rotate_kernel<scalar_t, math_t, angle_t, In, Out, Inverse>
      <<<grid, block, 0, c10::cuda::getCurrentCUDAStream()>>>(
          x.const_data_ptr<scalar_t>(),
          out.mutable_data_ptr<scalar_t>(),
          freq.const_data_ptr<angle_t>(),
          pos.defined() ? pos.const_data_ptr<int64_t>() : nullptr,
          s);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename math_t, typename angle_t>
void launch_layout(
    Layouts l,
    bool inverse,
    const at::Tensor& x,
    at::Tensor& out,
    const at::Tensor& freq,
    const at::Tensor& pos,
    const Shape& s) {
  using P = PairLayout;
#define RA_CASE(IN, OUT)                                                                        \
  if (l.in == P::IN && l.out == P::OUT) {                                                       \
    return inverse                                                                              \
               ? launch<scalar_t, math_t, angle_t, P::IN, P::OUT, true>(x, out, freq, pos, s)   \
               : launch<scalar_t, math_t, angle_t, P::IN, P::OUT, false>(x, out, freq, pos, s); \
  }
  RA_CASE(Interleaved, Half)
  RA_CASE(Half, Interleaved)
  RA_CASE(Interleaved, Interleaved)
  RA_CASE(Half, Half)
#undef RA_CASE
}

struct Cuda {
  static constexpr c10::DeviceType type = c10::DeviceType::CUDA;
  // A pair is written where other threads' pairs are read when the layouts
  // differ: the front end goes through a copy then.
  static constexpr bool in_place_across_layouts = false;
  static void rotate(const RotaryCall& c);
};

void Cuda::rotate(const RotaryCall& c) {
  const at::Tensor& x = c.x;
  at::Tensor& out = c.out;
  const at::Tensor& inv_freq = c.inv_freq;
  const c10::cuda::CUDAGuard guard(x.device());
  // Angles in inv_freq's dtype (fp32 for 16-bit frequencies), math as on the CPU.
  const bool double_math = rotary_math_dtype(x, inv_freq) == at::kDouble;
  const bool double_angles = rotary_angle_dtype(inv_freq) == at::kDouble;
  const at::Tensor freq = inv_freq.to(rotary_angle_dtype(inv_freq)).contiguous();
  const at::Tensor pos =
      c.positions.has_value() ? c.positions->to(at::kLong).contiguous() : at::Tensor();

  auto pairs_aligned = [](const at::Tensor& t) {
    return t.stride(3) == 1 && t.stride(2) % 2 == 0 && t.stride(1) % 2 == 0 &&
           t.stride(0) % 2 == 0 &&
           reinterpret_cast<uintptr_t>(t.const_data_ptr()) % (2 * t.element_size()) == 0;
  };
  const Shape s{
      x.size(0) * x.size(1),
      x.size(1),
      x.size(2),
      x.size(3),
      x.stride(0),
      x.stride(1),
      x.stride(2),
      x.stride(3),
      out.stride(0),
      out.stride(1),
      out.stride(2),
      out.stride(3),
      c.rotary_dim / 2,
      c.rotary_dim,
      c.offset,
      pos.defined() && pos.dim() == 2,
      pairs_aligned(x),
      pairs_aligned(out)};
  switch (x.scalar_type()) {
    case at::kFloat: // fp64 math exactly when the frequencies are fp64
      double_math ? launch_layout<float, double, double>(c.layouts, c.inverse, x, out, freq, pos, s)
                  : launch_layout<float, float, float>(c.layouts, c.inverse, x, out, freq, pos, s);
      break;
    case at::kDouble:
      double_angles
          ? launch_layout<double, double, double>(c.layouts, c.inverse, x, out, freq, pos, s)
          : launch_layout<double, double, float>(c.layouts, c.inverse, x, out, freq, pos, s);
      break;
    case at::kHalf:
      double_angles
          ? launch_layout<at::Half, float, double>(c.layouts, c.inverse, x, out, freq, pos, s)
          : launch_layout<at::Half, float, float>(c.layouts, c.inverse, x, out, freq, pos, s);
      break;
    case at::kBFloat16:
      double_angles
          ? launch_layout<at::BFloat16, float, double>(c.layouts, c.inverse, x, out, freq, pos, s)
          : launch_layout<at::BFloat16, float, float>(c.layouts, c.inverse, x, out, freq, pos, s);
      break;
    default:
      TORCH_CHECK(false, "rotary: unsupported dtype ", x.scalar_type());
  }
}

} // namespace

TORCH_LIBRARY_IMPL(rotary_attention, CUDA, m) {
  RotaryKernels<Cuda>::register_in(m);
}

} // namespace rotary_attention::ops::cuda
