#include "rotary_attention/whisper/plain_attention.h"

#include <ATen/ATen.h>

#include <cmath>

#include "dense_linear.h"

namespace rotary_attention::whisper {

PlainAttentionImpl::PlainAttentionImpl(int64_t n_state_, int64_t n_head_)
    : n_state(n_state_), n_head(n_head_) {
  TORCH_CHECK(
      n_head > 0 && n_state % n_head == 0,
      "PlainAttention: n_state (",
      n_state,
      ") must be a multiple of n_head (",
      n_head,
      ")");
  reset();
}

void PlainAttentionImpl::reset() {
  query = register_module("query", torch::nn::Linear(n_state, n_state));
  key = register_module(
      "key", torch::nn::Linear(torch::nn::LinearOptions(n_state, n_state).bias(false)));
  value = register_module("value", torch::nn::Linear(n_state, n_state));
  out = register_module("out", torch::nn::Linear(n_state, n_state));
}

namespace {

// The layer's F.linear (many rows: the encoder's frames, the audio's keys).
at::Tensor project(const torch::nn::Linear& layer, const at::Tensor& x) {
  return detail::dense_linear(x, layer->weight, layer->bias);
}

} // namespace

void PlainAttentionImpl::check_input(const torch::Tensor& x) const {
  TORCH_CHECK(
      x.dim() == 3 && x.size(2) == n_state,
      "PlainAttention: expected x of shape (B, T, n_state=",
      n_state,
      "), got shape ",
      x.sizes());
}

torch::Tensor PlainAttentionImpl::forward(
    const torch::Tensor& x, const torch::Tensor& xa, const torch::Tensor& mask, KVCache* kv_cache) {
  check_input(x);
  const auto q = project(query, x);
  at::Tensor k, v;
  if (!xa.defined()) {
    k = project(key, x);
    v = project(value, x);
    if (kv_cache != nullptr) {
      const auto& entry = kv_cache->append(this, k, v);
      k = entry.key();
      v = entry.value();
    }
  } else if (const auto* cached = kv_cache ? kv_cache->find(this) : nullptr) {
    k = cached->key_buffer;
    v = cached->value_buffer;
  } else {
    k = project(key, xa);
    v = project(value, xa);
    if (kv_cache != nullptr) {
      kv_cache->store(this, k, v);
    }
  }
  if (!xa.defined() && !mask.defined() && kv_cache == nullptr &&
      detail::dense_attention_applies(q, k)) {
    return project(out, detail::dense_attention(q, k, v, n_head)); // an encoder's
  }
  const auto heads = [&](const at::Tensor& t) {
    return t.view({t.size(0), t.size(1), n_head, -1}).transpose(1, 2);
  };
  // A beam over one audio: batch-1 audio keys serve every row.
  const auto expand = [&](const at::Tensor& t) {
    return t.size(0) == x.size(0) ? t : t.expand({x.size(0), t.size(1), t.size(2)});
  };
  const auto attended = at::scaled_dot_product_attention(
      heads(q),
      heads(expand(k)),
      heads(expand(v)),
      {},
      0.0,
      /*is_causal=*/mask.defined() && x.size(1) > 1);
  return project(out, attended.transpose(1, 2).flatten(2));
}

std::tuple<torch::Tensor, torch::Tensor> PlainAttentionImpl::forward_with_weights(
    const torch::Tensor& x, const torch::Tensor& xa, const torch::Tensor& mask) {
  check_input(x);
  const auto& source = xa.defined() ? xa : x;
  const auto heads = [&](const at::Tensor& t) {
    return t.view({t.size(0), t.size(1), n_head, -1}).transpose(1, 2);
  };
  const auto q = heads(project(query, x));
  const auto k = heads(project(key, source));
  const auto v = heads(project(value, source));
  const double scale = std::pow(static_cast<double>(n_state / n_head), -0.25);
  auto qk = at::matmul(q * scale, (k * scale).transpose(-1, -2));
  if (mask.defined()) {
    const int64_t n = x.size(1);
    qk = qk + mask.narrow(0, 0, n).narrow(1, 0, n);
  }
  qk = qk.to(at::kFloat);
  const auto w = at::softmax(qk, -1).to(q.scalar_type());
  const auto attended = at::matmul(w, v).transpose(1, 2).flatten(2);
  return {project(out, attended), qk};
}

} // namespace rotary_attention::whisper
