// The library's only TORCH_LIBRARY block: every operator's schema. Kernels
// are registered per dispatch key next to their code (src/ops/*/, and
// CompositeImplicitAutograd in src/ops/rotary.cpp, multi_head_attention.cpp).

#include <torch/library.h>

#include "rotary_attention/detail/keep_linked.h"

namespace rotary_attention {

TORCH_LIBRARY(rotary_attention, m) {
  m.def(
      "rotary(Tensor x, Tensor inv_freq, Tensor? positions=None, int offset=0, "
      "str layout=\"interleaved_to_half\", int rotary_dim=-1) -> Tensor");
  m.def(
      "rotary_backward(Tensor grad, Tensor inv_freq, Tensor? positions=None, "
      "int offset=0, str layout=\"interleaved_to_half\", int rotary_dim=-1) -> Tensor");
  // In place, for inference: no autograd (an error when x requires grad).
  // Returns nothing, so torch.compile can functionalize it.
  m.def(
      "rotary_(Tensor(a!) x, Tensor inv_freq, Tensor? positions=None, int offset=0, "
      "str layout=\"interleaved_to_half\", int rotary_dim=-1) -> ()");
  // Queries and keys at the same positions in one call; composite, so its
  // autograd, Meta and device support are rotary's.
  m.def(
      "rotary_qk(Tensor q, Tensor k, Tensor inv_freq, Tensor? positions=None, int offset=0, "
      "str layout=\"interleaved_to_half\", int rotary_dim=-1) -> (Tensor, Tensor)");
  // A few queries over a KV cache of per-row lengths (ops/decode_attention.h);
  // inference only.
  m.def(
      "decode_attention(Tensor q, Tensor key_cache, Tensor value_cache, Tensor lengths, "
      "int n_head, bool causal=False, float? scale=None) -> Tensor");
  // The layer math of MultiHeadAttention (ops/multi_head_attention.h); qk is
  // empty on the SDPA path; key and value are what a cache holds next (the
  // new steps when key_buffer/value_buffer hold the cache: they are written
  // there in place).
  m.def(
      "multi_head_attention(Tensor x, Tensor? xa, Tensor? mask, Tensor? norm_weight, "
      "Tensor? norm_bias, bool group_norm, Tensor query_weight, Tensor? query_bias, "
      "Tensor key_weight, Tensor value_weight, Tensor? value_bias, Tensor out_weight, "
      "Tensor? out_bias, Tensor inv_freq, Tensor rotation_matrix, Tensor temperature, "
      "int n_head, bool sdpa, float dropout_p, "
      "Tensor? cached_key, Tensor? cached_value, SymInt? query_position, "
      "Tensor(a!)? key_buffer=None, Tensor(b!)? value_buffer=None, SymInt cache_length=0, "
      "Tensor? positions=None, Tensor? lengths=None) -> (Tensor out, Tensor qk, Tensor key, Tensor "
      "value)");
  // Everything between MultiHeadAttention's projections and its `out`: q, k, v
  // as the query/key/value children returned them (k, v from xa when cross);
  // rotary, the rotation layer (unless rotate=False: the caller rotated q and
  // k), the KV cache (the cache arguments as above) and attention. Returns
  // (attention output, qk, key, value); the layer's output is out(attention) + x.
  m.def(
      "attention_core(Tensor q, Tensor k, Tensor v, bool cross, Tensor? mask, Tensor inv_freq, "
      "Tensor rotation_matrix, Tensor temperature, int n_head, bool sdpa, float dropout_p, "
      "bool rotate=True, Tensor? cached_key=None, "
      "Tensor? cached_value=None, SymInt? query_position=None, Tensor(a!)? key_buffer=None, "
      "Tensor(b!)? value_buffer=None, SymInt cache_length=0, Tensor? positions=None, "
      "Tensor? lengths=None) -> "
      "(Tensor attention, Tensor qk, Tensor key, Tensor value)");
}

namespace detail {
int64_t operators_registered() {
  return 1;
}
} // namespace detail

} // namespace rotary_attention
