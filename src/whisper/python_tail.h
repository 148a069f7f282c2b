#pragma once
// Python's `items[from:][-k:]`, as whisper truncates prompts and prefixes.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace rotary_attention::whisper::detail {

/// The last k items (after the first `from`) for k > 0, all of them for
/// k == 0, all but the first -k for k < 0 (whisper relies on all three: an
/// initial prompt longer than half the context gives k < 0).
inline std::vector<int64_t> python_tail(
    const std::vector<int64_t>& items, int64_t k, size_t from = 0) {
  const auto first = items.begin() + static_cast<std::ptrdiff_t>(std::min(from, items.size()));
  const auto n = static_cast<int64_t>(items.end() - first);
  const int64_t start = k > 0 ? std::max<int64_t>(0, n - k) : std::min<int64_t>(n, -k);
  return {first + start, items.end()};
}

} // namespace rotary_attention::whisper::detail
