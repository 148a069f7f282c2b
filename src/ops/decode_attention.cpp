// rotary_attention::decode_attention: its C++ entry point, argument checks,
// Meta kernel, the inference-only guard at the autograd key, and the
// SDPA-based kernel for CUDA (the CPU loop is in cpu/decode_attention_kernel.cpp).

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "decode_attention_args.h"
#include "rotary_attention/ops/decode_attention.h"
#include "typed_op.h"

namespace rotary_attention {
namespace ops {

double check_decode_attention_args(
    const at::Tensor& q,
    const at::Tensor& key_cache,
    const at::Tensor& value_cache,
    const at::Tensor& lengths,
    int64_t n_head,
    std::optional<double> scale) {
  TORCH_CHECK(
      q.dim() == 3 && q.is_floating_point(),
      "decode_attention: q must be a floating tensor of shape (B, T, n_state), got ",
      q.scalar_type(),
      " of shape ",
      q.sym_sizes());
  const c10::SymInt n_state = q.sym_size(2);
  TORCH_CHECK(
      n_head > 0 && n_state % n_head == 0,
      "decode_attention: n_state (",
      n_state,
      ") must be divisible by n_head (",
      n_head,
      ")");
  for (const auto& [name, cache] :
       {std::pair{"key_cache", &key_cache}, {"value_cache", &value_cache}}) {
    TORCH_CHECK(
        cache->dim() == 3 && cache->sym_size(0) == q.sym_size(0) && cache->sym_size(2) == n_state,
        "decode_attention: ",
        name,
        " must have shape (B, capacity, n_state) = (",
        q.sym_size(0),
        ", capacity, ",
        n_state,
        "), got ",
        cache->sym_sizes());
    TORCH_CHECK(
        cache->scalar_type() == q.scalar_type() && cache->device() == q.device(),
        "decode_attention: ",
        name,
        " must have q's dtype and device (",
        q.scalar_type(),
        ", ",
        q.device(),
        "), got ",
        cache->scalar_type(),
        ", ",
        cache->device());
  }
  TORCH_CHECK(
      value_cache.sym_size(1) == key_cache.sym_size(1),
      "decode_attention: key_cache and value_cache must have the same capacity, got ",
      key_cache.sym_sizes(),
      " and ",
      value_cache.sym_sizes());
  TORCH_CHECK(
      lengths.dim() == 1 && lengths.sym_size(0) == q.sym_size(0) &&
          (lengths.scalar_type() == at::kLong || lengths.scalar_type() == at::kInt) &&
          lengths.device() == q.device(),
      "decode_attention: lengths must be an int64 or int32 tensor of shape (B,) = (",
      q.sym_size(0),
      ",) on q's device, got ",
      lengths.scalar_type(),
      " of shape ",
      lengths.sym_sizes(),
      " on ",
      lengths.device());
  if (scale.has_value()) {
    TORCH_CHECK(std::isfinite(*scale), "decode_attention: scale must be finite, got ", *scale);
    return *scale;
  }
  const c10::SymInt head_dim = n_state / n_head;
  return 1.0 / std::sqrt(static_cast<double>(head_dim.guard_int(__FILE__, __LINE__)));
}

at::Tensor decode_attention_by_sdpa(
    const at::Tensor& q,
    const at::Tensor& key_cache,
    const at::Tensor& value_cache,
    const at::Tensor& lengths,
    int64_t n_head,
    bool causal,
    double scale) {
  const c10::SymInt B = q.sym_size(0), T = q.sym_size(1), n_state = q.sym_size(2);
  const c10::SymInt capacity = key_cache.sym_size(1), head_dim = n_state / n_head;
  const auto index_options = lengths.options().dtype(at::kLong);
  // Query t of row b sees keys [0, limit[b, t]).
  at::Tensor limit = lengths.to(at::kLong).view_symint({B, 1, 1});
  if (causal) {
    limit = limit - (T - 1) + at::arange(c10::Scalar(T), index_options).view_symint({1, T, 1});
  }
  const at::Tensor seen =
      at::arange(c10::Scalar(capacity), index_options).view_symint({1, 1, capacity}) < limit;
  const auto heads = [&](const at::Tensor& t) {
    return t.reshape_symint({B, t.sym_size(1), c10::SymInt(n_head), head_dim}).transpose(1, 2);
  };
  at::Tensor out = at::scaled_dot_product_attention(
      heads(q), heads(key_cache), heads(value_cache), seen.unsqueeze(1), 0.0, false, scale);
  // A query that sees no key gets zeros (SDPA's softmax over nothing is NaN).
  out = out.masked_fill(seen.any(-1).logical_not().unsqueeze(1).unsqueeze(-1), 0);
  return out.transpose(1, 2).reshape_symint({B, T, n_state});
}

namespace {

at::Tensor decode_attention_meta(
    const at::Tensor& q,
    const at::Tensor& key_cache,
    const at::Tensor& value_cache,
    const at::Tensor& lengths,
    int64_t n_head,
    bool causal,
    std::optional<double> scale) {
  check_decode_attention_args(q, key_cache, value_cache, lengths, n_head, scale);
  return at::empty_symint(q.sym_sizes(), q.options().memory_format(at::MemoryFormat::Contiguous));
}

at::Tensor decode_attention_cuda(
    const at::Tensor& q,
    const at::Tensor& key_cache,
    const at::Tensor& value_cache,
    const at::Tensor& lengths,
    int64_t n_head,
    bool causal,
    std::optional<double> scale) {
  const double s = check_decode_attention_args(q, key_cache, value_cache, lengths, n_head, scale);
  return decode_attention_by_sdpa(q, key_cache, value_cache, lengths, n_head, causal, s);
}

// No derivative: refuse inputs that require grad rather than return a result
// that autograd would silently treat as a constant.
at::Tensor decode_attention_autograd(
    const at::Tensor& q,
    const at::Tensor& key_cache,
    const at::Tensor& value_cache,
    const at::Tensor& lengths,
    int64_t n_head,
    bool causal,
    std::optional<double> scale) {
  TORCH_CHECK(
      !at::GradMode::is_enabled() ||
          !(q.requires_grad() || key_cache.requires_grad() || value_cache.requires_grad()),
      "decode_attention is for inference and has no backward, but ",
      q.requires_grad()           ? "q"
      : key_cache.requires_grad() ? "key_cache"
                                  : "value_cache",
      " requires grad: run it under torch.no_grad() or torch.inference_mode(), or detach its "
      "inputs");
  at::AutoDispatchBelowADInplaceOrView guard;
  return decode_attention(q, key_cache, value_cache, lengths, n_head, causal, scale);
}

} // namespace

TORCH_LIBRARY_IMPL(rotary_attention, Meta, m) {
  m.impl("decode_attention", &decode_attention_meta);
}

TORCH_LIBRARY_IMPL(rotary_attention, CUDA, m) {
  m.impl("decode_attention", &decode_attention_cuda);
}

TORCH_LIBRARY_IMPL(rotary_attention, Autograd, m) {
  m.impl("decode_attention", &decode_attention_autograd);
}

} // namespace ops

at::Tensor decode_attention(
    const at::Tensor& q,
    const at::Tensor& key_cache,
    const at::Tensor& value_cache,
    const at::Tensor& lengths,
    int64_t n_head,
    bool causal,
    std::optional<double> scale) {
  static const auto op =
      ops::typed_op<decltype(decode_attention)>("rotary_attention::decode_attention");
  return op.call(q, key_cache, value_cache, lengths, n_head, causal, scale);
}

} // namespace rotary_attention
