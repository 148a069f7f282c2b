#include "cached_text_decoder.h"

#include <ATen/ATen.h>

#include "few_rows_linear.h"
#include "rotary_attention/ops/decode_attention.h"
#include "rotary_attention/ops/rotary.h"

namespace rotary_attention::whisper::detail {

namespace {

bool fp32_cpu_eval(const torch::nn::Module& layer, const torch::nn::LinearImpl& query) {
  return !layer.is_training() && query.weight.scalar_type() == at::kFloat &&
         query.weight.device().is_cpu();
}

bool reproduced(const MultiHeadAttentionImpl& a) {
  const auto& o = a.options;
  return o.sdpa() && !o.group_norm() && !o.absolute_positions() && fp32_cpu_eval(a, *a.query);
}

bool reproduced(const PlainAttentionImpl& a) {
  return fp32_cpu_eval(a, *a.query);
}

at::Tensor layer_norm(const at::Tensor& x, const torch::nn::LayerNorm& ln) {
  return at::layer_norm(x, ln->options.normalized_shape(), ln->weight, ln->bias, ln->options.eps());
}

} // namespace

bool CachedTextDecoder::supports(const TextDecoderImpl& decoder) {
  if (decoder.is_training() || decoder.token_embedding->weight.scalar_type() != at::kFloat ||
      !decoder.token_embedding->weight.device().is_cpu() || decoder.blocks->size() == 0) {
    return false;
  }
  for (const auto& module : *decoder.blocks) {
    const auto& block = *module->as<ResidualAttentionBlock>();
    if (!block.cross_attention) {
      return false;
    }
    const bool ok = block.attention == AttentionKind::kPlain
                        ? reproduced(*block.plain_attn) && reproduced(*block.plain_cross_attn)
                        : reproduced(*block.attn) && reproduced(*block.cross_attn);
    if (!ok) {
      return false;
    }
  }
  return true;
}

at::Tensor CachedTextDecoder::Projection::operator()(const at::Tensor& x) const {
  return linear_for_rows(x, weight, bias, scale);
}

CachedTextDecoder::Projection CachedTextDecoder::projection(
    const torch::nn::LinearImpl& linear) const {
  Projection p;
  p.bias = linear.bias;
  if (compute_type_ == ComputeType::kInt8) {
    std::tie(p.weight, p.scale) = quantize_rows_int8(linear.weight);
  } else {
    p.weight = linear.weight;
  }
  return p;
}

CachedTextDecoder::Attention CachedTextDecoder::attention(
    const MultiHeadAttentionImpl& layer) const {
  Attention a;
  a.query = projection(*layer.query);
  a.key = projection(*layer.key);
  a.value = projection(*layer.value);
  a.out = projection(*layer.out);
  a.ln = layer.layer_norm;
  a.inv_freq = layer.rotary_emb->inv_freq;
  a.rotation = layer.rotation_layer->rotation_matrix;
  a.inner_residual = true;
  return a;
}

CachedTextDecoder::Attention CachedTextDecoder::attention(const PlainAttentionImpl& layer) const {
  Attention a;
  a.query = projection(*layer.query);
  a.key = projection(*layer.key);
  a.value = projection(*layer.value);
  a.out = projection(*layer.out);
  return a;
}

at::Tensor CachedTextDecoder::Attention::rotate(
    const at::Tensor& x, int64_t n_head, int64_t offset) const {
  if (!inv_freq.defined()) {
    return x; // Whisper's own attention: no rotation
  }
  const int64_t rows = x.size(0), t = x.size(1);
  const auto heads = x.reshape({rows, t, n_head, -1});
  return at::matmul(rotary(heads, inv_freq, std::nullopt, offset), rotation).view(x.sizes());
}

CachedTextDecoder::CachedTextDecoder(TextDecoder decoder, ComputeType compute_type)
    : decoder_(std::move(decoder)), compute_type_(compute_type) {
  TORCH_CHECK(
      supports(*decoder_),
      "CachedTextDecoder: the decoder must be an fp32 CPU model in eval mode whose attention "
      "layers have the default options (sdpa, LayerNorm, relative positions)");
  at::NoGradGuard no_grad;
  n_head_ = decoder_->dims.n_text_head;
  for (const auto& module : *decoder_->blocks) {
    const auto& block = *module->as<ResidualAttentionBlock>();
    Layer layer;
    layer.attn_ln = block.attn_ln;
    layer.cross_attn_ln = block.cross_attn_ln;
    layer.mlp_ln = block.mlp_ln;
    if (block.attention == AttentionKind::kPlain) {
      layer.self = attention(*block.plain_attn);
      layer.cross = attention(*block.plain_cross_attn);
    } else {
      layer.self = attention(*block.attn);
      layer.cross = attention(*block.cross_attn);
    }
    layer.fc1 = projection(*block.mlp->ptr<torch::nn::LinearImpl>(0));
    layer.fc2 = projection(*block.mlp->ptr<torch::nn::LinearImpl>(2));
    layers_.push_back(std::move(layer));
  }
  // Whisper's logits: x @ token_embedding^T, a projection without bias.
  if (compute_type_ == ComputeType::kInt8) {
    std::tie(logits_.weight, logits_.scale) = quantize_rows_int8(decoder_->token_embedding->weight);
  } else {
    logits_.weight = decoder_->token_embedding->weight;
  }
}

void CachedTextDecoder::cache_audio(const at::Tensor& audio_features) {
  audio_keys_.clear();
  audio_values_.clear();
  for (const auto& layer : layers_) {
    // S rows: dense_linear (Projection's GEMM).
    const auto& c = layer.cross;
    audio_keys_.push_back(c.rotate(c.key(audio_features), n_head_, 0).contiguous());
    audio_values_.push_back(c.value(audio_features).contiguous());
  }
}

at::Tensor CachedTextDecoder::logits(
    const at::Tensor& tokens,
    const at::Tensor& audio_features,
    const std::vector<int64_t>& positions) {
  const auto& dims = decoder_->dims;
  TextDecoderImpl::check_tokens(tokens);
  TORCH_CHECK(
      audio_features.dim() == 3 && audio_features.size(2) == dims.n_text_state &&
          audio_features.size(0) > 0 && tokens.size(0) % audio_features.size(0) == 0,
      "TextDecoder: expected audio_features of shape (n_audio, S, n_text_state=",
      dims.n_text_state,
      ") with n_audio dividing the ",
      tokens.size(0),
      " rows of tokens, got shape ",
      audio_features.sizes());
  const int64_t rows = tokens.size(0), t = tokens.size(1), n = dims.n_text_state;
  const int64_t n_audio = audio_features.size(0), per_audio = rows / n_audio;
  TORCH_CHECK(
      length_ + t <= dims.n_text_ctx,
      "TextDecoder: ",
      length_,
      " cached and ",
      t,
      " new tokens exceed n_text_ctx=",
      dims.n_text_ctx);
  at::NoGradGuard no_grad;
  // A beam starts with its rows' initial tokens all the same (Whisper repeats
  // them per row): one row per audio reads them (a fifth of the work for a
  // beam of five: the prompt can be 200 tokens), its cache copied to the rest.
  if (length_ == 0 && t > 1 && per_audio > 1) {
    const auto grouped = tokens.reshape({n_audio, per_audio, t});
    if (at::equal(grouped, grouped.narrow(1, 0, 1).expand_as(grouped))) {
      const auto out = logits(grouped.select(1, 0), audio_features, positions);
      widen_rows(per_audio);
      return out.repeat_interleave(per_audio, 0);
    }
  }
  if (length_ == 0) {
    // The same features as the last sequence's (a fallback's next temperature,
    // the decode after language detection): their keys are still cached.
    // (Inference tensors keep no version: their keys are always recomputed.)
    const bool tracked = !audio_features.is_inference();
    const bool same_audio = tracked && audio_.defined() &&
                            audio_.unsafeGetTensorImpl() == audio_features.unsafeGetTensorImpl() &&
                            audio_version_ == audio_features._version() && !audio_keys_.empty();
    if (!same_audio) {
      cache_audio(audio_features.to(at::kFloat));
      audio_ = tracked ? audio_features : at::Tensor();
      audio_version_ = tracked ? audio_features._version() : 0;
    }
    self_keys_.assign(layers_.size(), at::Tensor());
    self_values_.assign(layers_.size(), at::Tensor());
    for (size_t l = 0; l < layers_.size(); ++l) {
      self_keys_[l] = at::empty({rows, dims.n_text_ctx, n}, at::kFloat);
      self_values_[l] = at::empty({rows, dims.n_text_ctx, n}, at::kFloat);
    }
  }
  TORCH_CHECK(
      self_keys_.front().size(0) == rows && audio_keys_.front().size(0) == n_audio,
      "TextDecoder: ",
      rows,
      " rows over ",
      n_audio,
      " audios follow ",
      self_keys_.front().size(0),
      " rows over ",
      audio_keys_.front().size(0),
      "; reset() starts a new sequence");
  const int64_t seen = length_ + t;
  auto x = decoder_->token_embedding->forward(tokens) +
           decoder_->positional_embedding.narrow(0, length_, t);
  const auto self_lengths = at::full({rows}, seen, at::kLong);
  const auto audio_lengths = at::full({n_audio}, audio_keys_.front().size(1), at::kLong);
  const auto heads = [&](const at::Tensor& y, int64_t b, int64_t steps) {
    return y.view({b, steps, n_head_, n / n_head_}).transpose(1, 2);
  };
  for (size_t l = 0; l < layers_.size(); ++l) {
    const auto& layer = layers_[l];
    // Self-attention. The fork's layer adds its input (the block's
    // attn_ln(x)) to its output, and the block adds x: the original's two
    // residuals. Whisper's own layer has neither its norm nor its residual.
    {
      const auto& a = layer.self;
      const auto h = layer_norm(x, layer.attn_ln);
      const auto xn = a.norm(h);
      // The original rotates the queries at 0..T-1 and every cached key at
      // its index: the new keys once, at length_.., into the cache.
      const auto q = a.rotate(a.query(xn), n_head_, 0);
      self_keys_[l].narrow(1, length_, t).copy_(a.rotate(a.key(xn), n_head_, length_));
      self_values_[l].narrow(1, length_, t).copy_(a.value(xn));
      at::Tensor attended;
      if (t == 1) {
        attended = decode_attention(q, self_keys_[l], self_values_[l], self_lengths, n_head_);
      } else {
        // SDPA's is_causal, as the original: query i sees keys 0..i.
        attended = at::scaled_dot_product_attention(
                       heads(q, rows, t),
                       heads(self_keys_[l].narrow(1, 0, seen), rows, seen),
                       heads(self_values_[l].narrow(1, 0, seen), rows, seen),
                       {},
                       0.0,
                       /*is_causal=*/true)
                       .transpose(1, 2)
                       .reshape({rows, t, n});
      }
      x = x + a.residual(a.out(attended), h);
    }
    // Cross-attention: a beam's queries read their audio's keys once, as one
    // row's queries (their positions: 0..T-1, each).
    {
      const auto& a = layer.cross;
      const auto h = layer_norm(x, layer.cross_attn_ln);
      const auto q = a.rotate(a.query(a.norm(h)), n_head_, 0);
      const auto grouped = q.reshape({n_audio, per_audio * t, n});
      at::Tensor attended;
      if (t == 1) {
        attended =
            decode_attention(grouped, audio_keys_[l], audio_values_[l], audio_lengths, n_head_);
      } else {
        const int64_t s = audio_keys_[l].size(1);
        attended = at::scaled_dot_product_attention(
                       heads(grouped, n_audio, per_audio * t),
                       heads(audio_keys_[l], n_audio, s),
                       heads(audio_values_[l], n_audio, s))
                       .transpose(1, 2);
      }
      x = x + a.residual(a.out(attended.reshape({rows, t, n})), h);
    }
    x = x + layer.fc2(at::gelu(layer.fc1(layer_norm(x, layer.mlp_ln))));
  }
  length_ = seen;
  if (!positions.empty()) {
    x = x.index_select(1, at::tensor(positions, at::kLong));
  }
  return logits_(layer_norm(x, decoder_->ln));
}

void CachedTextDecoder::widen_rows(int64_t copies) {
  for (auto* caches : {&self_keys_, &self_values_}) {
    for (auto& cache : *caches) {
      auto wide =
          at::empty({cache.size(0) * copies, cache.size(1), cache.size(2)}, cache.options());
      wide.narrow(1, 0, length_).copy_(cache.narrow(1, 0, length_).repeat_interleave(copies, 0));
      cache = wide;
    }
  }
}

void CachedTextDecoder::reorder(const at::Tensor& source_rows) {
  at::NoGradGuard no_grad;
  TORCH_CHECK(
      self_keys_.empty() || source_rows.numel() == self_keys_.front().size(0),
      "reorder: expected one source row for each of the ",
      self_keys_.empty() ? 0 : self_keys_.front().size(0),
      " rows, got ",
      source_rows.numel());
  for (auto* caches : {&self_keys_, &self_values_}) {
    for (auto& cache : *caches) {
      auto written = cache.narrow(1, 0, length_);
      written.copy_(written.index_select(0, source_rows));
    }
  }
}

void CachedTextDecoder::reset() {
  length_ = 0;
  self_keys_.clear();
  self_values_.clear();
}

} // namespace rotary_attention::whisper::detail
