#include "rotary_attention/whisper/model.h"

#include <ATen/ATen.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/linear.h>

#include <cmath>
#include <cstring>
#include <map>
#include <sstream>

#include "../weight_files/torch_save_reader.h"
#include "dense_linear.h"
#include "few_rows_linear.h"
#include "rotary_attention/serialize.h"

namespace rotary_attention::whisper {

ResidualAttentionBlockImpl::ResidualAttentionBlockImpl(
    int64_t n_state_, int64_t n_head_, bool cross_attention_, AttentionKind attention_)
    : n_state(n_state_), n_head(n_head_), cross_attention(cross_attention_), attention(attention_) {
  reset();
}

void ResidualAttentionBlockImpl::reset() {
  auto norm = [&] { return torch::nn::LayerNorm(torch::nn::LayerNormOptions({n_state})); };
  const bool plain = attention == AttentionKind::kPlain;
  if (plain) {
    plain_attn = register_module("attn", PlainAttention(n_state, n_head));
  } else {
    attn = register_module("attn", MultiHeadAttention(n_state, n_head));
  }
  attn_ln = register_module("attn_ln", norm());
  if (cross_attention) {
    if (plain) {
      plain_cross_attn = register_module("cross_attn", PlainAttention(n_state, n_head));
    } else {
      cross_attn = register_module("cross_attn", MultiHeadAttention(n_state, n_head));
    }
    cross_attn_ln = register_module("cross_attn_ln", norm());
  }
  mlp = register_module(
      "mlp",
      torch::nn::Sequential(
          torch::nn::Linear(n_state, 4 * n_state),
          torch::nn::GELU(),
          torch::nn::Linear(4 * n_state, n_state)));
  mlp_ln = register_module("mlp_ln", norm());
}

namespace {

// F.linear; a decode step's few rows read the weight once at memory speed.
at::Tensor linear_of_rows(const at::Tensor& x, const torch::nn::LinearImpl& layer) {
  return detail::linear_for_rows(x, layer.weight, layer.bias).to(x.scalar_type());
}

} // namespace

const torch::nn::Module* ResidualAttentionBlockImpl::self_attention() const {
  return attn ? static_cast<const torch::nn::Module*>(attn.get()) : plain_attn.get();
}

torch::Tensor ResidualAttentionBlockImpl::forward(
    const torch::Tensor& x, const torch::Tensor& xa, const torch::Tensor& mask, KVCache* kv_cache) {
  at::Tensor h;
  if (attention == AttentionKind::kPlain) {
    h = x + plain_attn->forward(attn_ln->forward(x), {}, mask, kv_cache);
    if (cross_attention) {
      h = h + plain_cross_attn->forward(cross_attn_ln->forward(h), xa, {}, kv_cache);
    }
  } else {
    h = x + std::get<0>(attn->forward(attn_ln->forward(x), {}, mask, kv_cache));
    if (cross_attention) {
      h = h + std::get<0>(cross_attn->forward(cross_attn_ln->forward(h), xa, {}, kv_cache));
    }
  }
  return h + feed_forward(h);
}

std::tuple<torch::Tensor, torch::Tensor> ResidualAttentionBlockImpl::forward_with_cross_weights(
    const torch::Tensor& x, const torch::Tensor& xa, const torch::Tensor& mask) {
  TORCH_CHECK(
      cross_attention, "forward_with_cross_weights: an encoder block has no cross-attention");
  at::Tensor h, qk;
  if (attention == AttentionKind::kPlain) {
    h = x + std::get<0>(plain_attn->forward_with_weights(attn_ln->forward(x), {}, mask));
    auto [attended, weights] =
        plain_cross_attn->forward_with_weights(cross_attn_ln->forward(h), xa);
    h = h + attended;
    qk = weights;
  } else {
    h = x + std::get<0>(attn->forward_with_weights(attn_ln->forward(x), {}, mask));
    auto [attended, weights] = cross_attn->forward_with_weights(cross_attn_ln->forward(h), xa);
    h = h + attended;
    qk = weights;
  }
  return {h + feed_forward(h), qk};
}

torch::Tensor ResidualAttentionBlockImpl::feed_forward(const torch::Tensor& h) {
  const auto hidden =
      at::gelu(linear_of_rows(mlp_ln->forward(h), *mlp->ptr<torch::nn::LinearImpl>(0)));
  return linear_of_rows(hidden, *mlp->ptr<torch::nn::LinearImpl>(2));
}

namespace {

// Whisper's `sinusoids(length, channels)`: sin then cos of position * 10000^(-i / (channels/2 -
// 1)).
at::Tensor sinusoids(int64_t length, int64_t channels) {
  TORCH_CHECK(channels % 2 == 0, "AudioEncoder: n_audio_state must be even, got ", channels);
  const double increment = std::log(10000.0) / static_cast<double>(channels / 2 - 1);
  const auto inv_timescales = at::exp(-increment * at::arange(channels / 2));
  const auto scaled = at::arange(length).unsqueeze(1) * inv_timescales.unsqueeze(0);
  return at::cat({at::sin(scaled), at::cos(scaled)}, 1);
}

torch::nn::ModuleList blocks_of(
    int64_t n, int64_t n_state, int64_t n_head, bool cross, AttentionKind attention) {
  torch::nn::ModuleList list;
  for (int64_t i = 0; i < n; ++i) {
    list->push_back(ResidualAttentionBlock(n_state, n_head, cross, attention));
  }
  return list;
}

torch::nn::LayerNorm layer_norm(int64_t n) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({n}));
}

} // namespace

