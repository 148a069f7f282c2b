// The CUDA kernel of rotary_attention::rotary, ::rotary_backward and ::rotary_,
// and its launch on the given stream. rotary_kernel.cpp checks the tensors
// (rotary_frontend.h) and describes the call in a RotaryLaunch.
//
// Each thread owns rotation pair j of one token (b, t): it computes the angle
// float(position) * inv_freq[j] and its sin/cos once, then rotates that pair
// in all H heads. Interleaved pairs are read (and written) with one 2-element
// vector access when the rows are contiguous and aligned. Math is fp32 (fp64
// for fp64 x or frequencies); products and sums are rounded separately (no
// FMA), as the original's `x1 * cos - x2 * sin`.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "rotary_launch.h"

namespace rotary_attention::ops::cuda {
namespace {

// How a stored element becomes math_t and back, rounding to nearest even as
// c10::Half and c10::BFloat16 do (torch builds CUDA code without the CUDA
// types' implicit conversions).
template <typename scalar_t>
struct Storage {
  template <typename math_t>
  __device__ static math_t load(scalar_t v) {
    return static_cast<math_t>(v);
  }
  template <typename math_t>
  __device__ static scalar_t store(math_t v) {
    return static_cast<scalar_t>(v);
  }
};
template <>
struct Storage<__half> {
  template <typename math_t>
  __device__ static float load(__half v) {
    return __half2float(v);
  }
  __device__ static __half store(float v) {
    return __float2half_rn(v);
  }
};
template <>
struct Storage<__nv_bfloat16> {
  template <typename math_t>
  __device__ static float load(__nv_bfloat16 v) {
    return __bfloat162float(v);
  }
  __device__ static __nv_bfloat16 store(float v) {
    return __float2bfloat16_rn(v);
  }
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
    const RotaryLaunch s) {
  const int64_t token = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  if (token >= s.tokens) {
    return;
  }
  const int64_t b = token / s.T, t = token % s.T;
  const int64_t pos = (positions ? positions[s.per_batch ? token : t] : t) + s.offset;
  const scalar_t* src = x + b * s.sb + t * s.st;
  scalar_t* dst = out + b * s.ob + t * s.ot;

  const int64_t half = s.rotary_dim / 2;
  for (int64_t j = threadIdx.x; j < half; j += blockDim.x) {
    // Angle and its sin/cos in the frequencies' dtype, as on the CPU.
    angle_t sn_a, cs_a;
    sin_cos(mul(static_cast<angle_t>(pos), inv_freq[j]), &sn_a, &cs_a);
    const math_t sn = static_cast<math_t>(sn_a), cs = static_cast<math_t>(cs_a);
    const int64_t i1 = In == PairLayout::Interleaved ? 2 * j : j;
    const int64_t i2 = In == PairLayout::Interleaved ? 2 * j + 1 : j + half;
    for (int64_t h = 0; h < s.H; ++h) {
      const scalar_t* row = src + h * s.sh;
      math_t x1, x2;
      if (In == PairLayout::Interleaved && s.pair_access) {
        const Pair<scalar_t> p = *reinterpret_cast<const Pair<scalar_t>*>(row + i1);
        x1 = Storage<scalar_t>::template load<math_t>(p.a);
        x2 = Storage<scalar_t>::template load<math_t>(p.b);
      } else {
        x1 = Storage<scalar_t>::template load<math_t>(row[i1 * s.sd]);
        x2 = Storage<scalar_t>::template load<math_t>(row[i2 * s.sd]);
      }
      const math_t r1 = Inverse ? add(mul(x1, cs), mul(x2, sn)) : sub(mul(x1, cs), mul(x2, sn));
      const math_t r2 = Inverse ? sub(mul(x2, cs), mul(x1, sn)) : add(mul(x1, sn), mul(x2, cs));
      scalar_t* row_out = dst + h * s.oh;
      if (Out == PairLayout::Interleaved && s.pair_store) {
        *reinterpret_cast<Pair<scalar_t>*>(row_out + 2 * j) =
            Pair<scalar_t>{Storage<scalar_t>::store(r1), Storage<scalar_t>::store(r2)};
      } else {
        const int64_t o1 = Out == PairLayout::Interleaved ? 2 * j : j;
        const int64_t o2 = Out == PairLayout::Interleaved ? 2 * j + 1 : j + half;
        row_out[o1 * s.od] = Storage<scalar_t>::store(r1);
        row_out[o2 * s.od] = Storage<scalar_t>::store(r2);
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
void launch(const RotaryLaunch& s) {
  // x: pairs; y: tokens per block, so a block holds ~256 threads.
  const int64_t bx = std::min<int64_t>(
      128, ((std::max<int64_t>(s.rotary_dim / 2, s.D - s.rotary_dim) + 31) / 32) * 32);
  const int64_t by = std::max<int64_t>(1, 256 / bx);
  const dim3 block(static_cast<unsigned>(bx), static_cast<unsigned>(by));
  const dim3 grid(static_cast<unsigned>((s.tokens + by - 1) / by));
  rotate_kernel<scalar_t, math_t, angle_t, In, Out, Inverse><<<grid, block, 0, s.stream>>>(
      static_cast<const scalar_t*>(s.x),
      static_cast<scalar_t*>(s.out),
      static_cast<const angle_t*>(s.inv_freq),
      s.positions,
      s);
}

template <typename scalar_t, typename math_t, typename angle_t>
void launch_layout(const RotaryLaunch& l) {
  with_layouts(l.layouts, l.inverse, [&]<PairLayout In, PairLayout Out, bool Inverse>() {
    launch<scalar_t, math_t, angle_t, In, Out, Inverse>(l);
  });
}

} // namespace

cudaError_t launch_rotary(const RotaryLaunch& l) {
  switch (l.element) {
    case Element::Float: // fp64 math exactly when the frequencies are fp64
      l.double_angles ? launch_layout<float, double, double>(l)
                      : launch_layout<float, float, float>(l);
      break;
    case Element::Double:
      l.double_angles ? launch_layout<double, double, double>(l)
                      : launch_layout<double, double, float>(l);
      break;
    case Element::Half:
      l.double_angles ? launch_layout<__half, float, double>(l)
                      : launch_layout<__half, float, float>(l);
      break;
    case Element::BFloat16:
      l.double_angles ? launch_layout<__nv_bfloat16, float, double>(l)
                      : launch_layout<__nv_bfloat16, float, float>(l);
      break;
  }
  return cudaGetLastError();
}

} // namespace rotary_attention::ops::cuda
