// The CPU decode-attention loop, compiled once per instruction set (see
// rotary_loop.cpp for how CMake builds each copy).
//
// A few queries per row attend over the first lengths[b] steps of a
// (B, capacity, n_state) cache: a memory-bound read of those keys and values,
// once. Flash-decoding on the CPU: the keys of each row are split into blocks,
// one task per (row, block) reads its block's keys and values for every head
// (whole cache rows, so the read is sequential) and keeps a running softmax
// (max, sum, weighted values) per head and query; a second pass merges the
// blocks' partials. fp32 accumulation for every cache dtype; 16-bit keys and
// values are widened as they are loaded.

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "decode_attention_loop.h"

#ifndef CPU_CAPABILITY
#error "CMake compiles this file with CPU_CAPABILITY set"
#endif

namespace rotary_attention::ops::cpu::CPU_CAPABILITY {
namespace {

using VecF = at::vec::Vectorized<float>;
constexpr int64_t VF = VecF::size();
// Keys scored together: one running-max update (and rescale) per chunk.
constexpr int64_t kChunk = 32;
// The fewest keys a task reads; below it the threads' start-up costs more.
constexpr int64_t kMinBlock = 256;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

template <typename T>
inline VecF load_float(const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    return VecF::loadu(p);
  } else {
    VecF v;
    at::vec::load_to_float(p, v);
    return v;
  }
}

// q . k over D features (q fp32, already scaled).
template <typename T>
inline float dot(const float* q, const T* k, int64_t D) {
  VecF a0(0.f), a1(0.f);
  int64_t d = 0;
  for (; d + 2 * VF <= D; d += 2 * VF) {
    a0 = at::vec::fmadd(VecF::loadu(q + d), load_float(k + d), a0);
    a1 = at::vec::fmadd(VecF::loadu(q + d + VF), load_float(k + d + VF), a1);
  }
  for (; d + VF <= D; d += VF) {
    a0 = at::vec::fmadd(VecF::loadu(q + d), load_float(k + d), a0);
  }
  float s = at::vec::vec_reduce_all<float>([](VecF x, VecF y) { return x + y; }, a0 + a1);
  for (; d < D; ++d) {
    s += q[d] * static_cast<float>(k[d]);
  }
  return s;
}

// acc[0..D) += w * v[0..D).
template <typename T>
inline void add_scaled(float* acc, float w, const T* v, int64_t D) {
  const VecF vw(w);
  int64_t d = 0;
  for (; d + 2 * VF <= D; d += 2 * VF) {
    at::vec::fmadd(vw, load_float(v + d), VecF::loadu(acc + d)).store(acc + d);
    at::vec::fmadd(vw, load_float(v + d + VF), VecF::loadu(acc + d + VF)).store(acc + d + VF);
  }
  for (; d + VF <= D; d += VF) {
    at::vec::fmadd(vw, load_float(v + d), VecF::loadu(acc + d)).store(acc + d);
  }
  for (; d < D; ++d) {
    acc[d] += w * static_cast<float>(v[d]);
  }
}

// acc[0..D) += w[0] v[0..D) + ... + w[3] v[3 v_step + 0..D): acc is read and
// written once for four steps.
template <typename T>
inline void add_scaled4(float* acc, const float* w, const T* v, int64_t v_step, int64_t D) {
  const VecF w0(w[0]), w1(w[1]), w2(w[2]), w3(w[3]);
  const T* v1 = v + v_step;
  const T* v2 = v + 2 * v_step;
  const T* v3 = v + 3 * v_step;
  int64_t d = 0;
  for (; d + VF <= D; d += VF) {
    VecF a = at::vec::fmadd(w0, load_float(v + d), VecF::loadu(acc + d));
    a = at::vec::fmadd(w1, load_float(v1 + d), a);
    a = at::vec::fmadd(w2, load_float(v2 + d), a);
    at::vec::fmadd(w3, load_float(v3 + d), a).store(acc + d);
  }
  for (; d < D; ++d) {
    acc[d] += w[0] * static_cast<float>(v[d]) + w[1] * static_cast<float>(v1[d]) +
              w[2] * static_cast<float>(v2[d]) + w[3] * static_cast<float>(v3[d]);
  }
}

// acc[i][0..D) += w[i][0] v[0..D) + ... + w[i][3] v[3 v_step + 0..D), for
// `count` sums over the same four steps (a row's queries): each sum is read
// and written once, and each value loaded once for all of them.
template <typename T>
inline void add_scaled4_shared(
    float* const* acc,
    const float* const* w,
    int64_t count,
    const T* v,
    int64_t v_step,
    int64_t D) {
  if (count == 0) {
    // No query sees all four steps (the block's last, partial group): its
    // values may lie past the end of the cache and must not be loaded.
    return;
  }
  if (count == 1) { // (one query: its weights stay in registers, the same sums)
    add_scaled4(acc[0], w[0], v, v_step, D);
    return;
  }
  const T* v1 = v + v_step;
  const T* v2 = v + 2 * v_step;
  const T* v3 = v + 3 * v_step;
  int64_t d = 0;
  for (; d + VF <= D; d += VF) {
    const VecF x0 = load_float(v + d), x1 = load_float(v1 + d), x2 = load_float(v2 + d),
               x3 = load_float(v3 + d);
    for (int64_t i = 0; i < count; ++i) {
      const float* wi = w[i];
      VecF a = at::vec::fmadd(VecF(wi[0]), x0, VecF::loadu(acc[i] + d));
      a = at::vec::fmadd(VecF(wi[1]), x1, a);
      a = at::vec::fmadd(VecF(wi[2]), x2, a);
      at::vec::fmadd(VecF(wi[3]), x3, a).store(acc[i] + d);
    }
  }
  for (; d < D; ++d) {
    for (int64_t i = 0; i < count; ++i) {
      const float* wi = w[i];
      acc[i][d] += wi[0] * static_cast<float>(v[d]) + wi[1] * static_cast<float>(v1[d]) +
                   wi[2] * static_cast<float>(v2[d]) + wi[3] * static_cast<float>(v3[d]);
    }
  }
}

// out[i] = the sum of a_i's lanes. On x86 the four sums share their shuffles
// (horizontal adds of the four vectors together).
inline void sum_lanes4(const VecF& a0, const VecF& a1, const VecF& a2, const VecF& a3, float* out) {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  const auto halves = [](const VecF& a) {
#if defined(CPU_CAPABILITY_AVX512)
    const __m512 v = a;
    return _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
#else
    return static_cast<__m256>(a);
#endif
  };
  const __m256 pairs = _mm256_hadd_ps(
      _mm256_hadd_ps(halves(a0), halves(a1)), _mm256_hadd_ps(halves(a2), halves(a3)));
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(pairs), _mm256_extractf128_ps(pairs, 1)));
#else
  const auto sum = [](VecF x, VecF y) { return x + y; };
  out[0] = at::vec::vec_reduce_all<float>(sum, a0);
  out[1] = at::vec::vec_reduce_all<float>(sum, a1);
  out[2] = at::vec::vec_reduce_all<float>(sum, a2);
  out[3] = at::vec::vec_reduce_all<float>(sum, a3);
