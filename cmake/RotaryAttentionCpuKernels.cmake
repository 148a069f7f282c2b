# The CPU loops (src/ops/cpu/rotary_loop.cpp, decode_attention_loop.cpp) are compiled once per
# instruction set, as ATen compiles its kernels (cmake/Codegen.cmake there):
# one object library per capability, each with its flags, CPU_CAPABILITY (the
# namespace its entry point and at::vec's code live in) and the at::vec
# implementation it uses. src/ops/cpu/cpu_capability.h picks one at run time.
#
#   DEFAULT       at::vec's portable code, any CPU
#   AVX2          AVX2 + FMA + F16C
#   AVX512        AVX-512 F/BW/VL/DQ
#   AVX512_BF16   AVX512 plus hardware fp32 -> bf16 rounding (vcvtne2ps2bf16)
#
# The x86 variants are built only on x86 and only where the compiler accepts
# their flags and intrinsics.
include(CheckCXXSourceCompiles)

set(RA_CPU_CAPABILITIES DEFAULT)
set(_ra_flags_DEFAULT "")
set(_ra_vec_DEFAULT DEFAULT)
if(CMAKE_SYSTEM_PROCESSOR MATCHES "x86_64|AMD64|amd64")
  set(_ra_flags_AVX2 -mavx2 -mfma -mf16c)
  set(_ra_vec_AVX2 AVX2)
  set(_ra_probe_AVX2 "__m256 v = _mm256_fmadd_ps(_mm256_set1_ps(1.f), _mm256_set1_ps(2.f), _mm256_set1_ps(3.f)); (void)v;")
  set(_ra_flags_AVX512 -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c)
  set(_ra_vec_AVX512 AVX512)
  set(_ra_probe_AVX512 "__m512 v = _mm512_set1_ps(1.f); __mmask16 m = _mm512_fpclass_ps_mask(v, 0x20); (void)m;")
  set(_ra_flags_AVX512_BF16 ${_ra_flags_AVX512} -mavx512bf16)
  set(_ra_vec_AVX512_BF16 AVX512)
  set(_ra_probe_AVX512_BF16 "__m512 v = _mm512_set1_ps(1.f); __m512bh b = _mm512_cvtne2ps_pbh(v, v); (void)b;")
  foreach(cap AVX2 AVX512 AVX512_BF16)
    string(REPLACE ";" " " CMAKE_REQUIRED_FLAGS "${_ra_flags_${cap}}")
    check_cxx_source_compiles("#include <immintrin.h>
      int main() { ${_ra_probe_${cap}} return 0; }" RA_COMPILER_HAS_${cap})
    unset(CMAKE_REQUIRED_FLAGS)
    if(RA_COMPILER_HAS_${cap})
      list(APPEND RA_CPU_CAPABILITIES ${cap})
    endif()
  endforeach()
endif()

foreach(cap IN LISTS RA_CPU_CAPABILITIES)
  set(lib cpu_loops_${cap})
  add_library(${lib} OBJECT src/ops/cpu/rotary_loop.cpp src/ops/cpu/decode_attention_loop.cpp)
  # (One translation unit per capability: at::vec's headers parsed once.)
  set_target_properties(${lib} PROPERTIES POSITION_INDEPENDENT_CODE ON UNITY_BUILD ${RA_UNITY_BUILD} UNITY_BUILD_BATCH_SIZE 0)
  # torch for its headers; OpenMP so that at::parallel_for (inline) runs in parallel.
  target_link_libraries(${lib} PRIVATE torch OpenMP::OpenMP_CXX)
  target_compile_definitions(${lib} PRIVATE CPU_CAPABILITY=${cap} CPU_CAPABILITY_${_ra_vec_${cap}})
  # No contraction into FMA: results stay the original's floats. (GCC 12 warns
  # falsely about at::vec's AVX-512 intrinsics.)
  target_compile_options(${lib} PRIVATE ${_ra_flags_${cap}} -ffp-contract=off
    -Wall -Wextra -Wno-unused-parameter -Wno-maybe-uninitialized)
  target_sources(rotary_attention PRIVATE $<TARGET_OBJECTS:${lib}>)
  target_compile_definitions(rotary_attention PRIVATE RA_CPU_LOOP_${cap})
endforeach()
message(STATUS "rotary_attention: CPU loops built for ${RA_CPU_CAPABILITIES}")