AudioEncoderImpl::AudioEncoderImpl(const ModelDimensions& dims_, AttentionKind attention_)
    : dims(dims_), attention(attention_) {
  reset();
}

void AudioEncoderImpl::reset() {
  const int64_t n = dims.n_audio_state;
  conv1 = register_module(
      "conv1", torch::nn::Conv1d(torch::nn::Conv1dOptions(dims.n_mels, n, 3).padding(1)));
  conv2 = register_module(
      "conv2", torch::nn::Conv1d(torch::nn::Conv1dOptions(n, n, 3).stride(2).padding(1)));
  positional_embedding = register_buffer("positional_embedding", sinusoids(dims.n_audio_ctx, n));
  blocks = register_module(
      "blocks", blocks_of(dims.n_audio_layer, n, dims.n_audio_head, false, attention));
  ln_post = register_module("ln_post", layer_norm(n));
}

torch::Tensor AudioEncoderImpl::forward(const torch::Tensor& mel) {
  TORCH_CHECK(
      mel.dim() == 3 && mel.size(1) == dims.n_mels && mel.size(2) == 2 * dims.n_audio_ctx,
      "AudioEncoder: expected mel of shape (B, n_mels=",
      dims.n_mels,
      ", frames=",
      2 * dims.n_audio_ctx,
      "), got shape ",
      mel.sizes());
  auto x = at::gelu(conv1->forward(mel.to(conv1->weight.dtype())));
  x = at::gelu(conv2->forward(x)).permute({0, 2, 1});
  x = x + positional_embedding;
  for (const auto& block : *blocks) {
    x = block->as<ResidualAttentionBlock>()->forward(x);
  }
  return ln_post->forward(x);
}

TextDecoderImpl::TextDecoderImpl(const ModelDimensions& dims_, AttentionKind attention_)
    : dims(dims_), attention(attention_) {
  reset();
}

void TextDecoderImpl::reset() {
  const int64_t n = dims.n_text_state;
  token_embedding = register_module("token_embedding", torch::nn::Embedding(dims.n_vocab, n));
  positional_embedding =
      register_parameter("positional_embedding", at::empty({dims.n_text_ctx, n}).normal_(0, 0.01));
  blocks =
      register_module("blocks", blocks_of(dims.n_text_layer, n, dims.n_text_head, true, attention));
  ln = register_module("ln", layer_norm(n));
  mask = at::full({dims.n_text_ctx, dims.n_text_ctx}, -INFINITY).triu_(1);
}

