#include "rotary_attention/nn/kv_cache.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace rotary_attention {

at::Tensor KVCache::Entry::key() const {
  return key_buffer.slice(1, 0, length);
}

at::Tensor KVCache::Entry::value() const {
  return value_buffer.slice(1, 0, length);
}

KVCache::KVCache(int64_t capacity) : initial_capacity_(capacity) {
  TORCH_CHECK(capacity >= 0, "KVCache: capacity must be non-negative, got ", capacity);
}

const KVCache::Entry* KVCache::find(const void* layer) const {
  auto it = entries_.find(layer);
  return it == entries_.end() ? nullptr : &it->second;
}

KVCache::Entry& KVCache::reserve(const void* layer, const at::Tensor& like, int64_t steps) {
  TORCH_CHECK(
      like.dim() == 3 && steps >= 0,
      "KVCache: keys must have shape (B, T, n_state), got ",
      like.sizes());
  const int64_t batch = like.size(0), n_state = like.size(2);
  Entry& e = entries_[layer];
  if (!e.key_buffer.defined()) {
    const int64_t capacity = std::max(initial_capacity_, steps);
    e.key_buffer = at::empty({batch, capacity, n_state}, like.options());
    e.value_buffer = at::empty({batch, capacity, n_state}, like.options());
    return e;
  }
  TORCH_CHECK(
      e.key_buffer.size(0) == batch && e.key_buffer.size(2) == n_state &&
          e.key_buffer.scalar_type() == like.scalar_type() &&
          e.key_buffer.device() == like.device(),
      "KVCache: cannot append keys of shape ",
      like.sizes(),
      " (",
      like.scalar_type(),
      ", ",
      like.device(),
      ") to cached keys of shape ",
      e.key().sizes(),
      " (",
      e.key_buffer.scalar_type(),
      ", ",
      e.key_buffer.device(),
      "): batch, feature size, dtype and device must match (a layer of another size? call "
      "clear() between sequences)");
  const int64_t needed = e.length + steps;
  if (needed > e.key_buffer.size(1)) {
    // Doubling: amortized O(1) copies per step.
    const int64_t capacity = std::max(needed, 2 * e.key_buffer.size(1));
    for (at::Tensor* buffer : {&e.key_buffer, &e.value_buffer}) {
      at::Tensor grown = at::empty({batch, capacity, n_state}, buffer->options());
      grown.slice(1, 0, e.length).copy_(buffer->slice(1, 0, e.length));
      *buffer = grown;
    }
  }
  return e;
}

const KVCache::Entry& KVCache::append(
    const void* layer, const at::Tensor& key, const at::Tensor& value) {
  TORCH_CHECK(
      value.sizes() == key.sizes(),
      "KVCache: keys of shape ",
      key.sizes(),
      " and values of shape ",
      value.sizes(),
      " must match");
  Entry& e = reserve(layer, key, key.size(1));
  const int64_t end = e.length + key.size(1);
  e.key_buffer.slice(1, e.length, end).copy_(key.detach());
  e.value_buffer.slice(1, e.length, end).copy_(value.detach());
  e.length = end;
  return e;
}

const KVCache::Entry& KVCache::store(
    const void* layer, const at::Tensor& key, const at::Tensor& value) {
  return entries_[layer] = Entry{key, value, key.size(1), 0, /*cross=*/true};
}

void KVCache::reorder(const at::Tensor& indices) {
  TORCH_CHECK(
      indices.dim() == 1 && indices.scalar_type() == at::kLong,
      "KVCache.reorder: indices must be a 1-D int64 tensor, got ",
      indices.scalar_type(),
      " of shape ",
      indices.sizes());
  // Every entry is checked before any changes, so a bad index leaves the cache as it was.
  const at::Tensor cpu_indices = indices.cpu();
  for (const auto& [layer, e] : entries_) {
    const int64_t batch = e.key_buffer.size(0);
    if (e.cross && batch == 1) {
      continue;
    }
    TORCH_CHECK(
        cpu_indices.numel() == 0 ||
            (cpu_indices.min().item<int64_t>() >= 0 && cpu_indices.max().item<int64_t>() < batch),
        "KVCache.reorder: indices must be in [0, ",
        batch,
        ") (the cached batch size), got ",
        cpu_indices);
  }
  for (auto& [layer, e] : entries_) {
    if (e.cross && e.key_buffer.size(0) == 1) {
      continue;
    }
    const at::Tensor rows = indices.to(e.key_buffer.device());
    for (at::Tensor* buffer : {&e.key_buffer, &e.value_buffer}) {
      if (e.cross) {
        *buffer = buffer->index_select(0, rows);
        continue;
      }
      // Only the cached steps are gathered. A beam that keeps its size is
      // reordered in place; otherwise new buffers keep the capacity.
      const at::Tensor gathered = buffer->slice(1, 0, e.length).index_select(0, rows);
      if (rows.size(0) == buffer->size(0)) {
        buffer->slice(1, 0, e.length).copy_(gathered);
        continue;
      }
      at::Tensor reordered =
          at::empty({rows.size(0), buffer->size(1), buffer->size(2)}, buffer->options());
      reordered.slice(1, 0, e.length).copy_(gathered);
      *buffer = reordered;
    }
  }
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
  return e == nullptr ? 0 : e->length;
}

int64_t KVCache::capacity(const void* layer) const {
  const Entry* e = find(layer);
  return e == nullptr ? 0 : e->key_buffer.size(1);
}

} // namespace rotary_attention
