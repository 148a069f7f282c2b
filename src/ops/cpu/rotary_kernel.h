#pragma once
// The CPU rotation loop, compiled once per instruction set (rotary_kernel_*.cpp)
// and chosen at run time by rotary_cpu.cpp.

#include <ATen/core/Tensor.h>

#include "../rotary_args.h"

namespace rotary_attention::ops::cpu {

struct RotateArgs {
  at::Tensor x; // (B, T, H, D), any strides
  at::Tensor out; // (B, T, H, D), x's dtype: contiguous, or x itself (in_place)
  at::Tensor cos; // (P, rotary_dim / 2), contiguous, math dtype (fp32 or fp64)
  at::Tensor sin;
  bool per_batch; // cos/sin row of token (b, t) is b * T + t, else t
  Layouts layouts; // where pairs are read from and written to
  bool inverse; // rotate by -angle (the backward)
  int64_t rotary_dim;
  bool in_place = false;
};

void rotate_default(const RotateArgs& args);
void rotate_avx2(const RotateArgs& args);
void rotate_avx512(const RotateArgs& args);

} // namespace rotary_attention::ops::cpu
