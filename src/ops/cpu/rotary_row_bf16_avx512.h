#pragma once
// One contiguous bf16 row rotated with AVX-512 intrinsics, for the AVX512 and
// AVX512_BF16 builds of rotary_loop.cpp. It gives the same bits as the generic
// path (exact widening, fp32 math in the same order, one round-to-nearest-even
// narrowing with ATen's NaN), with fewer instructions:
// - a 32-bit lane of interleaved bf16 data holds a pair (x1 low, x2 high): as
//   fp32, x1 is the lane shifted left by 16 and x2 the lane with its low half
//   cleared, so no permutes deinterleave it;
// - half-split data is widened straight from memory (vpmovzxwd + shift);
// - narrowing uses vcvtne2ps2bf16 where the CPU has it (AVX512_BF16 build).

#include <immintrin.h>

#include <c10/util/BFloat16.h>

#include <cstdint>

#include "../rotary_frontend.h"

namespace rotary_attention::ops::cpu::CPU_CAPABILITY {
namespace bf16_avx512 {

inline __m512 low_as_float(__m512i pairs) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(pairs, 16));
}

inline __m512 high_as_float(__m512i pairs) {
  return _mm512_castsi512_ps(
      _mm512_and_si512(pairs, _mm512_set1_epi32(static_cast<int>(0xffff0000u))));
}

// 16 consecutive bf16 values widened to fp32.
inline __m512 load_16(const c10::BFloat16* p) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(v), 16));
}

// v rounded to bf16 (nearest even), kept in the high half of each 32-bit
// lane: ATen's integer rounding, NaN -> 0xffff as ATen gives it.
inline __m512i round_to_high_half(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb);
  const __m512i high = _mm512_and_si512(rounded, _mm512_set1_epi32(static_cast<int>(0xffff0000u)));
  const __mmask16 ordered = _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q);
  return _mm512_mask_blend_epi32(ordered, _mm512_set1_epi32(static_cast<int>(0xffff0000u)), high);
}

#if defined(__AVX512BF16__)
// The hardware rounding flushes denormals to zero and quiets NaNs its own
// way; vectors holding either (rare) take the integer rounding instead.
inline bool hardware_rounding_exact(__m512 a, __m512 b) {
  constexpr int nan_or_denormal = 0x01 | 0x20 | 0x80; // QNaN, denormal, SNaN
  return (_mm512_fpclass_ps_mask(a, nan_or_denormal) |
          _mm512_fpclass_ps_mask(b, nan_or_denormal)) == 0;
}
#endif

// Two rows of 16 fp32 values rounded and stored as 16 consecutive bf16 each.
inline void store_16_16(c10::BFloat16* p, c10::BFloat16* q, __m512 a, __m512 b) {
#if defined(__AVX512BF16__)
  if (hardware_rounding_exact(a, b)) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)_mm512_cvtneps_pbh(a));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q), (__m256i)_mm512_cvtneps_pbh(b));
    return;
  }
#endif
  _mm256_storeu_si256(
      reinterpret_cast<__m256i*>(p),
      _mm512_cvtepi32_epi16(_mm512_srli_epi32(round_to_high_half(a), 16)));
  _mm256_storeu_si256(
      reinterpret_cast<__m256i*>(q),
      _mm512_cvtepi32_epi16(_mm512_srli_epi32(round_to_high_half(b), 16)));
}

// 16 pairs (lo[k], hi[k]) rounded and stored interleaved: 32 bf16.
inline void store_pairs(c10::BFloat16* p, __m512 lo, __m512 hi) {
#if defined(__AVX512BF16__)
  if (hardware_rounding_exact(lo, hi)) {
    // [lo0..lo15 | hi0..hi15] as 16-bit values, then interleaved.
    const __m512i halves = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
    alignas(64) static constexpr uint16_t order[32] = {0,  16, 1,  17, 2,  18, 3,  19, 4,  20, 5,
                                                       21, 6,  22, 7,  23, 8,  24, 9,  25, 10, 26,
                                                       11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
    _mm512_storeu_si512(p, _mm512_permutexvar_epi16(_mm512_load_si512(order), halves));
    return;
  }
#endif
  _mm512_storeu_si512(
      p, _mm512_or_si512(_mm512_srli_epi32(round_to_high_half(lo), 16), round_to_high_half(hi)));
}

// Rotates the H rows of one token (half % 16 == 0; contiguous rows, head
// strides sh and oh); same expressions, in the same order, as the generic
// rotate_row. Each block of 16 cos/sin values is loaded once for all heads.
template <PairLayout In, PairLayout Out, bool Inverse>
inline void rotate_token(
    const c10::BFloat16* in,
    c10::BFloat16* out,
    int64_t H,
    int64_t sh,
    int64_t oh,
    const float* cos,
    const float* sin,
    int64_t half) {
  for (int64_t j = 0; j < half; j += 16) {
    const __m512 c = _mm512_loadu_ps(cos + j);
    const __m512 s = _mm512_loadu_ps(sin + j);
    for (int64_t h = 0; h < H; ++h) {
      const c10::BFloat16* row = in + h * sh;
      c10::BFloat16* row_out = out + h * oh;
      __m512 x1, x2;
      if constexpr (In == PairLayout::Interleaved) {
        const __m512i pairs = _mm512_loadu_si512(row + 2 * j);
        x1 = low_as_float(pairs);
        x2 = high_as_float(pairs);
      } else {
        x1 = load_16(row + j);
        x2 = load_16(row + half + j);
      }
      __m512 o1, o2;
      if constexpr (Inverse) {
        o1 = _mm512_add_ps(_mm512_mul_ps(x1, c), _mm512_mul_ps(x2, s));
        o2 = _mm512_sub_ps(_mm512_mul_ps(x2, c), _mm512_mul_ps(x1, s));
      } else {
        o1 = _mm512_sub_ps(_mm512_mul_ps(x1, c), _mm512_mul_ps(x2, s));
        o2 = _mm512_add_ps(_mm512_mul_ps(x1, s), _mm512_mul_ps(x2, c));
      }
      if constexpr (Out == PairLayout::Interleaved) {
        store_pairs(row_out + 2 * j, o1, o2);
      } else {
        store_16_16(row_out + j, row_out + half + j, o1, o2);
      }
    }
  }
}

} // namespace bf16_avx512
} // namespace rotary_attention::ops::cpu::CPU_CAPABILITY
