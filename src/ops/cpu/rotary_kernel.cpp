// CPU kernels of rotary_attention::rotary, ::rotary_backward and ::rotary_:
// the shared front end (rotary_frontend.h), cos/sin tables, then the rotation
// loop built for this CPU's instruction set.

#include <ATen/ATen.h>
#include <ATen/Version.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include "../rotary_frontend.h"
#include "rotary_loop.h"
#include "rotary_table_memo.h"
#include "rotary_tables.h"

namespace rotary_attention::ops::cpu {
namespace {

using RotateFn = void (*)(const RotateArgs&);

// The builds of the loop, from the most portable up.
enum Capability { kDefault, kAvx2, kAvx512, kAvx512Bf16 };

// What this CPU runs: ATen's own choice (it honours ATEN_CPU_CAPABILITY) and,
// within AVX-512, hardware bf16 rounding where the CPU has it.
// ROTARY_ATTENTION_CPU_CAPABILITY (default, avx2, avx512, avx512_bf16) caps
// it further, so tests and benchmarks can compare the builds in one machine.
Capability usable_capability() {
  const std::string aten = at::get_cpu_capability();
  Capability best = kDefault;
#if defined(__x86_64__) || defined(_M_X64)
  if (aten == "AVX512") {
    best = __builtin_cpu_supports("avx512bf16") ? kAvx512Bf16 : kAvx512;
  } else if (aten == "AVX2") {
    best = kAvx2;
  }
#endif
  if (const char* cap = std::getenv("ROTARY_ATTENTION_CPU_CAPABILITY")) {
    const std::string v = cap;
    if (v == "default" || v == "avx2" || v == "avx512" || v == "avx512_bf16") {
      best = std::min(
          best,
          v == "default"  ? kDefault
          : v == "avx2"   ? kAvx2
          : v == "avx512" ? kAvx512
                          : kAvx512Bf16);
    } else {
      TORCH_WARN(
          "ROTARY_ATTENTION_CPU_CAPABILITY=",
          v,
          " ignored: expected default, avx2, avx512 or avx512_bf16");
    }
  }
  return best;
}

struct Loop {
  RotateFn rotate;
  const char* name;
};

Loop pick_loop() {
  const Capability usable = usable_capability();
#ifdef RA_CPU_LOOP_AVX512_BF16
  if (usable >= kAvx512Bf16) {
    return {&AVX512_BF16::rotate, "AVX512_BF16"};
  }
#endif
#ifdef RA_CPU_LOOP_AVX512
  if (usable >= kAvx512) {
    return {&AVX512::rotate, "AVX512"};
  }
#endif
#ifdef RA_CPU_LOOP_AVX2
  if (usable >= kAvx2) {
    return {&AVX2::rotate, "AVX2"};
  }
#endif
  return {&DEFAULT::rotate, "DEFAULT"};
}

const Loop& loop() {
  static const Loop chosen = pick_loop();
  return chosen;
}

struct Cpu {
  static constexpr c10::DeviceType type = c10::DeviceType::CPU;
  // A row is read into a buffer before it is written: any layouts in place.
  static constexpr bool in_place_across_layouts = true;

  static void rotate(const RotaryCall& c) {
    static auto* memo = new RotaryTableMemo(); // never destroyed: no tensor freed at exit
    const RotaryTables tables = c.positions.has_value()
                                    ? make_rotary_tables(c.x, c.inv_freq, c.positions, c.offset)
                                    : memo->get(c.x, c.inv_freq, c.offset);
    loop().rotate(
        {c.x,
         c.out,
         tables.cos,
         tables.sin,
         tables.per_batch,
         c.layouts,
         c.inverse,
         c.rotary_dim,
         c.in_place});
  }
};

} // namespace

TORCH_LIBRARY_IMPL(rotary_attention, CPU, m) {
  RotaryKernels<Cpu>::register_in(m);
}

} // namespace rotary_attention::ops::cpu

namespace rotary_attention {
std::string cpu_kernel_capability() {
  return ops::cpu::loop().name;
}
} // namespace rotary_attention