#endif
}

// Four dot products of D features: q + i * D with k + i * D, i = 0..3 (four
// heads of one query and one key).
template <typename T>
inline void dot4(const float* q, const T* k, int64_t D, float* out) {
  VecF a0(0.f), a1(0.f), a2(0.f), a3(0.f);
  int64_t d = 0;
  for (; d + VF <= D; d += VF) {
    a0 = at::vec::fmadd(VecF::loadu(q + d), load_float(k + d), a0);
    a1 = at::vec::fmadd(VecF::loadu(q + D + d), load_float(k + D + d), a1);
    a2 = at::vec::fmadd(VecF::loadu(q + 2 * D + d), load_float(k + 2 * D + d), a2);
    a3 = at::vec::fmadd(VecF::loadu(q + 3 * D + d), load_float(k + 3 * D + d), a3);
  }
  sum_lanes4(a0, a1, a2, a3, out);
  for (; d < D; ++d) {
    for (int64_t i = 0; i < 4; ++i) {
      out[i] += q[i * D + d] * static_cast<float>(k[i * D + d]);
    }
  }
}

inline void scale_row(float* x, float factor, int64_t D) {
  int64_t d = 0;
  for (; d + VF <= D; d += VF) {
    (VecF::loadu(x + d) * VecF(factor)).store(x + d);
  }
  for (; d < D; ++d) {
    x[d] *= factor;
  }
}

