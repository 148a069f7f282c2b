#include "rotary_attention/whisper/tokenizer.h"

#include <c10/util/Exception.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <set>
#include <sstream>

namespace rotary_attention::whisper {

const std::vector<std::pair<std::string, std::string>>& languages() {
  static const std::vector<std::pair<std::string, std::string>> table{
      {"en", "english"},     {"zh", "chinese"},    {"de", "german"},
      {"es", "spanish"},     {"ru", "russian"},    {"ko", "korean"},
      {"fr", "french"},      {"ja", "japanese"},   {"pt", "portuguese"},
      {"tr", "turkish"},     {"pl", "polish"},     {"ca", "catalan"},
      {"nl", "dutch"},       {"ar", "arabic"},     {"sv", "swedish"},
      {"it", "italian"},     {"id", "indonesian"}, {"hi", "hindi"},
      {"fi", "finnish"},     {"vi", "vietnamese"}, {"he", "hebrew"},
      {"uk", "ukrainian"},   {"el", "greek"},      {"ms", "malay"},
      {"cs", "czech"},       {"ro", "romanian"},   {"da", "danish"},
      {"hu", "hungarian"},   {"ta", "tamil"},      {"no", "norwegian"},
      {"th", "thai"},        {"ur", "urdu"},       {"hr", "croatian"},
      {"bg", "bulgarian"},   {"lt", "lithuanian"}, {"la", "latin"},
      {"mi", "maori"},       {"ml", "malayalam"},  {"cy", "welsh"},
      {"sk", "slovak"},      {"te", "telugu"},     {"fa", "persian"},
      {"lv", "latvian"},     {"bn", "bengali"},    {"sr", "serbian"},
      {"az", "azerbaijani"}, {"sl", "slovenian"},  {"kn", "kannada"},
      {"et", "estonian"},    {"mk", "macedonian"}, {"br", "breton"},
      {"eu", "basque"},      {"is", "icelandic"},  {"hy", "armenian"},
      {"ne", "nepali"},      {"mn", "mongolian"},  {"bs", "bosnian"},
      {"kk", "kazakh"},      {"sq", "albanian"},   {"sw", "swahili"},
      {"gl", "galician"},    {"mr", "marathi"},    {"pa", "punjabi"},
      {"si", "sinhala"},     {"km", "khmer"},      {"sn", "shona"},
      {"yo", "yoruba"},      {"so", "somali"},     {"af", "afrikaans"},
      {"oc", "occitan"},     {"ka", "georgian"},   {"be", "belarusian"},
      {"tg", "tajik"},       {"sd", "sindhi"},     {"gu", "gujarati"},
      {"am", "amharic"},     {"yi", "yiddish"},    {"lo", "lao"},
      {"uz", "uzbek"},       {"fo", "faroese"},    {"ht", "haitian creole"},
      {"ps", "pashto"},      {"tk", "turkmen"},    {"nn", "nynorsk"},
      {"mt", "maltese"},     {"sa", "sanskrit"},   {"lb", "luxembourgish"},
      {"my", "myanmar"},     {"bo", "tibetan"},    {"tl", "tagalog"},
      {"mg", "malagasy"},    {"as", "assamese"},   {"tt", "tatar"},
      {"haw", "hawaiian"},   {"ln", "lingala"},    {"ha", "hausa"},
      {"ba", "bashkir"},     {"jw", "javanese"},   {"su", "sundanese"},
      {"yue", "cantonese"}};
  return table;
}

std::optional<std::string> language_code(const std::string& name) {
  std::string lower = name;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) {
    return static_cast<char>(std::tolower(c));
  });
  for (const auto& [code, english] : languages()) {
    if (lower == code || lower == english) {
      return code;
    }
  }
  static const std::pair<const char*, const char*> aliases[] = {
      {"burmese", "my"},
      {"valencian", "ca"},
      {"flemish", "nl"},
      {"haitian", "ht"},
      {"letzeburgesch", "lb"},
      {"pushto", "ps"},
      {"panjabi", "pa"},
      {"moldavian", "ro"},
      {"moldovan", "ro"},
      {"sinhalese", "si"},
      {"castilian", "es"},
      {"mandarin", "zh"}};
  for (const auto& [alias, code] : aliases) {
    if (lower == alias) {
      return std::string(code);
    }
  }
  return std::nullopt;
}