void TextDecoderImpl::check_tokens(const torch::Tensor& tokens) {
  TORCH_CHECK(
      tokens.dim() == 2 && tokens.scalar_type() == at::kLong,
      "TextDecoder: expected int64 tokens of shape (B, T), got ",
      tokens.scalar_type(),
      " of shape ",
      tokens.sizes());
}

torch::Tensor TextDecoderImpl::forward(
    const torch::Tensor& tokens, const torch::Tensor& audio_features, KVCache* kv_cache) {
  const auto* first =
      blocks->size() ? blocks[0]->as<ResidualAttentionBlock>()->self_attention() : nullptr;
  const int64_t offset = kv_cache != nullptr && first != nullptr ? kv_cache->length(first) : 0;
  auto x = embed(tokens, audio_features, offset);
  for (const auto& block : *blocks) {
    x = block->as<ResidualAttentionBlock>()->forward(x, audio_features, mask, kv_cache);
  }
  return project_to_vocabulary(x);
}

std::tuple<torch::Tensor, std::vector<torch::Tensor>> TextDecoderImpl::forward_with_cross_weights(
    const torch::Tensor& tokens, const torch::Tensor& audio_features) {
  auto x = embed(tokens, audio_features, 0);
  std::vector<torch::Tensor> weights;
  for (const auto& block : *blocks) {
    auto [out, qk] =
        block->as<ResidualAttentionBlock>()->forward_with_cross_weights(x, audio_features, mask);
    x = out;
    weights.push_back(qk);
  }
  return {project_to_vocabulary(x), weights};
}

torch::Tensor TextDecoderImpl::embed(
    const torch::Tensor& tokens, const torch::Tensor& audio_features, int64_t offset) {
  check_tokens(tokens);
  TORCH_CHECK(
      audio_features.dim() == 3 && audio_features.size(2) == dims.n_text_state,
      "TextDecoder: expected audio_features of shape (B, S, n_text_state=",
      dims.n_text_state,
      "), got shape ",
      audio_features.sizes());
  const int64_t n = tokens.size(1);
  TORCH_CHECK(
      offset + n <= dims.n_text_ctx,
      "TextDecoder: ",
      offset,
      " cached and ",
      n,
      " new tokens exceed n_text_ctx=",
      dims.n_text_ctx);
  auto x = token_embedding->forward(tokens) + positional_embedding.narrow(0, offset, n);
  x = x.to(audio_features.scalar_type());
  if (mask.device() != x.device() || mask.scalar_type() != x.scalar_type()) {
    mask = mask.to(x.device(), x.scalar_type());
  }
  return x;
}

torch::Tensor TextDecoderImpl::project_to_vocabulary(const torch::Tensor& hidden) {
  const auto x = ln->forward(hidden);
  // Whisper's x @ token_embedding^T. A decode step's few rows read the
  // embedding (the step's largest read) once at memory speed, in fp32.
  const auto& embedding = token_embedding->weight;
  if (detail::few_rows_apply(x, embedding)) {
    return detail::few_rows_linear(x, embedding, {});
  }
  // Many rows (a prompt, an alignment pass over a window's text): a GEMM.
  return detail::dense_linear(x, embedding.to(x.scalar_type()), {}).to(at::kFloat);
}

WhisperImpl::WhisperImpl(const ModelDimensions& dims_, AttentionKind attention_)
    : dims(dims_), attention(attention_) {
  reset();
}

void WhisperImpl::reset() {
  encoder = register_module("encoder", AudioEncoder(dims, attention));
  decoder = register_module("decoder", TextDecoder(dims, attention));
  alignment_heads_ = default_alignment_heads(dims);
}

AttentionKind WhisperImpl::attention_in(
    const std::unordered_map<std::string, torch::Tensor>& state) {
  for (const auto& [name, tensor] : state) {
    for (const char* fork_only :
         {".rotary_emb.", ".rotation_layer.", "attn.attn_ln.", "attn.temperature"}) {
      if (name.find(fork_only) != std::string::npos) {
        return AttentionKind::kRotary;
      }
    }
  }
  return AttentionKind::kPlain;
}

