#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "rotary_attention/detail/keep_linked.h"

namespace rotary_attention::whisper {

struct ModelDimensions; // model.h

/// The decoder's cross-attention heads, as (layer, head) pairs in ascending
/// order, whose attention over the audio word timestamps follow (openai-whisper's
/// `model.alignment_heads`).
using AlignmentHeads = std::vector<std::pair<int64_t, int64_t>>;

/// Whisper's default: every head of the last half of the decoder's layers.
AlignmentHeads default_alignment_heads(const ModelDimensions& dims);

/// The heads openai chose for one of its released models (`_ALIGNMENT_HEADS`
/// in openai-whisper 20250625's `whisper/__init__.py`): "tiny.en", "tiny",
/// "base.en", "base", "small.en", "small", "medium.en", "medium", "large-v1",
/// "large-v2", "large-v3", "large" (v3), "large-v3-turbo", "turbo". Another
/// name is an error listing these; `dims`, when given, must be that model's.
AlignmentHeads openai_alignment_heads(
    const std::string& model_name, const ModelDimensions* dims = nullptr);

/// The name of openai's released model whose dims these are, when exactly one
/// has them (large-v1 and large-v2 share theirs: none).
std::optional<std::string> openai_model_with_dims(const ModelDimensions& dims);

/// Heads from a command line: one of openai's model names, or
/// "layer,head;layer,head;..." (0-based), each within `dims`.
AlignmentHeads parse_alignment_heads(const std::string& text, const ModelDimensions& dims);

/// An error unless each head is within `dims` and none repeats; returns the
/// heads sorted.
AlignmentHeads checked_alignment_heads(AlignmentHeads heads, const ModelDimensions& dims);

} // namespace rotary_attention::whisper
