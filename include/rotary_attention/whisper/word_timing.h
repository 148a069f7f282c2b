#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "rotary_attention/whisper/model.h"
#include "rotary_attention/whisper/transcribe.h"

namespace rotary_attention::whisper {

class Tokenizer; // tokenizer.h

/// A word of the text aligned to the audio (`whisper.timing.WordTiming`):
/// seconds from the window's start.
struct WordTiming {
  std::string word;
  std::vector<int64_t> tokens;
  double start = 0, end = 0;
  double probability = 0;
};

/// `whisper.timing.median_filter`: a median of `width` (odd) values along the
/// last dimension, the edges reflected; returned as is when that dimension
/// has no more than width / 2 values.
at::Tensor median_filter(const at::Tensor& x, int64_t width);

/// `whisper.timing.dtw_cpu`: the cheapest monotonic path from the top left to
/// the bottom right of the cost matrix `x` (N, M), as its (text indices, time
/// indices), with Whisper's float32 costs and its tie-breaking (a diagonal
/// step only when strictly cheaper, then a step down, else a step right).
std::pair<std::vector<int64_t>, std::vector<int64_t>> dtw(const at::Tensor& x);

/// `whisper.timing.find_alignment`: the words of `text_tokens` and their
/// times in a window, from the decoder's cross-attention over the window's
/// `audio_features` (1, n_audio_ctx, n_audio_state) at the model's alignment
/// heads (softmax over the `num_frames` / 2 used audio positions, normalised
/// over tokens, median filter, mean over heads, DTW), and each word's mean
/// token probability. `language` splits words (on spaces, or on Unicode
/// characters for languages written without them).
std::vector<WordTiming> find_alignment(
    Whisper& model,
    const Tokenizer& tokenizer,
    const std::string& language,
    const std::string& task,
    const std::vector<int64_t>& text_tokens,
    const at::Tensor& audio_features,
    int64_t num_frames,
    int64_t median_filter_width = 7,
    double qk_scale = 1.0);

/// `whisper.timing.merge_punctuations`: a word made of a mark in `prepended`
/// joins the word after it; a word in `appended` joins the word before it.
void merge_punctuations(
    std::vector<WordTiming>& alignment, const std::string& prepended, const std::string& appended);

/// `whisper.timing.add_word_timestamps`: each segment of one window gets its
/// words (times rounded to 10 ms, long words at pauses and sentence ends
/// capped at twice the median word duration), and its start and end move to
/// its first and last word's unless those look too long. `last_speech_end`
/// is the end of the speech before (seconds); returns it moved over this
/// window's segments (whisper's caller keeps its own, faster-whisper's takes
/// this one).
double add_word_timestamps(
    std::vector<Segment>& segments,
    Whisper& model,
    const Tokenizer& tokenizer,
    const std::string& language,
    const std::string& task,
    const at::Tensor& audio_features,
    int64_t num_frames,
    const std::string& prepend_punctuations,
    const std::string& append_punctuations,
    double last_speech_end);

} // namespace rotary_attention::whisper