namespace {

// Base64 (RFC 4648) as Python's b64decode reads the .tiktoken files: padding
// optional at the end ("=" alone is the empty token of multilingual.tiktoken).
std::optional<std::string> base64_decode(const std::string& text) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z')
      return c - 'A';
    if (c >= 'a' && c <= 'z')
      return c - 'a' + 26;
    if (c >= '0' && c <= '9')
      return c - '0' + 52;
    if (c == '+')
      return 62;
    if (c == '/')
      return 63;
    return -1;
  };
  size_t n = text.size();
  while (n > 0 && text[n - 1] == '=') {
    --n;
  }
  if (text.size() - n > 2 || n % 4 == 1) {
    return std::nullopt;
  }
  std::string out;
  uint32_t bits = 0;
  int held = 0;
  for (size_t i = 0; i < n; ++i) {
    const int v = value(text[i]);
    if (v < 0) {
      return std::nullopt;
    }
    bits = (bits << 6) | static_cast<uint32_t>(v);
    held += 6;
    if (held >= 8) {
      held -= 8;
      out.push_back(static_cast<char>((bits >> held) & 0xFF));
    }
  }
  return out;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Decodes UTF-8 to code points, each maximal ill-formed subpart becoming one
// U+FFFD (what Python's bytes.decode("utf-8", errors="replace") does).
std::vector<uint32_t> code_points(const std::string& bytes) {
  std::vector<uint32_t> out;
  const size_t n = bytes.size();
  size_t i = 0;
  auto at = [&](size_t k) { return static_cast<uint8_t>(bytes[k]); };
  while (i < n) {
    const uint8_t b = at(i);
    if (b < 0x80) {
      out.push_back(b);
      ++i;
      continue;
    }
    int need;
    uint8_t lo = 0x80, hi = 0xBF; // the allowed range of the second byte
    uint32_t cp;
    if (b >= 0xC2 && b <= 0xDF) {
      need = 1, cp = b & 0x1F;
    } else if (b >= 0xE0 && b <= 0xEF) {
      need = 2, cp = b & 0x0F;
      if (b == 0xE0)
        lo = 0xA0;
      if (b == 0xED)
        hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
      need = 3, cp = b & 0x07;
      if (b == 0xF0)
        lo = 0x90;
      if (b == 0xF4)
        hi = 0x8F;
    } else {
      out.push_back(0xFFFD);
      ++i;
      continue;
    }
    size_t k = 1;
    for (; k <= static_cast<size_t>(need); ++k) {
      if (i + k >= n)
        break;
      const uint8_t c = at(i + k);
      const uint8_t l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
      if (c < l || c > h)
        break;
      cp = (cp << 6) | (c & 0x3F);
    }
    if (k <= static_cast<size_t>(need)) {
      out.push_back(0xFFFD);
      i += k; // the lead byte and the continuation bytes that were valid
    } else {
      out.push_back(cp);
      i += need + 1;
    }
  }
  return out;
}

// Python's str.isspace() for the code points str.strip() removes.
bool python_space(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

} // namespace

std::string strip(const std::string& text) {
  const auto points = code_points(text);
  size_t begin = 0, end = points.size();
  while (begin < end && python_space(points[begin]))
    ++begin;
  while (end > begin && python_space(points[end - 1]))
    --end;
  std::string out;
  for (size_t i = begin; i < end; ++i) {
    append_utf8(out, points[i]);
  }
  return out;
}

