#include "rotary_attention/nn/kv_cache.h"

#include <ATen/ATen.h>

namespace rotary_attention {

const KVCache::Entry* KVCache::find(const void* layer) const {
  auto it = entries_.find(layer);
  return it == entries_.end() ? nullptr : &it->second;
}

const KVCache::Entry& KVCache::append(
    const void* layer, const at::Tensor& key, const at::Tensor& value) {
  auto it = entries_.find(layer);
  if (it == entries_.end()) {
    return entries_[layer] = Entry{key, value};
  }
  Entry& e = it->second;
  TORCH_CHECK(
      e.key.size(0) == key.size(0) && e.key.size(2) == key.size(2),
      "KVCache: cannot append keys of shape ",
      key.sizes(),
      " to cached keys of shape ",
      e.key.sizes(),
      " (batch and feature sizes must match; call clear() between sequences)");
  // Whisper's hook stores the detached concatenation.
  e.key = at::cat({e.key, key}, 1).detach();
  e.value = at::cat({e.value, value}, 1).detach();
  return e;
}

const KVCache::Entry& KVCache::store(
    const void* layer, const at::Tensor& key, const at::Tensor& value) {
  return entries_[layer] = Entry{key, value};
}

int64_t KVCache::advance_queries(const void* layer, int64_t n) {
  auto it = entries_.find(layer);
  TORCH_CHECK(it != entries_.end(), "KVCache: no entry for this layer");
  const int64_t position = it->second.queries;
  it->second.queries += n;
  return position;
}

int64_t KVCache::length(const void* layer) const {
  const Entry* e = find(layer);
  return e == nullptr ? 0 : e->key.size(1);
}

} // namespace rotary_attention
