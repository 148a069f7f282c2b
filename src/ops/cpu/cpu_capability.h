#pragma once
// Which build of a per-ISA CPU loop (rotary_loop.cpp, decode_attention_loop.cpp)
// this CPU runs; CMake defines RA_CPU_LOOP_<name> for each build it made.

namespace rotary_attention::ops::cpu {

// The builds of the loops, from the most portable up.
enum Capability { kDefault, kAvx2, kAvx512, kAvx512Bf16 };

// What this CPU runs: ATen's own choice (it honours ATEN_CPU_CAPABILITY) and,
// within AVX-512, hardware bf16 rounding where the CPU has it.
// ROTARY_ATTENTION_CPU_CAPABILITY (default, avx2, avx512, avx512_bf16) caps
// it further, so tests and benchmarks can compare the builds in one machine.
Capability usable_capability();

template <typename Fn>
struct CpuLoop {
  Fn fn;
  const char* name;
};

// The most capable build this CPU runs, given each capability's build
// (nullptr where CMake did not build it).
template <typename Fn>
CpuLoop<Fn> pick_cpu_loop(Fn avx512_bf16, Fn avx512, Fn avx2, Fn portable) {
  const Capability usable = usable_capability();
  if (avx512_bf16 != nullptr && usable >= kAvx512Bf16) {
    return {avx512_bf16, "AVX512_BF16"};
  }
  if (avx512 != nullptr && usable >= kAvx512) {
    return {avx512, "AVX512"};
  }
  if (avx2 != nullptr && usable >= kAvx2) {
    return {avx2, "AVX2"};
  }
  return {portable, "DEFAULT"};
}

#ifdef RA_CPU_LOOP_AVX512_BF16
#define RA_CPU_BUILD_AVX512_BF16(fn) &AVX512_BF16::fn
#else
#define RA_CPU_BUILD_AVX512_BF16(fn) nullptr
#endif
#ifdef RA_CPU_LOOP_AVX512
#define RA_CPU_BUILD_AVX512(fn) &AVX512::fn
#else
#define RA_CPU_BUILD_AVX512(fn) nullptr
#endif
#ifdef RA_CPU_LOOP_AVX2
#define RA_CPU_BUILD_AVX2(fn) &AVX2::fn
#else
#define RA_CPU_BUILD_AVX2(fn) nullptr
#endif

// pick_cpu_loop over the builds of the function `fn` (declared in each
// capability's namespace). The type is explicit: a build CMake did not make
// is a nullptr.
#define RA_PICK_CPU_LOOP(fn)                                           \
  ::rotary_attention::ops::cpu::pick_cpu_loop<decltype(&DEFAULT::fn)>( \
      RA_CPU_BUILD_AVX512_BF16(fn), RA_CPU_BUILD_AVX512(fn), RA_CPU_BUILD_AVX2(fn), &DEFAULT::fn)

} // namespace rotary_attention::ops::cpu
