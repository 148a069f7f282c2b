#include "few_rows_linear.h"

#include "dense_linear.h"

#include "rotary_attention/ops/rotary.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace rotary_attention::whisper::detail {

namespace {

// N floats: GCC's vector extension. Each kernel uses its instruction set's
// own register width (16 for AVX-512, 8 for AVX2, 4 for SSE): a vector wider
// than the set's registers is not kept in registers at all but lowered
// through the stack (16 lanes under AVX2 ran at a third of the speed). (Only
// ever inlined: GCC's note that passing one changes the ABI does not apply.)
#pragma GCC diagnostic ignored "-Wpsabi"
// (Plain typedefs: GCC drops vector_size from an alias template's type.)
typedef float Floats2 __attribute__((vector_size(2 * sizeof(float))));
typedef float Floats4 __attribute__((vector_size(4 * sizeof(float))));
typedef float Floats8 __attribute__((vector_size(8 * sizeof(float))));
typedef float Floats16 __attribute__((vector_size(16 * sizeof(float))));

template <typename V>
constexpr int kLanes = sizeof(V) / sizeof(float);

template <typename V>
inline __attribute__((always_inline)) V load_lanes(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// How each kernel reads its weights as Vec: fp32 as they are, int8 widened
// to floats. GCC scalarises __builtin_convertvector from int8 lanes, so each
// instruction set gets its own widening (vpmovsxbd, vcvtdq2ps), inlined into
// a kernel built for that set.
template <typename V>
struct Plain {
  using Vec = V;
  static inline __attribute__((always_inline)) V load(const float* p) {
    return load_lanes<V>(p);
  }
};
template <typename V>
struct WidenScalar {
  using Vec = V;
  static inline __attribute__((always_inline)) V load(const int8_t* p) {
    V v;
    for (int l = 0; l < kLanes<V>; ++l) {
      v[l] = static_cast<float>(p[l]);
    }
    return v;
  }
};
#if defined(__x86_64__)
// (GCC 12 warns of the "undefined" vector inside _mm512_cvtepi8_epi32 once
// flatten inlines it: a false positive.)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
struct WidenAvx2 {
  using Vec = Floats8;
  static inline __attribute__((target("avx2,fma"))) Vec load(const int8_t* p) {
    const __m256 all = _mm256_cvtepi32_ps(
        _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
    Vec v;
    std::memcpy(&v, &all, sizeof(v));
    return v;
  }
};
struct WidenAvx512 {
  using Vec = Floats16;
  static inline __attribute__((target("avx512f"))) Vec load(const int8_t* p) {
    const __m512 all = _mm512_cvtepi32_ps(
        _mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
    Vec v;
    std::memcpy(&v, &all, sizeof(v));
    return v;
  }
};
#endif

// The sum of a vector's lanes, halves added to halves (four dependent adds
// for 16 lanes, where adding them in turn takes sixteen: with few columns, or
// a beam's rows, these sums are a large part of the work).
template <typename V>
inline __attribute__((always_inline)) float lane_sum(V v) {
  if constexpr (kLanes<V> == 16) {
    return lane_sum(
        __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7) +
        __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15));
  } else if constexpr (kLanes<V> == 8) {
    return lane_sum(
        __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7));
  } else {
    static_assert(kLanes<V> == 4, "lane_sum: 4, 8 or 16 lanes");
    const Floats2 pair = __builtin_shufflevector(v, v, 0, 1) + __builtin_shufflevector(v, v, 2, 3);
    return pair[0] + pair[1];
  }
}

// One product y = x W^T + bias over a few rows: x (rows, k), W (n, k), fp32 or
// int8 with an fp32 scale per row (else scale is null), bias (n,) or null,
// y (rows, n).
template <typename W>
struct Product {
  const float* x;
  int64_t rows;
  int64_t k;
  const W* weight;
  const float* scale;
  const float* bias;
  float* y;
  int64_t n;
};

// Output o of R rows: the weight row w meets all R rows of x, whose sums
// stay in registers (R is a constant, so the compiler unrolls the row loop).
// int8 weights are widened as they are read, and each output's sum is
// multiplied by its row's scale.
template <int R, typename Widen, typename W>
inline __attribute__((always_inline)) void finish_output(
    const typename Widen::Vec* acc, const Product<W>& p, const W* w, int64_t body, int64_t o) {
  for (int r = 0; r < R; ++r) {
    float sum = lane_sum(acc[r]);
    for (int64_t i = body; i < p.k; ++i) {
      sum += p.x[r * p.k + i] * static_cast<float>(w[i]);
    }
    if (p.scale != nullptr) {
      sum *= p.scale[o];
    }
    p.y[r * p.n + o] = sum + (p.bias != nullptr ? p.bias[o] : 0.0f);
  }
}

// Outputs [begin, end) of p's R rows, each weight row read once. With Paired,
// outputs o and o + half (half of the range apart) are computed side by side:
// two streams through far-apart weights keep more reads in flight than one
// (measured: about a tenth more bandwidth for one row; outputs next to each
// other, one stream with two rows per step, measured slower).
template <int R, bool Paired, typename Widen, typename W>
inline __attribute__((always_inline)) void rows_times_weights(
    const Product<W>& p, int64_t begin, int64_t end) {
  using V = typename Widen::Vec;
  const int64_t k = p.k;
  const int64_t body = k - k % kLanes<V>;
  const int64_t half = Paired ? (end - begin) / 2 : 0;
  for (int64_t o = begin; o < begin + half; ++o) {
    const W* w = p.weight + o * k;
    const W* v = w + half * k;
    V acc[R] = {}, acc2[R] = {};
    for (int64_t i = 0; i < body; i += kLanes<V>) {
      const V wl = Widen::load(w + i), vl = Widen::load(v + i);
      for (int r = 0; r < R; ++r) {
        const V xl = load_lanes<V>(p.x + r * k + i);
        acc[r] += xl * wl;
        acc2[r] += xl * vl;
      }
    }
    finish_output<R, Widen>(acc, p, w, body, o);
    finish_output<R, Widen>(acc2, p, v, body, o + half);
  }
  for (int64_t o = begin + 2 * half; o < end; ++o) {
    const W* w = p.weight + o * k;
    V acc[R] = {};
    for (int64_t i = 0; i < body; i += kLanes<V>) {
      const V wl = Widen::load(w + i);
      for (int r = 0; r < R; ++r) {
        acc[r] += load_lanes<V>(p.x + r * k + i) * wl;
      }
    }
    finish_output<R, Widen>(acc, p, w, body, o);
  }
}

// rows_times_weights<p.rows> for p.rows in 1..8, the constant a template
// needs picked from the runtime count (one instantiation each).
template <int PairedRows, typename Widen, typename W, int... I>
inline __attribute__((always_inline)) void rows_in_registers(
    std::integer_sequence<int, I...>, const Product<W>& p, int64_t begin, int64_t end) {
  ((p.rows == I + 1 &&
    (rows_times_weights<I + 1, (I + 1 <= PairedRows), Widen>(p, begin, end), true)) ||
   ...);
}

// Up to 8 rows at a time (8 vectors of sums in registers, with room for the
// weights); up to PairedRows of them over two weight streams (twice the sums).
template <int PairedRows, typename Widen, typename W>
inline __attribute__((always_inline)) void all_rows(
    const Product<W>& p, int64_t begin, int64_t end) {
  for (int64_t first = 0; first < p.rows; first += 8) {
    Product<W> block = p; // (a local copy: the compiler keeps its fields in registers)
    block.x += first * p.k;
    block.y += first * p.n;
    block.rows = std::min<int64_t>(p.rows - first, 8);
    rows_in_registers<PairedRows, Widen>(std::make_integer_sequence<int, 8>{}, block, begin, end);
  }
}

// Each kernel is built for each instruction set (flatten: what it calls is
// inlined and built for that set too), and the set is picked once as the
// library's own loops pick theirs: ATen's choice, capped by
// ROTARY_ATTENTION_CPU_CAPABILITY (rotary_attention::cpu_kernel_capability()).
// PairedRows: how many rows' sums fit twice in the set's registers, beside
// two weight vectors and a row of x (AVX-512: 32 of them; AVX2 and SSE: 16).
#define RA_FEW_ROWS_KERNEL(name, attributes, PairedRows, Widen, W)        \
  attributes void name(const Product<W>& p, int64_t begin, int64_t end) { \
    all_rows<PairedRows, Widen>(p, begin, end);                           \
  }
RA_FEW_ROWS_KERNEL(fp32_default, , 6, Plain<Floats4>, float)
RA_FEW_ROWS_KERNEL(int8_default, , 6, WidenScalar<Floats4>, int8_t)
#if defined(__x86_64__)
RA_FEW_ROWS_KERNEL(
    fp32_avx2, __attribute__((target("avx2,fma"), flatten)), 6, Plain<Floats8>, float)
RA_FEW_ROWS_KERNEL(
    fp32_avx512, __attribute__((target("avx512f"), flatten)), 8, Plain<Floats16>, float)
RA_FEW_ROWS_KERNEL(int8_avx2, __attribute__((target("avx2,fma"), flatten)), 6, WidenAvx2, int8_t)
RA_FEW_ROWS_KERNEL(int8_avx512, __attribute__((target("avx512f"), flatten)), 8, WidenAvx512, int8_t)
#endif
#undef RA_FEW_ROWS_KERNEL

enum class InstructionSet { kDefault, kAvx2, kAvx512 };

InstructionSet instruction_set() {
  static const InstructionSet chosen = [] {
#if defined(__x86_64__)
    const auto capability = rotary_attention::cpu_kernel_capability();
    if (capability.rfind("AVX512", 0) == 0) {
      return InstructionSet::kAvx512;
    }
    if (capability == "AVX2") {
      return InstructionSet::kAvx2;
    }
#endif
    return InstructionSet::kDefault;
  }();
  return chosen;
}

template <typename W>
using Kernel = void (*)(const Product<W>&, int64_t, int64_t);

template <typename W>
Kernel<W> kernel_for_this_cpu() {
  constexpr bool fp32 = std::is_same_v<W, float>;
#if defined(__x86_64__)
  switch (instruction_set()) {
    case InstructionSet::kAvx512:
      if constexpr (fp32) {
        return &fp32_avx512;
      } else {
        return &int8_avx512;
      }
    case InstructionSet::kAvx2:
      if constexpr (fp32) {
        return &fp32_avx2;
      } else {
        return &int8_avx2;
      }
    case InstructionSet::kDefault:
      break;
  }
#endif
  if constexpr (fp32) {
    return &fp32_default;
  } else {
    return &int8_default;
  }
}

} // namespace

