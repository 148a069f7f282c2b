#include "cpu_capability.h"

#include <ATen/Version.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <string>

namespace rotary_attention::ops::cpu {

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

} // namespace rotary_attention::ops::cpu
