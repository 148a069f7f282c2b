#include "rotary_attention/nn/multi_head_attention.h"

#include <ATen/ATen.h>

#include "rotary_attention/ops/rotary.h"

#include <cmath>

namespace rotary_attention {
namespace {

// Whisper's Linear: weight and bias are cast to the input's dtype. at::linear
// is what Python's F.linear calls (torch::nn::functional::linear adds the bias
// separately for 3-D input, which rounds differently).
torch::Tensor whisper_linear(const torch::nn::Linear& layer, const torch::Tensor& x) {
  const auto& bias = layer->bias;
  return at::linear(
      x,
      layer->weight.to(x.dtype()),
      bias.defined() ? std::optional<torch::Tensor>(bias.to(x.dtype())) : std::nullopt);
}

void check_input(const char* name, const torch::Tensor& t, int64_t n_state) {
  TORCH_CHECK(
      t.dim() == 3 && t.size(2) == n_state,
      "MultiHeadAttention: expected ",
      name,
      " of shape (B, T, n_state=",
      n_state,
      "), got shape ",
      t.sizes());
  TORCH_CHECK(
      t.is_floating_point(),
      "MultiHeadAttention: ",
      name,
      " must be a floating tensor, got ",
      t.scalar_type());
}

} // namespace

MultiHeadAttentionImpl::MultiHeadAttentionImpl(const MultiHeadAttentionOptions& options_)
    : options(options_) {
  reset();
}

void MultiHeadAttentionImpl::reset() {
  const int64_t n_state = options.n_state();
  const int64_t n_head = options.n_head();
  TORCH_CHECK(
      n_state > 0 && n_head > 0,
      "MultiHeadAttention: n_state and n_head must be positive, got n_state=",
      n_state,
      ", n_head=",
      n_head);
  TORCH_CHECK(
      n_state % n_head == 0,
      "MultiHeadAttention: n_state (",
      n_state,
      ") must be divisible by n_head (",
      n_head,
      ")");
  TORCH_CHECK(
      head_dim() % 2 == 0,
      "MultiHeadAttention: head_dim = n_state / n_head = ",
      head_dim(),
      " must be even (rotary embeddings rotate pairs of features)");
  TORCH_CHECK(
      options.dropout_rate() >= 0.0 && options.dropout_rate() <= 1.0,
      "MultiHeadAttention: dropout_rate must be in [0, 1], got ",
      options.dropout_rate());

  query = register_module("query", torch::nn::Linear(n_state, n_state));
  key = register_module(
      "key", torch::nn::Linear(torch::nn::LinearOptions(n_state, n_state).bias(false)));
  value = register_module("value", torch::nn::Linear(n_state, n_state));
  out = register_module("out", torch::nn::Linear(n_state, n_state));
  rotary_emb = register_module("rotary_emb", RotaryEmbedding(head_dim()));
  rotation_layer = register_module("rotation_layer", RotationLayer(head_dim()));
  temperature = register_parameter(
      "temperature", torch::ones({1}) * std::pow(static_cast<double>(head_dim()), -0.5));
  dropout = register_module("dropout", torch::nn::Dropout(options.dropout_rate()));
  if (options.group_norm()) {
    group_norm = register_module("attn_ln", torch::nn::GroupNorm(1, n_state));
  } else {
    layer_norm =
        register_module("attn_ln", torch::nn::LayerNorm(torch::nn::LayerNormOptions({n_state})));
  }
}

std::tuple<torch::Tensor, torch::Tensor> MultiHeadAttentionImpl::forward(
    const torch::Tensor& x, const torch::Tensor& xa, const torch::Tensor& mask, KVCache* kv_cache) {
  const int64_t n_state = options.n_state();
  check_input("x", x, n_state);
  const bool cross = xa.defined();
  if (cross) {
    check_input("xa", xa, n_state);
    TORCH_CHECK(
        xa.size(0) == x.size(0),
        "MultiHeadAttention: xa must have x's batch size ",
        x.size(0),
        ", got shape ",
        xa.sizes());
  }

  torch::Tensor x_norm;
  if (options.group_norm()) {
    TORCH_CHECK(
        x.size(1) == n_state,
        "MultiHeadAttention: group_norm=true applies GroupNorm(1, n_state) to x of shape "
        "(B, T, n_state), which treats dim 1 (T) as the channels; the original can only "
        "run it when T == n_state (",
        n_state,
        "), got T=",
        x.size(1));
    x_norm = group_norm(x);
  } else {
    x_norm = layer_norm(x);
  }

  const bool absolute = options.absolute_positions();
  torch::Tensor q = whisper_linear(query, x_norm);
  torch::Tensor k, v;
  bool keys_rotated = false; // absolute mode caches keys already rotated
  int64_t q_position = 0;    // absolute_positions: position of x's first token
  int64_t causal_offset = 0; // ... for self-attention over cached keys (mask alignment)
  if (kv_cache == nullptr) {
    const torch::Tensor& source = cross ? xa : x_norm;
    k = whisper_linear(key, source);
    v = whisper_linear(value, source);
  } else if (cross) {
    // Keys and values of xa are computed once per sequence.
    const KVCache::Entry* cached = kv_cache->find(this);
    if (cached == nullptr) {
      torch::Tensor new_k = whisper_linear(key, xa);
      cached =
          &kv_cache->store(this, absolute ? rotate(new_k, 0) : new_k, whisper_linear(value, xa));
    }
    k = cached->key;
    v = cached->value;
    keys_rotated = absolute;
    if (absolute) {
      // Queries continue from where this layer's previous queries stopped.
      q_position = kv_cache->advance_queries(this, x.size(1));
    }
  } else {
    torch::Tensor new_k = whisper_linear(key, x_norm);
    if (absolute) {
      q_position = causal_offset = kv_cache->length(this);
      new_k = rotate(new_k, q_position);
    }
    const KVCache::Entry& entry = kv_cache->append(this, new_k, whisper_linear(value, x_norm));
    k = entry.key;
    v = entry.value;
    keys_rotated = absolute;
  }

  q = rotate(q, q_position);
  if (!keys_rotated) {
    k = rotate(k, 0);
  }

  auto [wv, qk] = qkv_attention(q, k, v, mask, causal_offset);
  return {whisper_linear(out, wv) + x, qk};
}

torch::Tensor MultiHeadAttentionImpl::rotate(const torch::Tensor& t, int64_t offset) {
  // Explicit sizes (not -1) so that empty batches and sequences reshape too.
  auto heads = t.view({t.size(0), t.size(1), options.n_head(), head_dim()});
  heads = offset == 0 ? rotary_emb->rotate_queries_or_keys(heads)
                      : rotary(heads, rotary_emb->inv_freq, std::nullopt, offset);
  const auto& R = rotation_layer->rotation_matrix;
  if (heads.scalar_type() != R.scalar_type()) {
    // 16-bit input in an fp32 module: the rotation runs in fp32, as the
    // original's would (its rotary result is fp32), and the result returns to
    // the input dtype so attention runs in it (the original fails there).
    heads = rotation_layer(heads.to(R.scalar_type())).to(t.scalar_type());
  } else {
    heads = rotation_layer(heads);
  }
  return heads.view(t.sizes());
}

std::tuple<torch::Tensor, torch::Tensor> MultiHeadAttentionImpl::qkv_attention(
    const torch::Tensor& q_in,
    const torch::Tensor& k_in,
    const torch::Tensor& v_in,
    const torch::Tensor& mask,
    int64_t causal_offset) {
  const int64_t n_batch = q_in.size(0), n_ctx = q_in.size(1), n_state = q_in.size(2);
  const int64_t n_head = options.n_head();
  const int64_t n_keys = k_in.size(1);
  if (mask.defined()) {
    TORCH_CHECK(
        mask.dim() == 2,
        "MultiHeadAttention: mask must be a 2-D additive mask of at least (T, T) = (",
        n_ctx,
        ", ",
        n_ctx,
        "), got shape ",
        mask.sizes());
  }

  const auto q = q_in.view({n_batch, n_ctx, n_head, head_dim()}).permute({0, 2, 1, 3});
  const auto k = k_in.view({n_batch, n_keys, n_head, head_dim()}).permute({0, 2, 1, 3});
  const auto v = v_in.view({n_batch, v_in.size(1), n_head, head_dim()}).permute({0, 2, 1, 3});

  if (options.sdpa()) {
    // As the original: the mask's values are ignored; its presence makes the
    // attention causal when there is more than one query: top-left aligned,
    // or bottom-right (query i at causal_offset + i) for absolute positions.
    const bool causal = mask.defined() && n_ctx > 1;
    torch::Tensor a;
    if (causal && causal_offset > 0) {
      const auto allowed =
          torch::ones({n_ctx, n_keys}, q.options().dtype(torch::kBool)).tril(causal_offset);
      a = at::scaled_dot_product_attention(q, k, v, allowed, 0.0, false);
    } else {
      a = at::scaled_dot_product_attention(q, k, v, {}, 0.0, causal);
    }
    return {a.permute({0, 2, 1, 3}).reshape({n_batch, n_ctx, n_state}), torch::Tensor()};
  }

  const torch::Tensor& scale = temperature;
  torch::Tensor qk = torch::matmul(q * scale, k.transpose(-2, -1) * scale);
  if (mask.defined()) {
    // The original adds mask[:T, :T]; with absolute positions the rows are the
    // queries' positions and the columns the keys': mask[offset:offset+T, :S].
    TORCH_CHECK(
        causal_offset == 0 || (mask.size(0) >= causal_offset + n_ctx && mask.size(1) >= n_keys),
        "MultiHeadAttention: with absolute_positions the explicit path adds mask[",
        causal_offset,
        ":",
        causal_offset + n_ctx,
        ", :",
        n_keys,
        "], but the mask has shape ",
        mask.sizes(),
        "; pass a mask covering the whole sequence (e.g. (n_ctx, n_ctx))");
    const auto m = causal_offset == 0
                       ? mask.slice(0, 0, n_ctx).slice(1, 0, n_ctx)
                       : mask.slice(0, causal_offset, causal_offset + n_ctx).slice(1, 0, n_keys);
    TORCH_CHECK(
        (m.size(0) == 1 || m.size(0) == n_ctx) && (m.size(1) == 1 || m.size(1) == n_keys),
        "MultiHeadAttention: the explicit path (sdpa=false) adds mask[:T, :T] (shape ",
        m.sizes(),
        ") to logits of shape (B, H, T=",
        n_ctx,
        ", S=",
        n_keys,
        "); with S != T and T > 1 the original cannot run this either; use sdpa=true, or "
        "pass a mask of at least (T, T) with S == T");
    qk += m;
  }
  qk = qk.to(torch::kFloat);
  auto w = torch::softmax(qk, -1).to(q.scalar_type());
  w = dropout(w);
  auto out_attn = torch::matmul(w, v).permute({0, 2, 1, 3}).reshape({n_batch, n_ctx, n_state});
  return {out_attn, qk.detach()};
}

void MultiHeadAttentionImpl::pretty_print(std::ostream& stream) const {
  stream << "rotary_attention::MultiHeadAttention(n_state=" << options.n_state()
         << ", n_head=" << options.n_head() << ", dropout_rate=" << options.dropout_rate()
         << ", group_norm=" << (options.group_norm() ? "true" : "false")
         << ", sdpa=" << (options.sdpa() ? "true" : "false")
         << ", absolute_positions=" << (options.absolute_positions() ? "true" : "false") << ")";
}

} // namespace rotary_attention