// p[0..n) = exp(s[0..n) - m), in place; returns their sum.
inline float exp_shifted(float* s, int64_t n, float m) {
  VecF sum(0.f);
  int64_t i = 0;
  for (; i + VF <= n; i += VF) {
    const VecF p = (VecF::loadu(s + i) - VecF(m)).exp_u20();
    p.store(s + i);
    sum = sum + p;
  }
  float total = at::vec::vec_reduce_all<float>([](VecF x, VecF y) { return x + y; }, sum);
  if (i < n) { // the last few, as one partial vector
    float tail[VF];
    (VecF::loadu(s + i, n - i) - VecF(m)).exp_u20().store(tail);
    for (int64_t r = 0; r < n - i; ++r) {
      s[i + r] = tail[r];
      total += tail[r];
    }
  }
  return total;
}

template <typename T>
void decode_typed(const DecodeAttentionArgs& a) {
  const int64_t B = a.q.size(0), Tq = a.q.size(1), n_state = a.q.size(2);
  const int64_t H = a.n_head, D = n_state / H;
  const int64_t k_row = a.key_cache.stride(0), k_step = a.key_cache.stride(1);
  const int64_t v_row = a.value_cache.stride(0), v_step = a.value_cache.stride(1);
  const T* q = a.q.const_data_ptr<T>();
  const T* keys = a.key_cache.const_data_ptr<T>();
  const T* values = a.value_cache.const_data_ptr<T>();
  const int64_t* lengths = a.lengths.const_data_ptr<int64_t>();
  T* out = a.out.mutable_data_ptr<T>();

  int64_t longest = 0;
  for (int64_t b = 0; b < B; ++b) {
    longest = std::max(longest, lengths[b]);
  }
  // Keys query t of row b sees: the first `visible(b, t)` (bottom-right causal:
  // query t sits at position lengths[b] - Tq + t).
  const auto visible = [&](int64_t b, int64_t t) {
    return a.causal ? std::max<int64_t>(lengths[b] - (Tq - 1 - t), 0) : lengths[b];
  };

  // Scaled fp32 queries, (B, Tq, n_state).
  std::vector<float> qf(B * Tq * n_state);
  const float scale = static_cast<float>(a.scale);
  for (int64_t i = 0; i < B * Tq * n_state; ++i) {
    qf[i] = static_cast<float>(q[i]) * scale;
  }

  // Split each row's keys so that there are a few tasks per thread, none
  // shorter than kMinBlock keys.
  const int64_t threads = at::get_num_threads();
  int64_t blocks = 1;
  if (longest > kMinBlock) {
    const int64_t wanted = std::max<int64_t>(1, (4 * threads + B - 1) / B);
    blocks = std::min((longest + kMinBlock - 1) / kMinBlock, wanted);
  }
  const int64_t block =
      std::max<int64_t>(kChunk, ((longest + blocks - 1) / blocks + kChunk - 1) / kChunk * kChunk);
  blocks = std::max<int64_t>(1, (longest + block - 1) / block);

  // Partials per (b, block, h, t): running max, running sum, D weighted values.
  const int64_t stride = D + 2;
  std::vector<float> partial(B * blocks * H * Tq * stride);
  const auto partial_at = [&](int64_t b, int64_t blk, int64_t h, int64_t t) {
    return partial.data() + (((b * blocks + blk) * H + h) * Tq + t) * stride;
  };

  // A chunk's keys and values are read whole rows at a time, in address order
  // (all heads of a step together): the hardware prefetchers follow that
  // stream, where one head's columns of many steps (a stride of n_state) would
  // defeat them once the cache outgrows the last-level cache.
  at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> p(H * Tq * kChunk); // logits, then weights, per (h, t)
    std::vector<int64_t> seen(Tq);         // keys of the chunk query t sees
    std::vector<float*> sums(Tq);          // the queries that see four steps: their sums
    std::vector<const float*> weights(Tq); // and their weights
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, blk = task % blocks;
      // (visible(b, Tq - 1) is the row's length: its last query sees every step.)
      const int64_t first = blk * block, last = std::min(first + block, visible(b, Tq - 1));
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t t = 0; t < Tq; ++t) {
          float* part = partial_at(b, blk, h, t);
          part[0] = kNegInf;
          std::fill(part + 1, part + stride, 0.f);
        }
      }
      for (int64_t start = first; start < last; start += kChunk) {
        int64_t n_max = 0;
        for (int64_t t = 0; t < Tq; ++t) {
          seen[t] = std::max<int64_t>(0, std::min({kChunk, last - start, visible(b, t) - start}));
          n_max = std::max(n_max, seen[t]);
        }
        const T* k_chunk = keys + b * k_row + start * k_step;
        const T* v_chunk = values + b * v_row + start * v_step;
        // Logits: one step's row at a time, four heads at once.
        for (int64_t j = 0; j < n_max; ++j) {
          const T* k_row_j = k_chunk + j * k_step;
          for (int64_t t = 0; t < Tq; ++t) {
            if (j >= seen[t]) {
              continue;
            }
            const float* q_row = qf.data() + (b * Tq + t) * n_state;
            int64_t h = 0;
            for (; h + 4 <= H; h += 4) {
              float four[4];
              dot4(q_row + h * D, k_row_j + h * D, D, four);
              for (int64_t i = 0; i < 4; ++i) {
                p[((h + i) * Tq + t) * kChunk + j] = four[i];
              }
            }
            for (; h < H; ++h) {
              p[(h * Tq + t) * kChunk + j] = dot(q_row + h * D, k_row_j + h * D, D);
            }
          }
        }
        for (int64_t h = 0; h < H; ++h) {
          for (int64_t t = 0; t < Tq; ++t) {
            const int64_t n = seen[t];
            if (n == 0) {
              continue;
            }
            float* part = partial_at(b, blk, h, t);
            float* w = p.data() + (h * Tq + t) * kChunk;
            const float m = std::max(part[0], *std::max_element(w, w + n));
            if (m > part[0]) {
              // exp(-inf) = 0 before the first chunk: the empty sums stay 0.
              const float factor = std::exp(part[0] - m);
              part[1] *= factor;
              scale_row(part + 2, factor, D);
              part[0] = m;
            }
            part[1] += exp_shifted(w, n, m);
          }
        }
        // Weighted values, four steps at a time (each head's sums are read and
        // written once per four steps, the four values loaded once for every
        // query that sees them).
        for (int64_t j = 0; j < n_max; j += 4) {
          for (int64_t h = 0; h < H; ++h) {
            int64_t whole = 0;
            for (int64_t t = 0; t < Tq; ++t) {
              float* acc = partial_at(b, blk, h, t) + 2;
              const float* w = p.data() + (h * Tq + t) * kChunk + j;
              if (j + 4 <= seen[t]) {
                sums[whole] = acc;
                weights[whole++] = w;
              } else {
                for (int64_t i = j; i < seen[t]; ++i) {
                  add_scaled(acc, w[i - j], v_chunk + i * v_step + h * D, D);
                }
              }
            }
            add_scaled4_shared(
                sums.data(), weights.data(), whole, v_chunk + j * v_step + h * D, v_step, D);
          }
        }
      }
    }
  });

  // Merge the blocks: out = sum_k acc_k e^(m_k - M) / sum_k l_k e^(m_k - M).
  // (Little work for a decode step: on the calling thread, no second parallel region.)
  const int64_t merge_grain = std::max<int64_t>(1, 32768 / (H * blocks * stride));
  at::parallel_for(0, B * Tq, merge_grain, [&](int64_t begin, int64_t end) {
    std::vector<float> o(D);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / Tq, t = row % Tq;
      for (int64_t h = 0; h < H; ++h) {
        float M = kNegInf;
        for (int64_t blk = 0; blk < blocks; ++blk) {
          M = std::max(M, partial_at(b, blk, h, t)[0]);
        }
        std::fill(o.begin(), o.end(), 0.f);
        float total = 0.f;
        if (M != kNegInf) {
          for (int64_t blk = 0; blk < blocks; ++blk) {
            const float* part = partial_at(b, blk, h, t);
            if (part[0] == kNegInf) {
              continue;
            }
            const float w = std::exp(part[0] - M);
            total += part[1] * w;
            for (int64_t d = 0; d < D; ++d) {
              o[d] += part[2 + d] * w;
            }
          }
        }
        // A query that sees no key gets zeros (flash-attention's convention).
        const float inv = total > 0.f ? 1.f / total : 0.f;
        T* dst = out + (b * Tq + t) * n_state + h * D;
        for (int64_t d = 0; d < D; ++d) {
          dst[d] = static_cast<T>(o[d] * inv);
        }
      }
    }
  });
}

} // namespace

void decode_attention(const DecodeAttentionArgs& a) {
  switch (a.q.scalar_type()) {
    case at::kFloat:
      return decode_typed<float>(a);
    case at::kHalf:
      return decode_typed<at::Half>(a);
    case at::kBFloat16:
      return decode_typed<at::BFloat16>(a);
    default:
      TORCH_CHECK(false, "decode_attention: no CPU loop for ", a.q.scalar_type());
  }
}

} // namespace rotary_attention::ops::cpu::CPU_CAPABILITY
