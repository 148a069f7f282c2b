#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "rotary_attention/detail/keep_linked.h"

namespace rotary_attention::whisper {

/// Whisper's language codes, in the order of their tokens (openai-whisper's
/// `LANGUAGES`), and the English name of each.
const std::vector<std::pair<std::string, std::string>>& languages();

/// A language code for `name`: a code ("en"), an English name ("english") or
/// an alias Whisper accepts ("castilian"), any case; nullopt if none.
std::optional<std::string> language_code(const std::string& name);

/// Python's `str.strip()` on UTF-8 text: Unicode whitespace removed from both
/// ends (what Whisper applies to decoded text).
std::string strip(const std::string& text);

/// The vocabulary that fits a checkpoint (openai-whisper's `gpt2.tiktoken` for
/// an English-only model, `multilingual.tiktoken` otherwise): beside the
/// checkpoint, else in the first of `folders` that holds it. None there: an
/// error in one line saying to pass it (`how_to_pass`, e.g. "--tokenizer PATH")
/// and where openai-whisper ships it.
std::string find_vocabulary(
    const std::string& checkpoint,
    bool multilingual,
    const std::vector<std::string>& folders,
    const std::string& how_to_pass);

/// Whisper's tokenizer (`whisper.tokenizer.get_tokenizer`), read from a
/// `.tiktoken` vocabulary (openai-whisper ships `gpt2.tiktoken` for English-only
/// models and `multilingual.tiktoken`): byte-level BPE ranks, then the special
/// tokens laid out as `get_encoding` lays them out for `num_languages`
/// (end of text, start of transcript, the languages, translate, transcribe,
/// start of LM, start of previous, no speech, no timestamps, 1501 timestamps).
class Tokenizer {
 public:
  /// Reads `path` (lines "base64-token rank"). `n_vocab`, when given (a
  /// checkpoint's), must equal the vocabulary with its special tokens, or the
  /// file does not fit the model: an error saying by how much.
  Tokenizer(const std::string& path, int64_t num_languages, std::optional<int64_t> n_vocab = {});

  /// Text of `tokens`, as `Tokenizer.decode`: timestamps dropped, special
  /// tokens as their names, invalid UTF-8 replaced by U+FFFD as Python's
  /// `bytes.decode(errors="replace")` does.
  std::string decode(const std::vector<int64_t>& tokens) const;
  /// The same with timestamps shown ("<|1.08|>").
  std::string decode_with_timestamps(const std::vector<int64_t>& tokens) const;

  /// `Tokenizer.encode`: UTF-8 text split by Whisper's pattern (tiktoken's
  /// `pat_str`, Unicode letters, numbers and spaces), then each piece's BPE;
  /// equal to tiktoken's tokens. Text holding a special token's name is
  /// refused, as tiktoken refuses it.
  std::vector<int64_t> encode(const std::string& text) const;

  /// BPE of one pre-tokenized piece (bytes that tiktoken's split pattern keeps
  /// whole, such as " -" or "♪♪"): the merges tiktoken applies to it.
  std::vector<int64_t> encode_piece(const std::string& piece) const;

  int64_t n_vocab() const {
    return static_cast<int64_t>(vocabulary_.size());
  }
  int64_t num_languages() const {
    return num_languages_;
  }
  /// A special token's id by its name ("<|nospeech|>"); an error if absent.
  int64_t special(const std::string& name) const;
  int64_t eot() const {
    return eot_;
  }
  int64_t sot() const {
    return eot_ + 1;
  }
  int64_t language_token(const std::string& code) const;
  std::vector<int64_t> all_language_tokens() const;
  std::string language_of_token(int64_t token) const;
  int64_t translate() const {
    return sot() + 1 + num_languages_;
  }
  int64_t transcribe() const {
    return translate() + 1;
  }
  int64_t sot_lm() const {
    return translate() + 2;
  }
  int64_t sot_prev() const {
    return translate() + 3;
  }
  int64_t no_speech() const {
    return translate() + 4;
  }
  int64_t no_timestamps() const {
    return translate() + 5;
  }
  int64_t timestamp_begin() const {
    return translate() + 6;
  }
  /// `Tokenizer.sot_sequence`: sot, then the language and task tokens when
  /// given (a multilingual model gets both; an English-only one neither).
  std::vector<int64_t> sot_sequence(
      const std::optional<std::string>& language, const std::optional<std::string>& task) const;
  /// `Tokenizer.split_to_word_tokens`: the words of `tokens` and each word's
  /// tokens. For `language` zh, ja, th, lo, my and yue a word ends wherever
  /// the tokens so far decode to whole characters; otherwise such pieces join
  /// into words at spaces, with punctuation and special tokens apart.
  std::pair<std::vector<std::string>, std::vector<std::vector<int64_t>>> split_to_word_tokens(
      const std::vector<int64_t>& tokens, const std::string& language) const;
  /// `Tokenizer.non_speech_tokens`: symbols and speaker-tag punctuation that
  /// `suppress_tokens="-1"` suppresses, sorted.
  std::vector<int64_t> non_speech_tokens() const;

 private:
  std::vector<std::string> vocabulary_; ///< each token's bytes (special tokens: their names)
  std::unordered_map<std::string, int64_t> ranks_;
  int64_t eot_ = 0;
  int64_t num_languages_ = 0;
};

} // namespace rotary_attention::whisper
