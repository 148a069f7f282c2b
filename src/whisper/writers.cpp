// whisper.utils' writers (openai-whisper 20250625).
#include "rotary_attention/whisper/writers.h"

#include <c10/util/Exception.h>

#include <array>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "rotary_attention/whisper/tokenizer.h"

namespace rotary_attention::whisper {

namespace {

std::string replace_all(std::string text, const std::string& from, const std::string& to) {
  for (size_t at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size())) {
    text.replace(at, from.size(), to);
  }
  return text;
}

// Python's round() of a double to an integer: halves to even.
long long python_round(double x) {
  return static_cast<long long>(std::nearbyint(x));
}

// Python's repr(float): the shortest digits that read back the same, fixed
// notation for decimal exponents -4..15, scientific ("1e-05") otherwise.
std::string python_float(double x) {
  if (std::isnan(x)) {
    return "NaN"; // json.dump's spellings
  }
  if (std::isinf(x)) {
    return x > 0 ? "Infinity" : "-Infinity";
  }
  char buffer[64];
  const auto done = std::to_chars(buffer, buffer + sizeof buffer, x, std::chars_format::scientific);
  const std::string text(buffer, done.ptr);
  const size_t e = text.find('e');
  const bool negative = text[0] == '-';
  std::string digits;
  for (size_t i = negative ? 1 : 0; i < e; ++i) {
    if (text[i] != '.') {
      digits += text[i];
    }
  }
  const int exponent = std::stoi(text.substr(e + 1));
  std::string out = negative ? "-" : "";
  if (exponent < -4 || exponent >= 16) {
    out += digits.substr(0, 1);
    if (digits.size() > 1) {
      out += "." + digits.substr(1);
    }
    char tail[16];
    std::snprintf(tail, sizeof tail, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
    return out + tail;
  }
  if (exponent < 0) {
    return out + "0." + std::string(static_cast<size_t>(-exponent - 1), '0') + digits;
  }
  const size_t point = static_cast<size_t>(exponent) + 1;
  if (digits.size() <= point) {
    return out + digits + std::string(point - digits.size(), '0') + ".0";
  }
  return out + digits.substr(0, point) + "." + digits.substr(point);
}

// json.dumps of a str with ensure_ascii: every character outside ' '..'~'
// escaped, as \uXXXX (surrogate pairs above U+FFFF).
std::string json_string(const std::string& text) {
  std::string out = "\"";
  char escape[16];
  for (size_t i = 0; i < text.size();) {
    const auto c = static_cast<unsigned char>(text[i]);
    uint32_t code = c;
    size_t length = 1;
    if (c >= 0x80) {
      length = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
      code = c & (0x3F >> (length - 1));
      for (size_t k = 1; k < length && i + k < text.size(); ++k) {
        code = (code << 6) | (static_cast<unsigned char>(text[i + k]) & 0x3F);
      }
    }
    i += length;
    switch (code) {
      case '"':
        out += "\\\"";
        continue;
      case '\\':
        out += "\\\\";
        continue;
      case '\n':
        out += "\\n";
        continue;
      case '\r':
        out += "\\r";
        continue;
      case '\t':
        out += "\\t";
        continue;
      case '\b':
        out += "\\b";
        continue;
      case '\f':
        out += "\\f";
        continue;
      default:
        break;
    }
    if (code >= 0x20 && code <= 0x7E) {
      out += static_cast<char>(code);
    } else if (code <= 0xFFFF) {
      std::snprintf(escape, sizeof escape, "\\u%04x", code);
      out += escape;
    } else {
      const uint32_t v = code - 0x10000;
      std::snprintf(
          escape, sizeof escape, "\\u%04x\\u%04x", 0xD800 + (v >> 10), 0xDC00 + (v & 0x3FF));
      out += escape;
    }
  }
  return out + "\"";
}

std::string json_of_words(const std::vector<Word>& words) {
  std::string out = "[";
  for (size_t i = 0; i < words.size(); ++i) {
    const auto& w = words[i];
    out += (i ? ", " : "");
    out += "{\"word\": " + json_string(w.word) + ", \"start\": " + python_float(w.start) +
           ", \"end\": " + python_float(w.end) +
           ", \"probability\": " + python_float(w.probability) + "}";
  }
  return out + "]";
}

std::string json_of(const Transcription& result) {
  std::string out = "{\"text\": " + json_string(result.text) + ", \"segments\": [";
  for (size_t i = 0; i < result.segments.size(); ++i) {
    const auto& s = result.segments[i];
    std::string tokens;
    for (size_t k = 0; k < s.tokens.size(); ++k) {
      tokens += (k ? ", " : "") + std::to_string(s.tokens[k]);
    }
    out += (i ? ", " : "");
    out += "{\"id\": " + std::to_string(s.id) + ", \"seek\": " + std::to_string(s.seek) +
           ", \"start\": " + python_float(s.start) + ", \"end\": " + python_float(s.end) +
           ", \"text\": " + json_string(s.text) + ", \"tokens\": [" + tokens +
           "], \"temperature\": " + python_float(s.temperature) +
           ", \"avg_logprob\": " + python_float(s.avg_logprob) +
           ", \"compression_ratio\": " + python_float(s.compression_ratio) +
           ", \"no_speech_prob\": " + python_float(s.no_speech_prob) +
           (s.words ? ", \"words\": " + json_of_words(*s.words) : "") + "}";
  }
  return out + "], \"language\": " + json_string(result.language) + "}";
}

// Python's len() of UTF-8 text: its code points.
int64_t python_length(const std::string& text) {
  int64_t n = 0;
  for (const char c : text) {
    n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  }
  return n;
}

// A subtitle's word: its text with the spacing or line break before it.
struct CueWord {
  std::string text;
  double start, end;
};

// SubtitlesWriter.iterate_subtitles: the words cut into cues of lines.
std::vector<std::vector<CueWord>> subtitles_of_words(
    const std::vector<Segment>& segments, const WriterOptions& options) {
  const auto given = [](const std::optional<int64_t>& v) {
    return v && *v != 0 ? v : std::nullopt;
  };
  const auto max_line_count = given(options.max_line_count);
  const bool preserve_segments = !max_line_count || !given(options.max_line_width);
  const int64_t max_line_width = given(options.max_line_width).value_or(1000);
  const int64_t max_words_per_line = given(options.max_words_per_line).value_or(1000);
  std::vector<std::vector<CueWord>> cues;
  std::vector<CueWord> cue;
  int64_t line_length = 0, line_count = 1;
  double last = segments.front().start; // get_start: the first word's start
  for (const auto& s : segments) {
    if (s.words && !s.words->empty()) {
      last = s.words->front().start;
      break;
    }
  }
  for (const auto& segment : segments) {
    const auto words = segment.words.value_or(std::vector<Word>{});
    const auto n = static_cast<int64_t>(words.size());
    int64_t words_count = max_words_per_line;
    for (int64_t chunk = 0; chunk < n; chunk += max_words_per_line) {
      if (max_words_per_line > n - chunk) {
        words_count = n - chunk;
      }
      for (int64_t i = 0; i < words_count && chunk + i < n; ++i) {
        const auto& word = words[static_cast<size_t>(chunk + i)];
        CueWord timing{word.word, word.start, word.end};
        const bool long_pause = !preserve_segments && timing.start - last > 3.0;
        const bool has_room = line_length + python_length(timing.text) <= max_line_width;
        const bool segment_break = i == 0 && !cue.empty() && preserve_segments;
        if (line_length > 0 && has_room && !long_pause && !segment_break) {
          line_length += python_length(timing.text); // the line goes on
        } else {
          timing.text = strip(timing.text);
          if ((!cue.empty() && max_line_count && (long_pause || line_count >= *max_line_count)) ||
              segment_break) {
            cues.push_back(std::move(cue)); // a new cue
            cue.clear();
            line_count = 1;
          } else if (line_length > 0) {
            ++line_count; // a new line
            timing.text = "\n" + timing.text;
          }
          line_length = python_length(strip(timing.text));
        }
        last = timing.start;
        cue.push_back(std::move(timing));
      }
    }
  }
  if (!cue.empty()) {
    cues.push_back(std::move(cue));
  }
  return cues;
}

// re.sub(r"^(\s*)(.*)$", r"\1<u>\2</u>", word): underlined after its spacing.
std::string underlined(const std::string& word) {
  const size_t text = word.find_first_not_of(" \t\n\r\f\v");
  if (text == std::string::npos) {
    return word + "<u></u>";
  }
  return word.substr(0, text) + "<u>" + word.substr(text) + "</u>";
}

// SubtitlesWriter.iterate_result: (start, end, text) of each cue.
std::vector<std::array<std::string, 3>> cues_of(
    const Transcription& result, const WriterOptions& options, bool hours, char marker) {
  const auto timestamp = [&](double t) { return format_timestamp(t, hours, marker); };
  std::vector<std::array<std::string, 3>> out;
  if (result.segments.empty() || !result.segments.front().words) {
    for (const auto& s : result.segments) {
      out.push_back(
          {timestamp(s.start), timestamp(s.end), replace_all(strip(s.text), "-->", "->")});
    }
    return out;
  }
  for (const auto& cue : subtitles_of_words(result.segments, options)) {
    const auto start = timestamp(cue.front().start), end = timestamp(cue.back().end);
    std::string text;
    for (const auto& word : cue) {
      text += word.text;
    }
    if (!options.highlight_words) {
      out.push_back({start, end, text});
      continue;
    }
    std::string last = start;
    for (size_t i = 0; i < cue.size(); ++i) {
      const auto word_start = timestamp(cue[i].start), word_end = timestamp(cue[i].end);
      if (last != word_start) {
        out.push_back({last, word_start, text});
      }
      std::string marked;
      for (size_t j = 0; j < cue.size(); ++j) {
        marked += j == i ? underlined(cue[j].text) : cue[j].text;
      }
      out.push_back({word_start, word_end, marked});
      last = word_end;
    }
  }
  return out;
}

} // namespace

std::string format_timestamp(double seconds, bool always_include_hours, char decimal_marker) {
  TORCH_CHECK(seconds >= 0, "format_timestamp: non-negative timestamp expected, got ", seconds);
  long long ms = python_round(seconds * 1000.0);
  const long long hours = ms / 3600000;
  ms -= hours * 3600000;
  const long long minutes = ms / 60000;
  ms -= minutes * 60000;
  const long long secs = ms / 1000;
  ms -= secs * 1000;
  char out[64];
  if (always_include_hours || hours > 0) {
    std::snprintf(
        out, sizeof out, "%02lld:%02lld:%02lld%c%03lld", hours, minutes, secs, decimal_marker, ms);
  } else {
    std::snprintf(out, sizeof out, "%02lld:%02lld%c%03lld", minutes, secs, decimal_marker, ms);
  }
  return out;
}

const std::vector<std::string>& output_formats() {
  static const std::vector<std::string> formats{"txt", "vtt", "srt", "tsv", "json"};
  return formats;
}

std::string format_transcription(
    const Transcription& result, const std::string& format, const WriterOptions& options) {
  std::string out;
  if (format == "txt") {
    for (const auto& s : result.segments) {
      out += strip(s.text) + "\n";
    }
  } else if (format == "vtt") {
    out = "WEBVTT\n\n";
    for (const auto& [start, end, text] : cues_of(result, options, false, '.')) {
      out += start + " --> " + end + "\n" + text + "\n\n";
    }
  } else if (format == "srt") {
    size_t i = 0;
    for (const auto& [start, end, text] : cues_of(result, options, true, ',')) {
      out += std::to_string(++i) + "\n" + start + " --> " + end + "\n" + text + "\n\n";
    }
  } else if (format == "tsv") {
    out = "start\tend\ttext\n";
    for (const auto& s : result.segments) {
      out += std::to_string(python_round(1000 * s.start)) + "\t" +
             std::to_string(python_round(1000 * s.end)) + "\t" +
             replace_all(strip(s.text), "\t", " ") + "\n";
    }
  } else if (format == "json") {
    out = json_of(result);
  } else {
    TORCH_CHECK(
        false, "output_format: expected txt, vtt, srt, tsv, json or all, got \"", format, "\"");
  }
  return out;
}

std::vector<std::string> write_transcription(
    const Transcription& result,
    const std::string& audio_path,
    const std::string& output_dir,
    const std::string& format,
    const WriterOptions& options) {
  const std::vector<std::string> formats =
      format == "all" ? output_formats() : std::vector<std::string>{format};
  // Every text first: a bad format writes nothing.
  std::vector<std::string> texts;
  for (const auto& f : formats) {
    texts.push_back(format_transcription(result, f, options));
  }
  namespace fs = std::filesystem;
  const std::string stem = fs::path(audio_path).stem().string();
  std::vector<std::string> written;
  for (size_t i = 0; i < formats.size(); ++i) {
    const fs::path path = fs::path(output_dir) / (stem + "." + formats[i]);
    const fs::path partial = path.string() + ".partial";
    {
      std::ofstream out(partial, std::ios::binary);
      out << texts[i];
      out.close();
      if (!out.good()) {
        std::error_code ignored;
        fs::remove(partial, ignored);
        TORCH_CHECK(false, "write_transcription: could not write '", partial.string(), "'");
      }
    }
    std::error_code error;
    fs::rename(partial, path, error);
    TORCH_CHECK(
        !error, "write_transcription: could not write '", path.string(), "': ", error.message());
    written.push_back(path.string());
  }
  return written;
}

} // namespace rotary_attention::whisper
