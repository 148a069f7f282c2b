// The layer math of MultiHeadAttention as one dispatcher operator,
// rotary_attention::multi_head_attention, registered CompositeImplicitAutograd:
// it is built from ATen ops and rotary, so autograd, fake tensors,
// torch.compile and torch.export go through it with no Python registration
// (PyTorch's own precedent: aten::_native_multi_head_attention). Sizes are
// read as SymInts so it traces under dynamic shapes. The C++ module calls it;
// so can anything that holds the weights.
//
// Keys and values to attend to come from the inputs and, when given, from a
// cache; the keys and values to cache next are returned (see the schema's
// comment in schema.cpp). The ATen calls and their order are the original's,
// which keeps the port bitwise equal to it.

#include <ATen/ATen.h>
#include <torch/library.h>

#include "rotary_attention/ops/decode_attention.h"
#include "rotary_attention/ops/multi_head_attention.h"
#include "rotary_attention/ops/rotary.h"
#include "typed_op.h"

#include <limits>

namespace rotary_attention {
namespace {

// Whisper's Linear: weight and bias are cast to the input's dtype. at::linear
// is what Python's F.linear calls.
at::Tensor whisper_linear(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias) {
  // (No cast, and no dispatch for one, when the dtypes already agree: this
  // runs four times per decode step.)
  const auto in_dtype = [&](const at::Tensor& t) {
    return t.scalar_type() == x.scalar_type() ? t : t.to(x.scalar_type());
  };
  return at::linear(
      x,
      in_dtype(weight),
      bias.has_value() && bias->defined() ? std::optional<at::Tensor>(in_dtype(*bias))
                                          : std::nullopt);
}

void check_input(const char* name, const at::Tensor& t, const c10::SymInt& n_state) {
  TORCH_CHECK(
      t.dim() == 3 && t.sym_size(2) == n_state,
      "MultiHeadAttention: expected ",
      name,
      " of shape (B, T, n_state=",
      n_state,
      "), got shape ",
      t.sym_sizes());
  TORCH_CHECK(
      t.is_floating_point(),
      "MultiHeadAttention: ",
      name,
      " must be a floating tensor, got ",
      t.scalar_type());
}

// The most queries a call decodes with decode_attention (decoding, or a few
// speculative tokens); longer blocks are SDPA's strength.
constexpr int64_t kMaxDecodeQueries = 16;

struct Layer {
  const at::Tensor& inv_freq;
  const at::Tensor& rotation_matrix;
  const at::Tensor& temperature;
  int64_t n_head;
  c10::SymInt head_dim;
  bool sdpa;
  double dropout_p; // 0 outside training

  // (B, T, n_state) -> rotary at positions offset.. (or at `positions`, a
  // static cache's tensor of positions), then the rotation layer.
  at::Tensor rotate(
      const at::Tensor& t,
      const c10::SymInt& offset,
      const std::optional<at::Tensor>& positions = std::nullopt) const {
    // Explicit sizes (not -1) so that empty batches and sequences reshape too.
    auto heads = t.view_symint({t.sym_size(0), t.sym_size(1), n_head, head_dim});
    heads = positions.has_value()
                ? rotary(heads, inv_freq, positions, 0)
                : rotary(heads, inv_freq, std::nullopt, offset.guard_int(__FILE__, __LINE__));
    if (heads.scalar_type() != rotation_matrix.scalar_type()) {
      // 16-bit input in an fp32 module: the rotation runs in fp32, as the
      // original's would (its rotary result is fp32), and the result returns
      // to the input dtype so attention runs in it (the original fails there).
      heads =
          at::matmul(heads.to(rotation_matrix.scalar_type()), rotation_matrix).to(t.scalar_type());
    } else {
      heads = at::matmul(heads, rotation_matrix);
    }
    return heads.view_symint(t.sym_sizes());
  }

