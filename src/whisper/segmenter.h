#pragma once
// Segments from one window's decoding result (whisper.transcribe's segmenter),
// and their times mapped back after the voice-activity filter.

#include <cstdint>
#include <vector>

#include "rotary_attention/whisper/decoding_options.h"
#include "rotary_attention/whisper/transcribe.h"
#include "rotary_attention/whisper/voice_activity.h"

namespace rotary_attention::whisper {
class Tokenizer;
}

namespace rotary_attention::whisper::detail {

struct WindowSegments {
  std::vector<Segment> segments;
  int64_t seek_advance = 0; ///< frames the seek moves forward
  bool single_timestamp_ending = false;
};

/// The segments of a window of `segment_size` mel frames that starts at
/// `time_offset` seconds (its first frame `seek`).
WindowSegments segments_of_window(
    const Tokenizer& tokenizer,
    const DecodingResult& result,
    int64_t seek,
    double time_offset,
    int64_t segment_size,
    int64_t input_stride);

/// An instantaneous segment, or one without text, is kept empty (no text,
/// tokens or words), as whisper keeps it.
void clear_empty_segments(std::vector<Segment>& segments);

/// faster-whisper's restore_speech_timestamps.
void restore_original_times(std::vector<Segment>& segments, const SpeechTimeMap& map);

} // namespace rotary_attention::whisper::detail
