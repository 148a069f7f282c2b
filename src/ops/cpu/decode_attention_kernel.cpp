// CPU kernel of rotary_attention::decode_attention: the checks, then the
// decode-attention loop built for this CPU's instruction set (fp32, bf16 and
// fp16); other dtypes run ATen's SDPA with the lengths as a mask.

#include <ATen/ATen.h>
#include <torch/library.h>

#include "../decode_attention_args.h"
#include "cpu_capability.h"
#include "decode_attention_loop.h"

namespace rotary_attention::ops::cpu {
namespace {

const CpuLoop<void (*)(const DecodeAttentionArgs&)>& decode_loop() {
  static const auto chosen = RA_PICK_CPU_LOOP(decode_attention);
  return chosen;
}

at::Tensor decode_attention_cpu(
    const at::Tensor& q,
    const at::Tensor& key_cache,
    const at::Tensor& value_cache,
    const at::Tensor& lengths,
    int64_t n_head,
    bool causal,
    std::optional<double> scale) {
  const double s = check_decode_attention_args(q, key_cache, value_cache, lengths, n_head, scale);
  const at::Tensor rows = lengths.to(at::kLong).contiguous();
  const int64_t capacity = key_cache.size(1);
  const int64_t* n = rows.const_data_ptr<int64_t>();
  for (int64_t b = 0; b < rows.numel(); ++b) {
    TORCH_CHECK(
        n[b] >= 0 && n[b] <= capacity,
        "decode_attention: lengths must lie in [0, capacity=",
        capacity,
        "], got ",
        n[b],
        " for row ",
        b);
  }
  const auto type = q.scalar_type();
  if (type != at::kFloat && type != at::kBFloat16 && type != at::kHalf) {
    return decode_attention_by_sdpa(q, key_cache, value_cache, rows, n_head, causal, s);
  }
  // The loop reads whole feature rows: unit stride along the features.
  const auto rows_of = [](const at::Tensor& t) { return t.stride(2) == 1 ? t : t.contiguous(); };
  at::Tensor out = at::empty(q.sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));
  decode_loop().fn(
      {q.contiguous(), rows_of(key_cache), rows_of(value_cache), rows, out, n_head, causal, s});
  return out;
}

} // namespace

TORCH_LIBRARY_IMPL(rotary_attention, CPU, m) {
  m.impl("decode_attention", &decode_attention_cpu);
}

} // namespace rotary_attention::ops::cpu