  // rotate(keys, offset) written into `slot`, a contiguous (B, T, n_state)
  // view of a cache buffer; the keys are rotated in place on the way: no
  // temporary. The same mm as rotate's matmul (which folds B, T and the heads
  // into its rows), so the same bits. Inference only (rotary_ refuses tensors
  // that require grad).
  at::Tensor rotate_into(
      const at::Tensor& slot, const at::Tensor& keys, const c10::SymInt& offset) const {
    at::Tensor heads =
        keys.view_symint({keys.sym_size(0), keys.sym_size(1), c10::SymInt(n_head), head_dim});
    rotary_(heads, inv_freq, std::nullopt, offset.guard_int(__FILE__, __LINE__));
    const c10::SymInt rows = keys.sym_numel() / head_dim;
    at::Tensor out = slot.view_symint({rows, head_dim});
    at::mm_out(out, heads.view_symint({rows, head_dim}), rotation_matrix);
    return slot;
  }

  // causal_offset: absolute position of the first query in a self-attention
  // over cached keys (absolute_positions), else 0 (the original's alignment).
  // positions: (B, T), each row's query positions when the keys are a cache's
  // whole buffers (a static cache, or rows of different lengths): the keys
  // past a row's last query are not its own yet and are masked out (and, when
  // causal, those past each query's).
  std::tuple<at::Tensor, at::Tensor> attend(
      const at::Tensor& q_in,
      const at::Tensor& k_in,
      const at::Tensor& v_in,
      const std::optional<at::Tensor>& mask_opt,
      const c10::SymInt& causal_offset,
      const std::optional<at::Tensor>& positions = std::nullopt) const {
    const c10::SymInt n_batch = q_in.sym_size(0), n_ctx = q_in.sym_size(1);
    const c10::SymInt n_state = q_in.sym_size(2), n_keys = k_in.sym_size(1);
    const bool has_mask = mask_opt.has_value() && mask_opt->defined();
    if (has_mask) {
      TORCH_CHECK(
          mask_opt->dim() == 2,
          "MultiHeadAttention: mask must be a 2-D additive mask of at least (T, T) = (",
          n_ctx,
          ", ",
          n_ctx,
          "), got shape ",
          mask_opt->sym_sizes());
    }
    // Cross-attention keys of one row of xa serve every row of x (a beam):
    // broadcast along the batch, without a copy.
    const auto rows = [&](const at::Tensor& t) {
      return t.sym_size(0) == n_batch ? t : t.expand_symint({n_batch, t.sym_size(1), n_state});
    };
    const auto q = q_in.view_symint({n_batch, n_ctx, n_head, head_dim}).permute({0, 2, 1, 3});
    const auto k =
        rows(k_in).view_symint({n_batch, n_keys, n_head, head_dim}).permute({0, 2, 1, 3});
    const auto v =
        rows(v_in).view_symint({n_batch, v_in.sym_size(1), n_head, head_dim}).permute({0, 2, 1, 3});

    at::Tensor written; // (B, 1, T, capacity): the keys each query may see
    if (positions.has_value()) {
      const auto key_index =
          at::arange(c10::Scalar(n_keys), positions->options()).view_symint({1, 1, n_keys});
      // Causal on the SDPA path as below; the explicit path takes its causality
      // from the mask's values.
      const bool causal = sdpa && has_mask && n_ctx > 1;
      written = (causal ? key_index <= positions->unsqueeze(2)
                        : key_index <= positions->narrow(1, -1, 1).unsqueeze(2))
                    .unsqueeze(1);
    }

    if (sdpa) {
      // As the original: the mask's values are ignored; its presence makes the
      // attention causal when there is more than one query: top-left aligned,
      // or bottom-right (query i at causal_offset + i) for absolute positions.
      const bool causal = has_mask && n_ctx > 1;
      at::Tensor a;
      if (written.defined()) {
        a = at::scaled_dot_product_attention(q, k, v, written, 0.0, false);
      } else if (causal && causal_offset > 0) {
        const auto allowed = at::ones_symint({n_ctx, n_keys}, q.options().dtype(at::kBool))
                                 .tril(causal_offset.guard_int(__FILE__, __LINE__));
        a = at::scaled_dot_product_attention(q, k, v, allowed, 0.0, false);
      } else {
        a = at::scaled_dot_product_attention(q, k, v, {}, 0.0, causal);
      }
      return {
          a.permute({0, 2, 1, 3}).reshape_symint({n_batch, n_ctx, n_state}),
          at::empty({0}, q.options().dtype(at::kFloat))};
    }

    const at::Tensor& scale = temperature;
    at::Tensor qk = at::matmul(q * scale, k.transpose(-2, -1) * scale);
    if (written.defined()) {
      if (has_mask) {
        // The rows of the queries' positions, as mask[offset:offset+T, :S] below.
        TORCH_CHECK(
            mask_opt->sym_size(1) >= n_keys,
            "MultiHeadAttention: with a static KVCache the explicit path adds the mask's rows at "
            "the queries' positions over all ",
            n_keys,
            " cached steps; pass a mask of at least (capacity, capacity), got shape ",
            mask_opt->sym_sizes());
        qk += mask_opt->index_select(0, positions->flatten())
                  .slice_symint(1, 0, n_keys)
                  .view_symint({n_batch, 1, n_ctx, n_keys});
      }
      qk.masked_fill_(written.logical_not(), -std::numeric_limits<double>::infinity());
    } else if (has_mask) {
      const at::Tensor& mask = *mask_opt;
      // The original adds mask[:T, :T]; with absolute positions the rows are
      // the queries' positions and the columns the keys': mask[offset:offset+T, :S].
      TORCH_CHECK(
          causal_offset == 0 ||
              (mask.sym_size(0) >= causal_offset + n_ctx && mask.sym_size(1) >= n_keys),
          "MultiHeadAttention: with absolute_positions the explicit path adds mask[",
          causal_offset,
          ":",
          causal_offset + n_ctx,
          ", :",
          n_keys,
          "], but the mask has shape ",
          mask.sym_sizes(),
          "; pass a mask covering the whole sequence (e.g. (n_ctx, n_ctx))");
      const auto m = causal_offset == 0 ? mask.slice_symint(0, 0, n_ctx).slice_symint(1, 0, n_ctx)
                                        : mask.slice_symint(0, causal_offset, causal_offset + n_ctx)
                                              .slice_symint(1, 0, n_keys);
      TORCH_CHECK(
          (m.sym_size(0) == 1 || m.sym_size(0) == n_ctx) &&
              (m.sym_size(1) == 1 || m.sym_size(1) == n_keys),
          "MultiHeadAttention: the explicit path (sdpa=false) adds mask[:T, :T] (shape ",
          m.sym_sizes(),
          ") to logits of shape (B, H, T=",
          n_ctx,
          ", S=",
          n_keys,
          "); with S != T and T > 1 the original cannot run this either; use sdpa=true, or "
          "pass a mask of at least (T, T) with S == T");
      qk += m;
    }
    qk = qk.to(at::kFloat);
    auto w = at::softmax(qk, -1).to(q.scalar_type());
    w = at::dropout(w, dropout_p, /*train=*/dropout_p > 0.0);
    auto out = at::matmul(w, v).permute({0, 2, 1, 3}).reshape_symint({n_batch, n_ctx, n_state});
    return {out, qk.detach()};
  }
};

// Which cache the call uses, its arguments checked: none, cross-attention
// keys (cached_key/cached_value), or self-attention buffers (key_buffer/
// value_buffer at cache_length, or at each row's `lengths`).
struct CacheUse {
  bool cached;   // cached_key/cached_value given
  bool buffered; // key_buffer/value_buffer given
  bool fixed;    // the cross-attention queries' positions given (a static cache's)
  bool per_row;  // self-attention lengths per row given (a static cache, or rows that differ)
};

// The cache arguments both operators take, as their schemas name them.
struct CacheArguments {
  const std::optional<at::Tensor>& cached_key;
  const std::optional<at::Tensor>& cached_value;
  const c10::SymInt& query_position;
  const std::optional<at::Tensor>& key_buffer;
  const std::optional<at::Tensor>& value_buffer;
  const c10::SymInt& cache_length;
  const std::optional<at::Tensor>& positions;
  const std::optional<at::Tensor>& lengths;
};

void check_heads(const char* op, const c10::SymInt& n_state, int64_t n_head) {
  TORCH_CHECK(
      n_head > 0 && n_state % n_head == 0,
      op,
      ": n_state (",
      n_state,
      ") must be divisible by n_head (",
      n_head,
      ")");
}

CacheUse check_cache_arguments(
    const at::Tensor& x,
    bool cross,
    const c10::SymInt& n_state,
    bool absolute_positions,
    const CacheArguments& cache) {
  const auto& [cached_key, cached_value, query_position, key_buffer, value_buffer, cache_length, positions, lengths] =
      cache;
  const bool cached = cached_key.has_value() && cached_key->defined();
  TORCH_CHECK(
      cached == (cached_value.has_value() && cached_value->defined()),
      "multi_head_attention: pass both cached_key and cached_value, or neither");
  if (cached) {
    TORCH_CHECK(
        cached_key->dim() == 3 &&
            (cached_key->sym_size(0) == x.sym_size(0) || (cross && cached_key->sym_size(0) == 1)) &&
            cached_key->sym_size(2) == n_state &&
            cached_value->sym_sizes() == cached_key->sym_sizes(),
        "KVCache: cannot use cached keys of shape ",
        cached_key->sym_sizes(),
        " and values of shape ",
        cached_value->sym_sizes(),
        " with x of shape ",
        x.sym_sizes(),
        " (batch and feature sizes must match; call clear() between sequences)");
  }
  const bool buffered = key_buffer.has_value() && key_buffer->defined();
  TORCH_CHECK(
      buffered == (value_buffer.has_value() && value_buffer->defined()),
      "multi_head_attention: pass both key_buffer and value_buffer, or neither");
  const bool fixed = positions.has_value() && positions->defined();
  const bool per_row = lengths.has_value() && lengths->defined();
  if (per_row) {
    TORCH_CHECK(
        buffered && absolute_positions,
        "KVCache(static=True) needs absolute_positions=True (the operator: a query_position), as "
        "rows of different lengths do (the original's semantics rotate the whole cache again at "
        "every step); lengths go with self-attention's key_buffer/value_buffer");
    TORCH_CHECK(
        lengths->dim() == 1 && lengths->sym_size(0) == x.sym_size(0) &&
            lengths->scalar_type() == at::kLong && lengths->device() == x.device(),
        "multi_head_attention: lengths must be an int64 tensor of shape (B,) = (",
        x.sym_size(0),
        ",) on x's device, got ",
        lengths->scalar_type(),
        " of shape ",
        lengths->sym_sizes());
  }
  if (buffered) {
    TORCH_CHECK(
        !cross && !cached,
        "multi_head_attention: key_buffer/value_buffer hold self-attention keys; cross-attention "
        "keys are passed as cached_key/cached_value");
    TORCH_CHECK(
        key_buffer->dim() == 3 && key_buffer->sym_size(0) == x.sym_size(0) &&
            key_buffer->sym_size(2) == n_state &&
            value_buffer->sym_sizes() == key_buffer->sym_sizes() &&
            key_buffer->scalar_type() == x.scalar_type() &&
            value_buffer->scalar_type() == x.scalar_type() && key_buffer->device() == x.device(),
        "KVCache: buffers of shape ",
        key_buffer->sym_sizes(),
        " (",
        key_buffer->scalar_type(),
        ", ",
        key_buffer->device(),
        ") cannot hold the keys of x of shape ",
        x.sym_sizes(),
        " (",
        x.scalar_type(),
        ", ",
        x.device(),
        "): was the cache filled by a layer of another size or dtype? call clear() between "
        "sequences");
    TORCH_CHECK(
        per_row || cache_length + x.sym_size(1) <= key_buffer->sym_size(1),
        "multi_head_attention: ",
        x.sym_size(1),
        " new steps after ",
        cache_length,
        " do not fit buffers of capacity ",
        key_buffer->sym_size(1));
  }
  if (fixed) {
    TORCH_CHECK(
        absolute_positions && cross,
        "multi_head_attention: positions (the queries' positions of a static cache's "
        "cross-attention) need xa and absolute_positions=True (a query_position); self-attention "
        "takes lengths");
    TORCH_CHECK(
        positions->scalar_type() == at::kLong && x.sym_size(1) > 0 &&
            ((positions->dim() == 1 && positions->sym_size(0) == x.sym_size(1)) ||
             (positions->dim() == 2 && positions->sym_size(0) == x.sym_size(0) &&
              positions->sym_size(1) == x.sym_size(1))),
        "multi_head_attention: positions must be an int64 tensor of shape (T,) = (",
        x.sym_size(1),
        ",) or (B, T), got ",
        positions->scalar_type(),
        " of shape ",
        positions->sym_sizes());
  }
  if (per_row) {
    // The lengths are data, so this check runs with the step (also in a
    // compiled or exported graph) rather than while tracing it.
    at::_assert_async(
        (*lengths + x.sym_size(1) <= key_buffer->sym_size(1)).all(),
        c10::str(
            "KVCache: the cache's capacity of ",
            key_buffer->sym_size(1),
            " steps is full (",
            x.sym_size(1),
            " new steps do not fit a row); create it with a larger capacity"));
  }
  return {cached, buffered, fixed, per_row};
}

// Decoding over a cache's buffers goes to decode_attention when it computes
// what SDPA would: the SDPA path, few queries (a static count: a dynamic one
// keeps an exported graph general), inference.
bool decodes_over_buffers(const Layer& layer, const at::Tensor& q) {
  const auto steps = q.sym_size(1).maybe_as_int();
  const auto type = q.scalar_type();
  return layer.sdpa && steps.has_value() && *steps <= kMaxDecodeQueries && !q.requires_grad() &&
         (type == at::kFloat || type == at::kBFloat16 || type == at::kHalf);
}

// Everything between the projections and the output projection: rotary and
// the rotation layer, the KV cache, attention. The layer operator calls it
// after its own projections; attention_core after the caller's (the
// nn.Module's faithful road, which calls its children as modules). Returns
// (attention output before `out`, qk, key to cache, value to cache).
// k, v are not read for cross-attention with cached keys (may be undefined).
// keys_writable: k is the caller's own temporary, which may be rotated in place.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attend_projected(
    at::Tensor q,
    at::Tensor k,
    at::Tensor v,
    bool cross,
    const std::optional<at::Tensor>& mask,
    const Layer& layer,
    bool absolute_positions,
    bool rotate,
    bool keys_writable,
    const CacheUse& use,
    const CacheArguments& cache) {
  const auto [cached, buffered, fixed, per_row] = use;
  const auto& [cached_key, cached_value, query_position, key_buffer, value_buffer, cache_length, positions, lengths] =
      cache;
  const at::Tensor& rotation_matrix = layer.rotation_matrix;
  const bool has_mask = mask.has_value() && mask->defined();
  const c10::SymInt n_ctx = q.sym_size(1);
  if (per_row) {
    // Each row's new steps at its own positions lengths[b].. (absolute_positions):
    // rotated there, written there, and attention reads each row's own steps.
    const at::Tensor rows = *lengths;
    const at::Tensor at_rows = rows.unsqueeze(1) + at::arange(c10::Scalar(n_ctx), rows.options());
    k = layer.rotate(k, 0, at_rows);
    q = layer.rotate(q, 0, at_rows);
    // index_put_, which compiled graphs keep in place (a functionalized scatter_
    // would copy the whole buffers at every step).
    const c10::List<std::optional<at::Tensor>> slots{
        at::arange(c10::Scalar(rows.sym_size(0)), rows.options()).unsqueeze(1), at_rows};
    key_buffer->index_put_(slots, k.detach());
    value_buffer->index_put_(slots, v.detach());
    at::Tensor wv, qk;
    if (decodes_over_buffers(layer, q)) {
      wv = decode_attention(
          q, *key_buffer, *value_buffer, rows + n_ctx, layer.n_head, has_mask && n_ctx > 1);
      qk = at::empty({0}, q.options().dtype(at::kFloat));
    } else {
      std::tie(wv, qk) = layer.attend(q, *key_buffer, *value_buffer, mask, 0, at_rows);
    }
    return {wv, qk, k, v};
  }
  // Absolute position of x's first token: after the buffered steps, or as given.
  const c10::SymInt first_query = buffered ? cache_length : query_position;
  // k, v: what to cache (keys rotated only with absolute_positions);
  // k_attended: the keys attention reads (always rotated).
  if (cross) {
    if (cached) {
      // Keys and values of xa are computed once per sequence.
      k = *cached_key;
      v = *cached_value;
    } else if (absolute_positions) {
      k = layer.rotate(k, 0);
    }
  } else {
    if (absolute_positions && buffered && keys_writable && !at::GradMode::is_enabled() &&
        k.scalar_type() == rotation_matrix.scalar_type() && q.sym_size(0) == 1) {
      // Decoding at absolute positions (inference, batch 1, whose slot is
      // contiguous): the new keys are rotated in place and the rotation layer
      // writes them straight into their slot of the cache.
      k = layer.rotate_into(
          key_buffer->slice_symint(1, cache_length, cache_length + n_ctx), k, first_query);
    } else if (absolute_positions) {
      k = layer.rotate(k, first_query);
    }
  }
  // Keys and values attention reads (k_all, v_all), and those returned to be
  // cached (k, v: the new ones when buffers hold the cache).
  at::Tensor k_all = k, v_all = v;
  const c10::SymInt end = cache_length + n_ctx;
  if (buffered) {
    // Written in place; attention reads the buffers (detached, as Whisper's
    // hook stores them), except on a sequence's first call, which reads the
    // fresh keys as the original's first call does.
    if (!k.is_alias_of(*key_buffer)) { // (rotate_into wrote them there)
      key_buffer->slice_symint(1, cache_length, end).copy_(k.detach());
    }
    value_buffer->slice_symint(1, cache_length, end).copy_(v.detach());
    if (cache_length != 0) {
      k_all = key_buffer->slice_symint(1, 0, end);
      v_all = value_buffer->slice_symint(1, 0, end);
    }
  } else if (cached && !cross) {
    // Whisper's hook: the detached concatenation, which attention then reads.
    k_all = at::cat({*cached_key, k}, 1).detach();
    v_all = at::cat({*cached_value, v}, 1).detach();
    k = k_all;
    v = v_all;
  }
  if (rotate) {
    const c10::SymInt q_position = absolute_positions ? first_query : c10::SymInt(0);
    q = fixed ? layer.rotate(q, 0, positions) : layer.rotate(q, q_position);
  }
  if (buffered && absolute_positions && decodes_over_buffers(layer, q)) {
    // The cache's own kernel reads the first `end` steps of every row once.
    const at::Tensor rows =
        at::full_symint({q.sym_size(0)}, c10::Scalar(end), q.options().dtype(at::kLong));
    const at::Tensor wv =
        decode_attention(q, *key_buffer, *value_buffer, rows, layer.n_head, has_mask && n_ctx > 1);
    return {wv, at::empty({0}, q.options().dtype(at::kFloat)), k, v};
  }
  const at::Tensor k_attended = absolute_positions || !rotate ? k_all : layer.rotate(k_all, 0);
  const c10::SymInt causal_offset = absolute_positions && !cross ? first_query : c10::SymInt(0);

  auto [wv, qk] = layer.attend(q, k_attended, v_all, mask, causal_offset);
  return {wv, qk, k, v};
}

// Cross-attention reads keys and values of one row of xa for every row of x
// (a beam), or of xa's own rows.
void check_cross_batch(const char* name, const at::Tensor& t, const at::Tensor& x) {
  TORCH_CHECK(
      t.sym_size(0) == x.sym_size(0) || t.sym_size(0) == 1,
      "MultiHeadAttention: ",
      name,
      " must have x's batch size ",
      x.sym_size(0),
      " or 1 (shared by every row of x), got shape ",
      t.sym_sizes());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> multi_head_attention_composite(
    const at::Tensor& x,
    const std::optional<at::Tensor>& xa_opt,
    const std::optional<at::Tensor>& mask,
    const std::optional<at::Tensor>& norm_weight,
    const std::optional<at::Tensor>& norm_bias,
    bool group_norm,
    const at::Tensor& query_weight,
    const std::optional<at::Tensor>& query_bias,
    const at::Tensor& key_weight,
    const at::Tensor& value_weight,
    const std::optional<at::Tensor>& value_bias,
    const at::Tensor& out_weight,
    const std::optional<at::Tensor>& out_bias,
    const at::Tensor& inv_freq,
    const at::Tensor& rotation_matrix,
    const at::Tensor& temperature,
    int64_t n_head,
    bool sdpa,
    double dropout_p,
    const std::optional<at::Tensor>& cached_key,
    const std::optional<at::Tensor>& cached_value,
    std::optional<c10::SymInt> query_position_opt,
    const std::optional<at::Tensor>& key_buffer,
    const std::optional<at::Tensor>& value_buffer,
    c10::SymInt cache_length,
    const std::optional<at::Tensor>& positions,
    const std::optional<at::Tensor>& lengths) {
  // A query position given: absolute positions (the library's option); none:
  // the original's relative ones (queries at 0..T-1, keys at 0..S-1).
  const bool absolute_positions = query_position_opt.has_value();
  const c10::SymInt query_position = query_position_opt.value_or(c10::SymInt(0));
  const c10::SymInt n_state = query_weight.sym_size(0);
  check_heads("multi_head_attention", n_state, n_head);
  check_input("x", x, n_state);
  const bool cross = xa_opt.has_value() && xa_opt->defined();
  if (cross) {
    check_input("xa", *xa_opt, n_state);
    check_cross_batch("xa", *xa_opt, x);
  }
  const CacheArguments cache{
      cached_key,
      cached_value,
      query_position,
      key_buffer,
      value_buffer,
      cache_length,
      positions,
      lengths};
  const CacheUse use = check_cache_arguments(x, cross, n_state, absolute_positions, cache);

  at::Tensor x_norm;
  if (group_norm) {
    TORCH_CHECK(
        x.sym_size(1) == n_state,
        "MultiHeadAttention: group_norm=true applies GroupNorm(1, n_state) to x of shape "
        "(B, T, n_state), which treats dim 1 (T) as the channels; the original can only "
        "run it when T == n_state (",
        n_state,
        "), got T=",
        x.sym_size(1));
    x_norm = at::group_norm(x, 1, norm_weight, norm_bias, 1e-5);
  } else {
    x_norm = at::layer_norm_symint(x, {n_state}, norm_weight, norm_bias, 1e-5);
  }

  const Layer layer{
      inv_freq, rotation_matrix, temperature, n_head, n_state / n_head, sdpa, dropout_p};
  const at::Tensor q = whisper_linear(x_norm, query_weight, query_bias);
  at::Tensor k, v;
  if (!(cross && use.cached)) {
    const at::Tensor& source = cross ? *xa_opt : x_norm;
    k = whisper_linear(source, key_weight, std::nullopt);
    v = whisper_linear(source, value_weight, value_bias);
  }
  auto [wv, qk, key, value] = attend_projected(
      q,
      k,
      v,
      cross,
      mask,
      layer,
      absolute_positions,
      /*rotate=*/true,
      /*keys_writable=*/true,
      use,
      cache);
  return {whisper_linear(wv, out_weight, out_bias) + x, qk, key, value};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_core_composite(
    const at::Tensor& q,
    const at::Tensor& k,
    const at::Tensor& v,
    bool cross,
    const std::optional<at::Tensor>& mask,
    const at::Tensor& inv_freq,
    const at::Tensor& rotation_matrix,
    const at::Tensor& temperature,
    int64_t n_head,
    bool sdpa,
    double dropout_p,
    bool rotate,
    const std::optional<at::Tensor>& cached_key,
    const std::optional<at::Tensor>& cached_value,
    std::optional<c10::SymInt> query_position_opt,
    const std::optional<at::Tensor>& key_buffer,
    const std::optional<at::Tensor>& value_buffer,
    c10::SymInt cache_length,
    const std::optional<at::Tensor>& positions,
    const std::optional<at::Tensor>& lengths) {
  const bool absolute_positions = query_position_opt.has_value(); // (as multi_head_attention)
  const c10::SymInt query_position = query_position_opt.value_or(c10::SymInt(0));
  TORCH_CHECK(
      q.dim() == 3,
      "attention_core: expected q of shape (B, T, n_state), got shape ",
      q.sym_sizes());
  const c10::SymInt n_state = q.sym_size(2);
  check_heads("attention_core", n_state, n_head);
  check_input("q", q, n_state);
  const CacheArguments cache{
      cached_key,
      cached_value,
      query_position,
      key_buffer,
      value_buffer,
      cache_length,
      positions,
      lengths};
  const CacheUse use = check_cache_arguments(q, cross, n_state, absolute_positions, cache);
  if (!(cross && use.cached)) {
    check_input("k", k, n_state);
    check_input("v", v, n_state);
    TORCH_CHECK(
        k.sym_sizes() == v.sym_sizes() && k.scalar_type() == q.scalar_type() &&
            v.scalar_type() == q.scalar_type(),
        "attention_core: k and v must have the same shape and q's dtype ",
        q.scalar_type(),
        ", got k ",
        k.scalar_type(),
        " of shape ",
        k.sym_sizes(),
        " and v ",
        v.scalar_type(),
        " of shape ",
        v.sym_sizes());
    if (cross) {
      check_cross_batch("k", k, q);
    } else {
      // (Longer than q when a dict cache's hooks concatenated the cached steps.)
      TORCH_CHECK(
          k.sym_size(0) == q.sym_size(0) && (!use.buffered || k.sym_size(1) == q.sym_size(1)),
          "attention_core: self-attention k and v must have q's batch size ",
          q.sym_size(0),
          use.buffered ? " and length (the steps to cache)" : "",
          ", got shape ",
          k.sym_sizes());
    }
  }
  TORCH_CHECK(
      rotate || (!absolute_positions && !use.cached && !use.buffered && !use.fixed),
      "attention_core: rotate=False (q and k rotated by the caller) takes no cache and no "
      "query_position (absolute positions): the cache's keys are rotated by the operator");
  const Layer layer{
      inv_freq, rotation_matrix, temperature, n_head, n_state / n_head, sdpa, dropout_p};
  return attend_projected(
      q,
      k,
      v,
      cross,
      mask,
      layer,
      absolute_positions,
      rotate,
      /*keys_writable=*/false,
      use,
      cache);
}

} // namespace

TORCH_LIBRARY_IMPL(rotary_attention, CompositeImplicitAutograd, m) {
  m.impl("multi_head_attention", &multi_head_attention_composite);
  m.impl("attention_core", &attention_core_composite);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> multi_head_attention(
    const at::Tensor& x,
    const std::optional<at::Tensor>& xa,
    const std::optional<at::Tensor>& mask,
    const std::optional<at::Tensor>& norm_weight,
    const std::optional<at::Tensor>& norm_bias,
    bool group_norm,
    const at::Tensor& query_weight,
    const std::optional<at::Tensor>& query_bias,
    const at::Tensor& key_weight,
    const at::Tensor& value_weight,
    const std::optional<at::Tensor>& value_bias,
    const at::Tensor& out_weight,
    const std::optional<at::Tensor>& out_bias,
    const at::Tensor& inv_freq,
    const at::Tensor& rotation_matrix,
    const at::Tensor& temperature,
    int64_t n_head,
    bool sdpa,
    double dropout_p,
    const std::optional<at::Tensor>& cached_key,
    const std::optional<at::Tensor>& cached_value,
    std::optional<c10::SymInt> query_position_opt,
    const std::optional<at::Tensor>& key_buffer,
    const std::optional<at::Tensor>& value_buffer,
    c10::SymInt cache_length,
    const std::optional<at::Tensor>& positions,
    const std::optional<at::Tensor>& lengths) {
  static const auto op =
      ops::typed_op<decltype(multi_head_attention)>("rotary_attention::multi_head_attention");
  return op.call(
      x,
      xa,
      mask,
      norm_weight,
      norm_bias,
      group_norm,
      query_weight,
      query_bias,
      key_weight,
      value_weight,
      value_bias,
      out_weight,
      out_bias,
      inv_freq,
      rotation_matrix,
      temperature,
      n_head,
      sdpa,
      dropout_p,
      cached_key,
      cached_value,
      std::move(query_position_opt),
      key_buffer,
      value_buffer,
      std::move(cache_length),
      positions,
      lengths);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> attention_core(
    const at::Tensor& q,
    const at::Tensor& k,
    const at::Tensor& v,
    bool cross,
    const std::optional<at::Tensor>& mask,
    const at::Tensor& inv_freq,
    const at::Tensor& rotation_matrix,
    const at::Tensor& temperature,
    int64_t n_head,
    bool sdpa,
    double dropout_p,
    bool rotate,
    const std::optional<at::Tensor>& cached_key,
    const std::optional<at::Tensor>& cached_value,
    std::optional<c10::SymInt> query_position_opt,
    const std::optional<at::Tensor>& key_buffer,
    const std::optional<at::Tensor>& value_buffer,
    c10::SymInt cache_length,
    const std::optional<at::Tensor>& positions,
    const std::optional<at::Tensor>& lengths) {
  static const auto op =
      ops::typed_op<decltype(attention_core)>("rotary_attention::attention_core");
  return op.call(
      q,
      k,
      v,
      cross,
      mask,
      inv_freq,
      rotation_matrix,
      temperature,
      n_head,
      sdpa,
      dropout_p,
      rotate,
      cached_key,
      cached_value,
      std::move(query_position_opt),
      key_buffer,
      value_buffer,
      std::move(cache_length),
      positions,
      lengths);
}

} // namespace rotary_attention