Tokenizer::Tokenizer(const std::string& path, int64_t num_languages, std::optional<int64_t> n_vocab)
    : num_languages_(num_languages) {
  TORCH_CHECK(
      num_languages >= 0 && num_languages <= static_cast<int64_t>(languages().size()),
      "Tokenizer: num_languages must be in [0, ",
      languages().size(),
      "], got ",
      num_languages);
  std::ifstream in(path);
  TORCH_CHECK(in.good(), "Tokenizer: cannot open the vocabulary file '", path, "'");
  std::string line;
  size_t line_number = 0;
  std::vector<std::pair<int64_t, std::string>> entries;
  while (std::getline(in, line)) {
    ++line_number;
    if (line.empty()) {
      continue;
    }
    std::istringstream fields(line);
    std::string token;
    int64_t rank = -1;
    std::string rest;
    const bool ok = static_cast<bool>(fields >> token >> rank) && !(fields >> rest);
    auto bytes = ok ? base64_decode(token) : std::nullopt;
    TORCH_CHECK(
        bytes.has_value() && rank >= 0,
        "Tokenizer: '",
        path,
        "' is not a .tiktoken vocabulary: line ",
        line_number,
        " is not \"<base64 token> <rank>\"");
    entries.emplace_back(rank, std::move(*bytes));
  }
  TORCH_CHECK(!entries.empty(), "Tokenizer: the vocabulary file '", path, "' is empty");
  std::sort(entries.begin(), entries.end());
  vocabulary_.reserve(entries.size() + 1510 + num_languages);
  for (size_t i = 0; i < entries.size(); ++i) {
    TORCH_CHECK(
        entries[i].first == static_cast<int64_t>(i),
        "Tokenizer: '",
        path,
        "': ranks must be 0..",
        entries.size() - 1,
        " each once; rank ",
        i,
        " is ",
        entries[i].first < static_cast<int64_t>(i) ? "repeated" : "missing");
    TORCH_CHECK(
        ranks_.emplace(entries[i].second, entries[i].first).second,
        "Tokenizer: '",
        path,
        "' holds a token twice (rank ",
        entries[i].first,
        ")");
    vocabulary_.push_back(std::move(entries[i].second));
  }
  eot_ = static_cast<int64_t>(vocabulary_.size());
  vocabulary_.push_back("<|endoftext|>");
  vocabulary_.push_back("<|startoftranscript|>");
  for (int64_t i = 0; i < num_languages; ++i) {
    vocabulary_.push_back("<|" + languages()[i].first + "|>");
  }
  for (const char* name :
       {"<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>"}) {
    vocabulary_.push_back(name);
  }
  for (int i = 0; i <= 1500; ++i) {
    char name[16];
    std::snprintf(name, sizeof(name), "<|%.2f|>", i * 0.02);
    vocabulary_.push_back(name);
  }
  if (n_vocab.has_value()) {
    TORCH_CHECK(
        *n_vocab == this->n_vocab(),
        "Tokenizer: the vocabulary '",
        path,
        "' does not fit the model: its ",
        eot_,
        " tokens and the special tokens of ",
        num_languages,
        " languages make ",
        this->n_vocab(),
        ", the model has n_vocab=",
        *n_vocab,
        " (openai-whisper ships gpt2.tiktoken for English-only models, multilingual.tiktoken for "
        "the others)");
  }
}

int64_t Tokenizer::special(const std::string& name) const {
  for (int64_t t = eot_; t < n_vocab(); ++t) {
    if (vocabulary_[t] == name) {
      return t;
    }
  }
  TORCH_CHECK(false, "Tokenizer: no special token ", name);
}

int64_t Tokenizer::language_token(const std::string& code) const {
  for (int64_t i = 0; i < num_languages_; ++i) {
    if (languages()[i].first == code) {
      return sot() + 1 + i;
    }
  }
  TORCH_CHECK(
      false,
      "Tokenizer: language ",
      code,
      " not found in the tokenizer (",
      num_languages_,
      " languages)");
}

std::vector<int64_t> Tokenizer::all_language_tokens() const {
  std::vector<int64_t> tokens(num_languages_);
  for (int64_t i = 0; i < num_languages_; ++i) {
    tokens[i] = sot() + 1 + i;
  }
  return tokens;
}

std::string Tokenizer::language_of_token(int64_t token) const {
  TORCH_CHECK(
      token > sot() && token <= sot() + num_languages_,
      "Tokenizer: ",
      token,
      " is not a language token");
  return languages()[token - sot() - 1].first;
}

std::vector<int64_t> Tokenizer::sot_sequence(
    const std::optional<std::string>& language, const std::optional<std::string>& task) const {
  std::vector<int64_t> sequence{sot()};
  if (language.has_value()) {
    sequence.push_back(language_token(*language));
  }
  if (task.has_value()) {
    TORCH_CHECK(
        *task == "transcribe" || *task == "translate",
        "Tokenizer: task must be \"transcribe\" or \"translate\", got \"",
        *task,
        "\"");
    sequence.push_back(*task == "transcribe" ? transcribe() : translate());
  }
  return sequence;
}

std::string Tokenizer::decode_with_timestamps(const std::vector<int64_t>& tokens) const {
  std::string bytes;
  for (const int64_t t : tokens) {
    TORCH_CHECK(
        t >= 0 && t < n_vocab(),
        "Tokenizer: token ",
        t,
        " is not in the vocabulary of ",
        n_vocab());
    bytes += vocabulary_[t];
  }
  std::string text;
  for (const uint32_t c : code_points(bytes)) {
    append_utf8(text, c);
  }
  return text;
}