at::Tensor few_rows_linear(
    const at::Tensor& x,
    const at::Tensor& weight,
    const at::Tensor& bias,
    const at::Tensor& scale) {
  const int64_t k = weight.dim() == 2 ? weight.size(1) : -1, n = weight.size(0);
  const bool int8 = weight.scalar_type() == at::kChar;
  TORCH_CHECK(
      x.size(-1) == k && weight.is_contiguous() && x.device().is_cpu() &&
          weight.device().is_cpu() && (weight.scalar_type() == at::kFloat || int8) &&
          (!bias.defined() || (bias.scalar_type() == at::kFloat && bias.numel() == n)),
      "few_rows_linear: expected x (..., K) on the CPU, a contiguous (N, K) fp32 or int8 weight "
      "and an fp32 (N,) bias; got x of shape ",
      x.sizes(),
      " and a ",
      weight.scalar_type(),
      " weight of shape ",
      weight.sizes());
  TORCH_CHECK(
      int8 == scale.defined() &&
          (!int8 || (scale.scalar_type() == at::kFloat && scale.numel() == n)),
      "few_rows_linear: an int8 weight needs its fp32 (N,) scale, and only it has one");
  const auto rows = x.reshape({-1, k}).to(at::kFloat).contiguous();
  const int64_t r = rows.size(0);
  auto sizes = x.sizes().vec();
  sizes.back() = n;
  auto y = at::empty({r, n}, rows.options());
  const float* xp = rows.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const auto bias_c = bias.defined() ? bias.contiguous() : bias;
  const float* b = bias_c.defined() ? bias_c.data_ptr<float>() : nullptr;
  if (int8) {
    const auto scale_c = scale.contiguous();
    const float* s = scale_c.data_ptr<float>();
    const Product<int8_t> product{xp, r, k, weight.data_ptr<int8_t>(), s, b, yp, n};
    const auto kernel = kernel_for_this_cpu<int8_t>();
    at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) { kernel(product, begin, end); });
  } else {
    const Product<float> product{xp, r, k, weight.data_ptr<float>(), nullptr, b, yp, n};
    const auto kernel = kernel_for_this_cpu<float>();
    at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) { kernel(product, begin, end); });
  }
  return y.view(sizes);
}

