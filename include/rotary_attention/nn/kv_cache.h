#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <unordered_map>

#include "rotary_attention/detail/keep_linked.h"

namespace rotary_attention {

/// Key/value cache for incremental decoding, shared by all attention layers
/// of a model (one entry per layer), with the semantics of Whisper's forward
/// hooks on `key` and `value`:
/// - self-attention: the new keys/values of each call are appended
///   (the first call stores them as they are; later ones store the detached
///   concatenation, as the hook does);
/// - cross-attention: keys/values of `xa` are computed on the first call and
///   reused afterwards.
class KVCache {
 public:
  struct Entry {
    at::Tensor key;
    at::Tensor value;
    /// Query tokens this layer has seen (absolute_positions: the position of
    /// the next query, for cross-attention whose keys do not grow).
    int64_t queries = 0;
  };

  /// The entry of `layer`, or nullptr.
  const Entry* find(const void* layer) const;
  /// Appends along the time axis (dim 1) and returns the whole entry.
  const Entry& append(const void* layer, const at::Tensor& key, const at::Tensor& value);
  /// Stores (replaces) the entry of `layer`.
  const Entry& store(const void* layer, const at::Tensor& key, const at::Tensor& value);

  /// Returns the position of the next `n` queries of `layer` and advances it
  /// by `n`; the entry must exist.
  int64_t advance_queries(const void* layer, int64_t n);

  /// Number of cached time steps of `layer` (0 when absent).
  int64_t length(const void* layer) const;
  std::size_t size() const {
    return entries_.size();
  }
  void clear() {
    entries_.clear();
  }

 private:
  std::unordered_map<const void*, Entry> entries_;
};

} // namespace rotary_attention