std::string Tokenizer::decode(const std::vector<int64_t>& tokens) const {
  std::vector<int64_t> text_tokens;
  for (const int64_t t : tokens) {
    if (t < timestamp_begin()) {
      text_tokens.push_back(t);
    }
  }
  return decode_with_timestamps(text_tokens);
}

std::pair<std::vector<std::string>, std::vector<std::vector<int64_t>>>
Tokenizer::split_to_word_tokens(
    const std::vector<int64_t>& tokens, const std::string& language) const {
  // split_tokens_on_unicode: a piece ends where its decoding has no U+FFFD
  // but the whole text's (a replacement the tokens really decode to).
  constexpr uint32_t kReplacement = 0xFFFD;
  const auto full = code_points(decode_with_timestamps(tokens));
  std::vector<std::string> pieces;
  std::vector<std::vector<int64_t>> piece_tokens;
  std::vector<int64_t> current;
  size_t offset = 0;
  for (const int64_t token : tokens) {
    current.push_back(token);
    const auto decoded = decode_with_timestamps(current);
    const auto points = code_points(decoded);
    const auto at = std::find(points.begin(), points.end(), kReplacement);
    const size_t in_full = offset + static_cast<size_t>(at - points.begin());
    if (at == points.end() || (in_full < full.size() && full[in_full] == kReplacement)) {
      pieces.push_back(decoded);
      piece_tokens.push_back(std::move(current));
      current.clear();
      offset += points.size();
    }
  }
  static const std::set<std::string> unspaced{"zh", "ja", "th", "lo", "my", "yue"};
  if (unspaced.count(language) != 0) {
    return {pieces, piece_tokens};
  }
  // split_tokens_on_spaces: `strip(piece) in string.punctuation` is Python's
  // substring test (an empty piece passes).
  static const std::string punctuation = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~";
  std::vector<std::string> words;
  std::vector<std::vector<int64_t>> word_tokens;
  for (size_t i = 0; i < pieces.size(); ++i) {
    const bool special = piece_tokens[i].front() >= eot();
    const bool with_space = !pieces[i].empty() && pieces[i].front() == ' ';
    const bool is_punctuation = punctuation.find(strip(pieces[i])) != std::string::npos;
    if (special || with_space || is_punctuation || words.empty()) {
      words.push_back(pieces[i]);
      word_tokens.push_back(piece_tokens[i]);
    } else {
      words.back() += pieces[i];
      word_tokens.back().insert(
          word_tokens.back().end(), piece_tokens[i].begin(), piece_tokens[i].end());
    }
  }
  return {words, word_tokens};
}

std::vector<int64_t> Tokenizer::encode_piece(const std::string& piece) const {
  if (const auto it = ranks_.find(piece); it != ranks_.end()) {
    return {it->second};
  }
  // Byte-pair merges: repeatedly join the adjacent pair whose concatenation
  // has the lowest rank (the leftmost on a tie) until no pair has a rank.
  std::vector<std::string> parts;
  for (const char c : piece) {
    parts.emplace_back(1, c);
  }
  while (parts.size() > 1) {
    int64_t best = std::numeric_limits<int64_t>::max();
    size_t at = 0;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      const auto it = ranks_.find(parts[i] + parts[i + 1]);
      if (it != ranks_.end() && it->second < best) {
        best = it->second;
        at = i;
      }
    }
    if (best == std::numeric_limits<int64_t>::max()) {
      break;
    }
    parts[at] += parts[at + 1];
    parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(at) + 1);
  }
  std::vector<int64_t> tokens;
  for (const auto& part : parts) {
    const auto it = ranks_.find(part);
    TORCH_CHECK(
        it != ranks_.end(), "Tokenizer: the vocabulary has no token for a byte of the piece");
    tokens.push_back(it->second);
  }
  return tokens;
}

namespace {

// Whisper's split pattern (its tiktoken encodings' pat_str): contractions,
// letters, numbers, other symbols, each with one optional leading space, then
// runs of whitespace. PCRE2 with Unicode properties, as tiktoken's regex.
class SplitPattern {
 public:
  SplitPattern() {
    static const char pattern[] =
        R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
    int error = 0;
    PCRE2_SIZE offset = 0;
    code_ = pcre2_compile(
        reinterpret_cast<PCRE2_SPTR>(pattern),
        PCRE2_ZERO_TERMINATED,
        PCRE2_UTF | PCRE2_UCP,
        &error,
        &offset,
        nullptr);
    TORCH_CHECK(
        code_ != nullptr,
        "Tokenizer: the split pattern does not compile (PCRE2 error ",
        error,
        ")");
  }
  ~SplitPattern() {
    pcre2_code_free(code_);
  }
  SplitPattern(const SplitPattern&) = delete;
  SplitPattern& operator=(const SplitPattern&) = delete;

