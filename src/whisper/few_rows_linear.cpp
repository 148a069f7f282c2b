#include "few_rows_linear.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace rotary_attention::whisper::detail {

namespace {

constexpr int kLanes = 16;

// 16 floats: GCC's vector extension, lowered to each clone's registers (one
// zmm with AVX-512, two ymm with AVX2). (Only ever inlined: GCC's note that
// returning one changes the ABI without AVX-512 does not apply.)
#pragma GCC diagnostic ignored "-Wpsabi"
using Lanes = float __attribute__((vector_size(kLanes * sizeof(float))));

inline __attribute__((always_inline)) Lanes load(const float* p) {
  Lanes v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// 16 int8 weights widened to floats (sign extension and conversion).
using Bytes = int8_t __attribute__((vector_size(kLanes)));
inline __attribute__((always_inline)) Lanes load(const int8_t* p) {
  Bytes v;
  std::memcpy(&v, p, sizeof(v));
  return __builtin_convertvector(v, Lanes);
}

// Outputs [begin, end) of R rows: each weight row is read once and meets all
// R rows of x, whose R x 16 sums stay in registers (R is a constant, so the
// compiler unrolls the row loop). Inlined into the functions below, whose
// clones GCC vectorises for each instruction set; the CPU picks one when the
// library loads. int8 weights are widened as they are read, and each output's
// sum is multiplied by its row's scale.
template <int R, typename W>
inline __attribute__((always_inline)) void rows_times_weights(
    const float* x,
    int64_t k,
    const W* weight,
    const float* scale,
    const float* bias,
    float* y,
    int64_t n,
    int64_t begin,
    int64_t end) {
  const int64_t body = k - k % kLanes;
  for (int64_t o = begin; o < end; ++o) {
    const W* w = weight + o * k;
    Lanes acc[R] = {};
    for (int64_t i = 0; i < body; i += kLanes) {
      const Lanes wl = load(w + i);
      for (int r = 0; r < R; ++r) {
        acc[r] += load(x + r * k + i) * wl;
      }
    }
    for (int r = 0; r < R; ++r) {
      float sum = 0.0f;
      for (int l = 0; l < kLanes; ++l) {
        sum += acc[r][l];
      }
      for (int64_t i = body; i < k; ++i) {
        sum += x[r * k + i] * static_cast<float>(w[i]);
      }
      if (scale != nullptr) {
        sum *= scale[o];
      }
      y[r * n + o] = sum + (bias != nullptr ? bias[o] : 0.0f);
    }
  }
}

// Up to 8 rows at a time (8 x 16 sums in registers, with room for the weights).
template <typename W>
inline __attribute__((always_inline)) void all_rows(
    const float* x,
    int64_t rows,
    int64_t k,
    const W* weight,
    const float* scale,
    const float* bias,
    float* y,
    int64_t n,
    int64_t begin,
    int64_t end) {
  for (int64_t first = 0; first < rows; first += 8) {
    const float* xs = x + first * k;
    float* ys = y + first * n;
    switch (std::min<int64_t>(rows - first, 8)) {
      case 1:
        rows_times_weights<1>(xs, k, weight, scale, bias, ys, n, begin, end);
        break;
      case 2:
        rows_times_weights<2>(xs, k, weight, scale, bias, ys, n, begin, end);
        break;
      case 3:
        rows_times_weights<3>(xs, k, weight, scale, bias, ys, n, begin, end);
        break;
      case 4:
        rows_times_weights<4>(xs, k, weight, scale, bias, ys, n, begin, end);
        break;
      case 5:
        rows_times_weights<5>(xs, k, weight, scale, bias, ys, n, begin, end);
        break;
      case 6:
        rows_times_weights<6>(xs, k, weight, scale, bias, ys, n, begin, end);
        break;
      case 7:
        rows_times_weights<7>(xs, k, weight, scale, bias, ys, n, begin, end);
        break;
      default:
        rows_times_weights<8>(xs, k, weight, scale, bias, ys, n, begin, end);
        break;
    }
  }
}

__attribute__((target_clones("avx512f", "avx2,fma", "default"))) void rows_times_fp32_weights(
    const float* x,
    int64_t rows,
    int64_t k,
    const float* weight,
    const float* bias,
    float* y,
    int64_t n,
    int64_t begin,
    int64_t end) {
  all_rows(x, rows, k, weight, static_cast<const float*>(nullptr), bias, y, n, begin, end);
}

__attribute__((target_clones("avx512f", "avx2,fma", "default"))) void rows_times_int8_weights(
    const float* x,
    int64_t rows,
    int64_t k,
    const int8_t* weight,
    const float* scale,
    const float* bias,
    float* y,
    int64_t n,
    int64_t begin,
    int64_t end) {
  all_rows(x, rows, k, weight, scale, bias, y, n, begin, end);
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
    const int8_t* w = weight.data_ptr<int8_t>();
    at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
      rows_times_int8_weights(xp, r, k, w, s, b, yp, n, begin, end);
    });
  } else {
    const float* w = weight.data_ptr<float>();
    at::parallel_for(0, n, 64, [&](int64_t begin, int64_t end) {
      rows_times_fp32_weights(xp, r, k, w, b, yp, n, begin, end);
    });
  }
  return y.view(sizes);
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
