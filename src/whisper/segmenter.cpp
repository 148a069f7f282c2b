// whisper.transcribe's segmenter, and faster-whisper's map of times back
// through the voice-activity filter.
#include "segmenter.h"

#include <ATen/ATen.h>

#include "rotary_attention/whisper/audio.h"
#include "rotary_attention/whisper/tokenizer.h"

namespace rotary_attention::whisper::detail {

// The segments of one window's tokens: cut after every pair of consecutive
// timestamps; a window ending on a single timestamp had no speech after it
// (the seek moves over the window), otherwise the seek moves to the last
// timestamp and the unfinished text is decoded again in the next window. With
// no pair, the whole window is one segment.
WindowSegments segments_of_window(
    const Tokenizer& tokenizer,
    const DecodingResult& result,
    int64_t seek,
    double time_offset,
    int64_t segment_size,
    int64_t input_stride) {
  const auto& tokens = result.tokens;
  const int64_t begin = tokenizer.timestamp_begin();
  const double time_precision =
      static_cast<double>(input_stride * kHopLength) / static_cast<double>(kSampleRate);
  const auto is_timestamp = [&](size_t i) { return tokens[i] >= begin; };
  const size_t n = tokens.size();
  // whisper's timestamp_tokens[-2:] == [False, True]
  const bool single_timestamp_ending = n >= 2 && !is_timestamp(n - 2) && is_timestamp(n - 1);
  std::vector<size_t> slices;
  for (size_t i = 1; i < n; ++i) {
    if (is_timestamp(i - 1) && is_timestamp(i)) {
      slices.push_back(i);
    }
  }
  const auto segment = [&](double start, double end, std::vector<int64_t> part) {
    Segment s;
    s.seek = seek;
    s.start = start;
    s.end = end;
    std::vector<int64_t> text_tokens;
    for (const int64_t t : part) {
      if (t < tokenizer.eot()) {
        text_tokens.push_back(t);
      }
    }
    s.text = tokenizer.decode(text_tokens);
    s.tokens = std::move(part);
    s.temperature = result.temperature;
    s.avg_logprob = result.avg_logprob;
    s.compression_ratio = result.compression_ratio;
    s.no_speech_prob = result.no_speech_prob;
    return s;
  };
  WindowSegments out;
  out.single_timestamp_ending = single_timestamp_ending;
  if (!slices.empty()) {
    if (single_timestamp_ending) {
      slices.push_back(n);
    }
    size_t last_slice = 0;
    for (const size_t current : slices) {
      std::vector<int64_t> part(tokens.begin() + last_slice, tokens.begin() + current);
      const int64_t start_pos = part.front() - begin, end_pos = part.back() - begin;
      out.segments.push_back(segment(
          time_offset + static_cast<double>(start_pos) * time_precision,
          time_offset + static_cast<double>(end_pos) * time_precision,
          std::move(part)));
      last_slice = current;
    }
    out.seek_advance =
        single_timestamp_ending ? segment_size : (tokens[last_slice - 1] - begin) * input_stride;
  } else {
    double duration = static_cast<double>(segment_size * kHopLength) / kSampleRate;
    for (size_t i = n; i-- > 0;) {
      if (is_timestamp(i)) {
        // No pair, but a timestamp: the last one ends the segment.
        if (tokens[i] != begin) {
          duration = static_cast<double>(tokens[i] - begin) * time_precision;
        }
        break;
      }
    }
    out.segments.push_back(segment(time_offset, time_offset + duration, tokens));
    out.seek_advance = segment_size;
  }
  return out;
}

// faster-whisper's restore_speech_timestamps: a segment's words map through
// the range their middle falls in, and the segment spans its words; a segment
// without words maps its start, and its end as an end.
void restore_original_times(std::vector<Segment>& segments, const SpeechTimeMap& map) {
  for (auto& segment : segments) {
    if (segment.words && !segment.words->empty()) {
      for (auto& word : *segment.words) {
        const size_t range = map.range_of((word.start + word.end) / 2);
        word.start = map.original_time(word.start, range);
        word.end = map.original_time(word.end, range);
      }
      segment.start = segment.words->front().start;
      segment.end = segment.words->back().end;
    } else {
      segment.start = map.original_time(segment.start);
      segment.end = map.original_time(segment.end, std::nullopt, /*is_end=*/true);
    }
  }
}

void clear_empty_segments(std::vector<Segment>& segments) {
  for (auto& segment : segments) {
    if (segment.start == segment.end || strip(segment.text).empty()) {
      segment.text.clear();
      segment.tokens.clear();
      if (segment.words) {
        segment.words->clear();
      }
    }
  }
}

} // namespace rotary_attention::whisper::detail
