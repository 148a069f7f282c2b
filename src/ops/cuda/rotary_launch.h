#pragma once
// One launch of the CUDA rotation kernel, described without torch's types.
// rotary_launch.cu includes only this and CUDA's headers: nvcc parses a file
// once for the host and once per GPU architecture, and torch's headers made
// that file the slowest of the build. rotary_kernel.cpp (a C++ file) checks
// the tensors and fills this in.

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../pair_layout.h"

namespace rotary_attention::ops::cuda {

// x's (and out's) element type.
enum class Element { Float, Double, Half, BFloat16 };

struct RotaryLaunch {
  const void* x;            // (B, T, H, D)
  void* out;                // x itself for the in-place variant
  const void* inv_freq;     // (rotary_dim / 2,) contiguous, fp64 if double_angles else fp32
  const int64_t* positions; // contiguous (T,) or (B, T), or null for 0..T-1
  Element element;
  // Angles and their sin/cos in fp64 (fp64 frequencies); the rotation is in
  // fp64 for fp64 x, and for fp32 x exactly when this is set.
  bool double_angles;
  Layouts layouts;
  bool inverse; // rotate by -angle (the backward)
  int64_t tokens, T, H, D;
  int64_t sb, st, sh, sd; // x's strides, in elements
  int64_t ob, ot, oh, od; // out's strides
  int64_t rotary_dim;
  int64_t offset;
  bool per_batch;   // positions are (B, T), else (T,)
  bool pair_access; // interleaved pairs may be read as one aligned vector
  bool pair_store;  // ... and written as one
  cudaStream_t stream;
};

// Enqueues the kernel; returns the launch's error (cudaSuccess when it started).
cudaError_t launch_rotary(const RotaryLaunch& launch);

} // namespace rotary_attention::ops::cuda
