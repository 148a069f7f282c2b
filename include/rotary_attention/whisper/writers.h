#pragma once

#include <string>
#include <vector>

#include "rotary_attention/whisper/transcribe.h"

namespace rotary_attention::whisper {

/// The formats whisper's `get_writer` writes: "txt", "vtt", "srt", "tsv",
/// "json".
const std::vector<std::string>& output_formats();

/// A transcription as whisper's writer for `format` writes it (byte for
/// byte): txt one stripped segment text a line; vtt and srt cues from the
/// segments (timestamps as `format_timestamp`: vtt "MM:SS.mmm" with hours
/// when needed, srt always "HH:MM:SS,mmm"); tsv start and end in integer
/// milliseconds; json `json.dump(result)` (ASCII, Python's float repr).
std::string format_transcription(const Transcription& result, const std::string& format);

/// whisper's `ResultWriter.__call__`: writes `output_dir/<audio's name
/// without extension>.<format>` for each format ("all": every one). Each
/// file is written whole under a temporary name, then renamed: a failure
/// leaves no half-written file. Returns the paths written.
std::vector<std::string> write_transcription(
    const Transcription& result,
    const std::string& audio_path,
    const std::string& output_dir,
    const std::string& format);

/// whisper.utils.format_timestamp.
std::string format_timestamp(
    double seconds, bool always_include_hours = false, char decimal_marker = '.');

} // namespace rotary_attention::whisper