  /// The pieces of `text`, in order (they cover it whole).
  std::vector<std::string> split(const std::string& text) const {
    std::unique_ptr<pcre2_match_data, decltype(&pcre2_match_data_free)> match(
        pcre2_match_data_create_from_pattern(code_, nullptr), &pcre2_match_data_free);
    std::vector<std::string> pieces;
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
    PCRE2_SIZE at = 0;
    while (at < text.size()) {
      const int rc = pcre2_match(code_, subject, text.size(), at, 0, match.get(), nullptr);
      // Every character matches some alternative: only invalid UTF-8 fails.
      TORCH_CHECK(
          rc >= 0,
          "Tokenizer.encode: the text is not valid UTF-8 (PCRE2 error ",
          rc,
          " at byte ",
          at,
          ")");
      const PCRE2_SIZE* range = pcre2_get_ovector_pointer(match.get());
      pieces.emplace_back(text, range[0], range[1] - range[0]);
      at = range[1];
    }
    return pieces;
  }

 private:
  pcre2_code* code_ = nullptr;
};

} // namespace

std::vector<int64_t> Tokenizer::encode(const std::string& text) const {
  for (int64_t t = eot_; t < n_vocab(); ++t) {
    TORCH_CHECK(
        text.find(vocabulary_[t]) == std::string::npos,
        "Tokenizer.encode: the text holds the special token ",
        vocabulary_[t],
        ", which is not encoded as text (tiktoken refuses it too)");
  }
  static const SplitPattern pattern;
  std::vector<int64_t> tokens;
  for (const auto& piece : pattern.split(text)) {
    const auto part = encode_piece(piece);
    tokens.insert(tokens.end(), part.begin(), part.end());
  }
  return tokens;
}

std::vector<int64_t> Tokenizer::non_speech_tokens() const {
  std::vector<std::string> symbols;
  for (const char c : std::string("\"#()*+/:;<=>@[\\]^_`{|}~")) {
    symbols.emplace_back(1, c);
  }
  for (const char* s :
       {"「", "」",  "『", "』", "<<",  ">>",  "<<<", ">>>", "--", "---", "-(", "-[",
        "('", "(\"", "((", "))", "(((", ")))", "[[",  "]]",  "{{", "}}",  "♪♪", "♪♪♪"}) {
    symbols.emplace_back(s);
  }
  // Musical symbols of U+2640..U+267F: their first token is suppressed even
  // when they take several (their UTF-8 forms share the leading bytes).
  const std::set<std::string> miscellaneous{"♩", "♪", "♫", "♬", "♭", "♮", "♯"};
  std::set<int64_t> result{encode_piece(" -").front(), encode_piece(" '").front()};
  auto add = [&](const std::string& symbol, bool always_first) {
    for (const auto& text : {symbol, " " + symbol}) {
      const auto tokens = encode_piece(text);
      if (tokens.size() == 1 || always_first) {
        result.insert(tokens.front());
      }
    }
  };
  for (const auto& s : symbols) {
    add(s, miscellaneous.count(s) > 0);
  }
  for (const auto& s : miscellaneous) {
    add(s, true);
  }
  return {result.begin(), result.end()};
}

std::string find_vocabulary(
    const std::string& checkpoint,
    bool multilingual,
    const std::vector<std::string>& folders,
    const std::string& how_to_pass) {
  namespace fs = std::filesystem;
  const std::string name = multilingual ? "multilingual.tiktoken" : "gpt2.tiktoken";
  std::vector<fs::path> places{fs::path(checkpoint).parent_path() / name};
  for (const auto& folder : folders) {
    places.push_back(fs::path(folder) / name);
  }
  std::error_code error;
  for (const auto& place : places) {
    if (fs::is_regular_file(place, error)) {
      return place.string();
    }
  }
  TORCH_CHECK(
      false,
      "no tokenizer given and no ",
      name,
      " beside the checkpoint or in an installed openai-whisper: pass ",
      how_to_pass,
      " (openai-whisper ships it in whisper/assets/; `pip install openai-whisper`)");
}

} // namespace rotary_attention::whisper
