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

// acc[0..D) += sum over n keys of p[j] * v[j * v_step + 0..D).
template <typename T>
inline void accumulate(
    float* acc, const float* p, const T* v, int64_t v_step, int64_t n, int64_t D) {
  int64_t d = 0;
  for (; d + 4 * VF <= D; d += 4 * VF) {
    VecF a0 = VecF::loadu(acc + d), a1 = VecF::loadu(acc + d + VF);
    VecF a2 = VecF::loadu(acc + d + 2 * VF), a3 = VecF::loadu(acc + d + 3 * VF);
    for (int64_t j = 0; j < n; ++j) {
      const VecF w(p[j]);
      const T* row = v + j * v_step + d;
      a0 = at::vec::fmadd(w, load_float(row), a0);
      a1 = at::vec::fmadd(w, load_float(row + VF), a1);
      a2 = at::vec::fmadd(w, load_float(row + 2 * VF), a2);
      a3 = at::vec::fmadd(w, load_float(row + 3 * VF), a3);
    }
    a0.store(acc + d);
    a1.store(acc + d + VF);
    a2.store(acc + d + 2 * VF);
    a3.store(acc + d + 3 * VF);
  }
  for (; d + VF <= D; d += VF) {
    VecF a = VecF::loadu(acc + d);
    for (int64_t j = 0; j < n; ++j) {
      a = at::vec::fmadd(VecF(p[j]), load_float(v + j * v_step + d), a);
    }
    a.store(acc + d);
  }
  for (; d < D; ++d) {
    float s = acc[d];
    for (int64_t j = 0; j < n; ++j) {
      s += p[j] * static_cast<float>(v[j * v_step + d]);
    }
    acc[d] = s;
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
  for (; i < n; ++i) {
    s[i] = std::exp(s[i] - m);
    total += s[i];
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

  // Keys query t of row b sees: the first `visible(b, t)` (bottom-right causal:
  // query t sits at position lengths[b] - Tq + t).
  const auto visible = [&](int64_t b, int64_t t) {
    return a.causal ? std::max<int64_t>(lengths[b] - (Tq - 1 - t), 0) : lengths[b];
  };
  int64_t longest = 0;
  for (int64_t b = 0; b < B; ++b) {
    longest = std::max(longest, lengths[b]);
  }

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

  at::parallel_for(0, B * blocks, 1, [&](int64_t begin, int64_t end) {
    float p[kChunk];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, blk = task % blocks;
      const int64_t first = blk * block, last = std::min(first + block, lengths[b]);
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t t = 0; t < Tq; ++t) {
          float* part = partial_at(b, blk, h, t);
          part[0] = kNegInf;
          std::fill(part + 1, part + stride, 0.f);
        }
      }
      for (int64_t start = first; start < last; start += kChunk) {
        const T* k_chunk = keys + b * k_row + start * k_step;
        const T* v_chunk = values + b * v_row + start * v_step;
        for (int64_t h = 0; h < H; ++h) {
          for (int64_t t = 0; t < Tq; ++t) {
            const int64_t n = std::min({kChunk, last - start, visible(b, t) - start});
            if (n <= 0) {
              continue;
            }
            float* part = partial_at(b, blk, h, t);
            const float* q_row = qf.data() + (b * Tq + t) * n_state + h * D;
            float chunk_max = kNegInf;
            for (int64_t j = 0; j < n; ++j) {
              p[j] = dot(q_row, k_chunk + j * k_step + h * D, D);
              chunk_max = std::max(chunk_max, p[j]);
            }
            const float m = std::max(part[0], chunk_max);
            if (m > part[0]) {
              // exp(-inf) = 0 before the first chunk: the empty sums stay 0.
              const float factor = std::exp(part[0] - m);
              part[1] *= factor;
              scale_row(part + 2, factor, D);
              part[0] = m;
            }
            part[1] += exp_shifted(p, n, m);
            accumulate(part + 2, p, v_chunk + h * D, v_step, n, D);
          }
        }
      }
    }
  });

  // Merge the blocks: out = sum_k acc_k e^(m_k - M) / sum_k l_k e^(m_k - M).
  at::parallel_for(0, B * Tq, 1, [&](int64_t begin, int64_t end) {
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
