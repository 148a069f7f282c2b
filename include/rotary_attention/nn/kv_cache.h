#pragma once

#include <ATen/core/Tensor.h>

#include <cstddef>
#include <unordered_map>

#include "rotary_attention/detail/keep_linked.h"

namespace rotary_attention {

/// Key/value cache for incremental decoding, shared by all attention layers
/// of a model (one entry per layer), with the semantics of Whisper's forward
/// hooks on `key` and `value`:
/// - self-attention: the new keys/values of each call are appended;
/// - cross-attention: keys/values of `xa` are computed on the first call and
///   reused afterwards.
/// Self-attention keys and values live in buffers that grow geometrically
/// (doubling), written in place: a decode step copies only its own keys, not
/// the whole cache. What attention reads is exactly what Whisper's
/// concatenation gave. Not thread-safe: one cache per sequence and thread.
class KVCache {
 public:
  struct Entry {
    /// Self-attention: (B, capacity, n_state) buffers whose first `length`
    /// steps are cached. Cross-attention: the keys/values of xa, the keys
    /// rotated (rotary at 0..S-1, then the rotation layer): attention reads
    /// them as they are, at every call.
    at::Tensor key_buffer;
    at::Tensor value_buffer;
    int64_t length = 0;
    /// Query tokens this layer has seen (absolute_positions: the position of
    /// the next query, for cross-attention whose keys do not grow).
    int64_t queries = 0;
    /// Cross-attention keys/values (stored), not self-attention buffers.
    bool cross = false;

    /// The cached steps, (B, length, n_state) views of the buffers.
    at::Tensor key() const;
    at::Tensor value() const;
  };

  /// capacity: steps preallocated per layer on first use (0: just what the
  /// first call needs); buffers grow beyond it by doubling.
  explicit KVCache(int64_t capacity = 0);

  /// The entry of `layer`, or nullptr.
  const Entry* find(const void* layer) const;

  /// Makes room for `steps` more self-attention steps of `layer`, whose keys
  /// are like `like` ((B, T, n_state), dtype and device): creates the buffers,
  /// or grows them (doubling) keeping the cached steps. A cache filled by a
  /// layer of another size, dtype or device, or with another batch size, is
  /// an error. Returns the entry; its buffers have room for length + steps.
  Entry& reserve(const void* layer, const at::Tensor& like, int64_t steps);

  /// Appends keys/values (B, T, n_state) to `layer`'s self-attention cache
  /// (reserve, write in place, advance) and returns the entry.
  const Entry& append(const void* layer, const at::Tensor& key, const at::Tensor& value);

  /// Stores (replaces) the entry of `layer` with these keys/values as they
  /// are (cross-attention).
  const Entry& store(const void* layer, const at::Tensor& key, const at::Tensor& value);

  /// Returns the position of the next `n` queries of `layer` and advances it
  /// by `n`; the entry must exist.
  int64_t advance_queries(const void* layer, int64_t n);

  /// Re-indexes every entry along the batch for a beam search (as Whisper's
  /// `rearrange_kv_cache`): row i of each entry becomes its row `indices[i]`.
  /// `indices` (int64, 1-D, on any device) may select fewer rows (finished
  /// beams dropped) or repeat rows. Cross-attention entries of batch 1 serve
  /// every row and stay as they are. Checked before anything changes.
  void reorder(const at::Tensor& indices);

  /// When true, cross-attention keys of batch 1 shared by several rows (a
  /// beam over one audio) are read once for all of them: the rows' queries
  /// attend as one row's queries (SDPA path). Equal to attending row by row
  /// up to rounding (not bit for bit), and several times less memory traffic
  /// per step. Default false.
  void set_shared_keys_read_once(bool once) {
    shared_keys_read_once_ = once;
  }
  bool shared_keys_read_once() const {
    return shared_keys_read_once_;
  }

  /// Number of cached time steps of `layer` (0 when absent).
  int64_t length(const void* layer) const;
  /// Steps `layer`'s buffers hold before they grow (0 when absent).
  int64_t capacity(const void* layer) const;
  std::size_t size() const {
    return entries_.size();
  }
  /// Forgets every entry (a new sequence); buffers are released.
  void clear() {
    entries_.clear();
  }

 private:
  int64_t initial_capacity_;
  bool shared_keys_read_once_ = false;
  std::unordered_map<const void*, Entry> entries_;
};

} // namespace rotary_attention
