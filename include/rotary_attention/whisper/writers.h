#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "rotary_attention/whisper/transcribe.h"

namespace rotary_attention::whisper {

/// How the subtitle writers (vtt, srt) cut segments that have words
/// (whisper's `--highlight_words`, `--max_line_width`, `--max_line_count`,
/// `--max_words_per_line`); without words they write a cue per segment. A
/// zero is "not given", as in whisper.
struct WriterOptions {
  /// A cue per word, the word underlined (`<u>...</u>`) in its line.
  bool highlight_words = false;
  /// Characters in a line before it breaks.
  std::optional<int64_t> max_line_width;
  /// Lines in a cue (with max_line_width: cues then cross segments, and
  /// break at pauses of over 3 s).
  std::optional<int64_t> max_line_count;
  /// Words in a line (no effect with max_line_width).
  std::optional<int64_t> max_words_per_line;

  template <class Visitor>
  static void fields(Visitor&& visit) {
    visit("highlight_words", &WriterOptions::highlight_words);
    visit("max_line_width", &WriterOptions::max_line_width);
    visit("max_line_count", &WriterOptions::max_line_count);
    visit("max_words_per_line", &WriterOptions::max_words_per_line);
  }
};

/// The formats whisper's `get_writer` writes: "txt", "vtt", "srt", "tsv",
/// "json".
const std::vector<std::string>& output_formats();

/// A transcription as whisper's writer for `format` writes it (byte for
/// byte): txt one stripped segment text a line; vtt and srt cues from the
/// segments (timestamps as `format_timestamp`: vtt "MM:SS.mmm" with hours
/// when needed, srt always "HH:MM:SS,mmm"); tsv start and end in integer
/// milliseconds; json `json.dump(result)` (ASCII, Python's float repr).
/// Segments with words give vtt and srt cues cut by `options`.
std::string format_transcription(
    const Transcription& result, const std::string& format, const WriterOptions& options = {});

/// whisper's `ResultWriter.__call__`: writes `output_dir/<audio's name
/// without extension>.<format>` for each format ("all": every one). Each
/// file is written whole under a temporary name, then renamed: a failure
/// leaves no half-written file. Returns the paths written.
std::vector<std::string> write_transcription(
    const Transcription& result,
    const std::string& audio_path,
    const std::string& output_dir,
    const std::string& format,
    const WriterOptions& options = {});

/// whisper.utils.format_timestamp.
std::string format_timestamp(
    double seconds, bool always_include_hours = false, char decimal_marker = '.');

} // namespace rotary_attention::whisper