at::Tensor linear_for_rows(
    const at::Tensor& x,
    const at::Tensor& weight,
    const at::Tensor& bias,
    const at::Tensor& scale) {
  const bool few_rows =
      scale.defined() ? x.numel() <= 4 * kMaxRows * x.size(-1) : few_rows_apply(x, weight);
  if (few_rows) {
    return few_rows_linear(x, weight, bias, scale);
  }
  return dense_linear(x, dequantized(weight, scale), bias);
}

at::Tensor dequantized(const at::Tensor& weight, const at::Tensor& scale) {
  return scale.defined() ? weight.to(at::kFloat) * scale.unsqueeze(1) : weight;
}

std::pair<at::Tensor, at::Tensor> quantize_rows_int8(const at::Tensor& weight) {
  TORCH_CHECK(
      weight.dim() == 2 && weight.is_floating_point(),
      "quantize_rows_int8: expected a floating-point (N, K) weight, got ",
      weight.scalar_type(),
      " of shape ",
      weight.sizes());
  const auto w = weight.detach().to(at::kFloat);
  // A row of zeros keeps scale 1 (its int8 row is zeros either way).
  auto scale = w.abs().amax(1) / 127.0f;
  scale.masked_fill_(scale == 0, 1.0f);
  auto q = at::round(w / scale.unsqueeze(1)).clamp_(-127, 127).to(at::kChar).contiguous();
  return {q, scale.contiguous()};
}

} // namespace rotary_attention::whisper::detail
