#pragma once
// Where a rotation pair's two members live, and the dispatch from the runtime
// layouts to a loop compiled for them. Free of torch's headers: the CUDA
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

// Calls body.template operator()<In, Out, Inverse>() with the layouts and
// direction as compile-time arguments: the rotation loops are compiled once per
// combination (CPU rotary_loop.cpp, CUDA rotary_launch.cu).
template <typename Body>
void with_layouts(Layouts layouts, bool inverse, Body&& body) {
  const auto run = [&]<PairLayout In, PairLayout Out>() {
    inverse ? body.template operator()<In, Out, true>()
            : body.template operator()<In, Out, false>();
  };
  using P = PairLayout;
  if (layouts.in == P::Interleaved) {
    layouts.out == P::Half ? run.template operator()<P::Interleaved, P::Half>()
                           : run.template operator()<P::Interleaved, P::Interleaved>();
  } else {
    layouts.out == P::Half ? run.template operator()<P::Half, P::Half>()
                           : run.template operator()<P::Half, P::Interleaved>();
  }
}

} // namespace rotary_attention::ops
