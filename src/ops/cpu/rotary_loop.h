#pragma once
// The CPU rotation loop (rotary_loop.cpp). CMake compiles it once per
// instruction set (cmake/RotaryAttentionCpuKernels.cmake), each copy in the
// namespace named by its CPU_CAPABILITY, as ATen's kernels are;
// rotary_kernel.cpp picks one at run time.

#include <ATen/core/Tensor.h>

#include "../pair_layout.h"

namespace rotary_attention::ops::cpu {

struct RotateArgs {
  at::Tensor x;   // (B, T, H, D), any strides
  at::Tensor out; // (B, T, H, D), x's dtype: contiguous, or x itself (in_place)
  at::Tensor cos; // (P, rotary_dim / 2), contiguous, math dtype (fp32 or fp64)
  at::Tensor sin;
  bool per_batch;  // cos/sin row of token (b, t) is b * T + t, else t
  Layouts layouts; // where pairs are read from and written to
  bool inverse;    // rotate by -angle (the backward)
  int64_t rotary_dim;
  bool in_place = false;
};

// Declared for every capability; defined for those CMake built (RA_CPU_LOOP_<name>).
namespace DEFAULT {
void rotate(const RotateArgs& args);
}
namespace AVX2 {
void rotate(const RotateArgs& args);
}
namespace AVX512 {
void rotate(const RotateArgs& args);
}
namespace AVX512_BF16 {
void rotate(const RotateArgs& args);
}

} // namespace rotary_attention::ops::cpu
