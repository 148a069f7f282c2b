#pragma once
// The CPU decode-attention loop (decode_attention_loop.cpp), compiled once
// per instruction set beside the rotation loop (cmake/RotaryAttentionCpuKernels.cmake);
// decode_attention_kernel.cpp picks one at run time.

#include <ATen/core/Tensor.h>

namespace rotary_attention::ops::cpu {

struct DecodeAttentionArgs {
  at::Tensor q;           // (B, T, n_state), contiguous
  at::Tensor key_cache;   // (B, capacity, n_state), unit stride along features
  at::Tensor value_cache; // like key_cache
  at::Tensor lengths;     // (B,) int64, contiguous, checked to lie in [0, capacity]
  at::Tensor out;         // (B, T, n_state), q's dtype, contiguous
  int64_t n_head;
  bool causal;
  double scale;
};

// Declared for every capability; defined for those CMake built (RA_CPU_LOOP_<name>).
namespace DEFAULT {
void decode_attention(const DecodeAttentionArgs& args);
}
namespace AVX2 {
void decode_attention(const DecodeAttentionArgs& args);
}
namespace AVX512 {
void decode_attention(const DecodeAttentionArgs& args);
}
namespace AVX512_BF16 {
void decode_attention(const DecodeAttentionArgs& args);
}

} // namespace rotary_attention::ops::cpu