std::shared_ptr<WhisperImpl> WhisperImpl::load(const std::string& path) {
  const auto contents = rotary_attention::detail::read_torch_save(path, "model_state_dict.");
  std::map<std::string, int64_t> numbers(contents.integers.begin(), contents.integers.end());
  ModelDimensions dims;
  for (const auto& [name, field] : ModelDimensions::fields()) {
    const auto it = numbers.find(std::string("dims.") + name);
    TORCH_CHECK(
        it != numbers.end(),
        "Whisper::load: '",
        path,
        "' is not an openai-whisper checkpoint: it has no integer dims.",
        name,
        " (expected {\"dims\": {...}, \"model_state_dict\": {...}})");
    TORCH_CHECK(it->second > 0, "Whisper::load: '", path, "' has dims.", name, " = ", it->second);
    dims.*field = it->second;
  }
  TORCH_CHECK(
      !contents.tensors.empty(),
      "Whisper::load: '",
      path,
      "' has no tensors under model_state_dict");
  std::unordered_map<std::string, torch::Tensor> state(
      contents.tensors.begin(), contents.tensors.end());
  return from_state_dict(dims, state, "'" + path + "'");
}

namespace {

// A line listing keys ('missing keys ["a", "b", ...]') keeps its first three
// and their count: a checkpoint of the other attention misses hundreds.
std::string first_keys_only(std::string line) {
  for (const char* list : {"missing keys [", "unexpected keys ["}) {
    const size_t open = line.find(list);
    if (open == std::string::npos) {
      continue;
    }
    const size_t begin = open + std::strlen(list);
    const size_t close = line.find(']', begin);
    if (close == std::string::npos) {
      continue;
    }
    size_t count = 1, cut = std::string::npos;
    for (size_t at = line.find(", ", begin); at != std::string::npos && at < close;
         at = line.find(", ", at + 2)) {
      if (++count == 4) {
        cut = at;
      }
    }
    if (cut != std::string::npos) {
      line.replace(cut, close - cut, ", ... (" + std::to_string(count) + " in all)");
    }
  }
  return line;
}

} // namespace

std::shared_ptr<WhisperImpl> WhisperImpl::from_state_dict(
    const ModelDimensions& dims,
    const std::unordered_map<std::string, torch::Tensor>& state,
    const std::string& source) {
  TORCH_CHECK(
      dims.n_audio_state == dims.n_text_state,
      "Whisper::load: ",
      source,
      ": n_audio_state (",
      dims.n_audio_state,
      ") differs from n_text_state (",
      dims.n_text_state,
      "); the decoder attends over the encoder's features");
  auto model = std::make_shared<WhisperImpl>(dims, attention_in(state));
  try {
    at::NoGradGuard no_grad;
    load_state_dict(*model, state, /*strict=*/true);
  } catch (const c10::Error& e) {
    // The first few tensors that disagree name the problem; hundreds would bury it.
    std::string reason;
    std::istringstream lines(e.what_without_backtrace());
    std::string line;
    size_t n = 0;
    while (std::getline(lines, line)) {
      if (++n <= 4) {
        reason += (n > 1 ? "\n" : "") + first_keys_only(line);
      }
    }
    if (n > 4) {
      reason += "\n  ... and " + std::to_string(n - 4) + " more";
    }
    TORCH_CHECK(
        false,
        "Whisper::load: ",
        source,
        " does not fit its dims (",
        "n_mels=",
        dims.n_mels,
        ", n_audio_ctx=",
        dims.n_audio_ctx,
        ", n_audio_state=",
        dims.n_audio_state,
        ", n_audio_layer=",
        dims.n_audio_layer,
        ", n_vocab=",
        dims.n_vocab,
        ", n_text_ctx=",
        dims.n_text_ctx,
        ", n_text_layer=",
        dims.n_text_layer,
        "): ",
        reason);
  }
  model->eval();
  if (model->attention == AttentionKind::kPlain) {
    if (const auto release = openai_model_with_dims(dims)) {
      model->alignment_heads_ = openai_alignment_heads(*release);
    }
  }
  return model;
}

} // namespace rotary_attention::whisper
