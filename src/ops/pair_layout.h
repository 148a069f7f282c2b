#pragma once
// Where a rotation pair's two members live. Free of torch's headers: the CUDA
// kernel's file (rotary_launch.cu) includes it too.

namespace rotary_attention::ops {

// Where the two members of rotation pair j live inside the rotated features.
enum class PairLayout {
  Interleaved, // (2j, 2j + 1)
  Half,        // (j, j + rotary_dim / 2)
};

struct Layouts {
  PairLayout in;
  PairLayout out;
};

} // namespace rotary_attention::ops
