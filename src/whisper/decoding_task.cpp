// whisper.decoding.DecodingTask.run over a DecoderInference.
#include <ATen/ATen.h>
#include <c10/util/irange.h>

#include <cmath>
#include <limits>
#include <memory>

#include "logit_filters.h"
#include "python_tail.h"
#include "rotary_attention/whisper/audio.h"
#include "rotary_attention/whisper/decoding.h"
#include "rotary_attention/whisper/transcribe.h"
#include "token_search.h"

namespace rotary_attention::whisper {

void DecoderInference::check_positions(const std::vector<int64_t>& positions, int64_t new_tokens) {
  for (const int64_t p : positions) {
    TORCH_CHECK(
        p >= 0 && p < new_tokens,
        "logits_at: position ",
        p,
        " is not one of the ",
        new_tokens,
        " new tokens");
  }
}

at::Tensor DecoderInference::logits_at(
    const at::Tensor& tokens,
    const at::Tensor& audio_features,
    const std::vector<int64_t>& positions) {
  check_positions(positions, tokens.size(-1));
  return logits(tokens, audio_features).index_select(1, at::tensor(positions, at::kLong));
}

namespace {

using detail::python_tail;
using detail::Rows;

at::Tensor as_tensor(const Rows& rows, size_t from) {
  const int64_t width = static_cast<int64_t>(rows.front().size() - from);
  auto out = at::empty({static_cast<int64_t>(rows.size()), width}, at::kLong);
  int64_t* data = out.data_ptr<int64_t>();
  for (size_t r = 0; r < rows.size(); ++r) {
    std::copy(rows[r].begin() + from, rows[r].end(), data + r * width);
  }
  return out;
}

void check_options(const DecodingOptions& o) {
  TORCH_CHECK(
      o.task == "transcribe" || o.task == "translate" || o.task == "lang_id",
      "decode: task must be \"transcribe\", \"translate\" or \"lang_id\", got \"",
      o.task,
      "\"");
  TORCH_CHECK(
      std::isfinite(o.temperature) && o.temperature >= 0,
      "decode: temperature must be >= 0, got ",
      o.temperature);
  TORCH_CHECK(
      !(o.beam_size.has_value() && o.best_of.has_value()),
      "decode: beam_size and best_of can't be given together");
  TORCH_CHECK(
      o.temperature != 0.0 || !o.best_of.has_value(),
      "decode: best_of with greedy sampling (T=0) is not compatible");
  TORCH_CHECK(!o.best_of.has_value() || *o.best_of > 0, "decode: best_of must be positive");
  TORCH_CHECK(
      !o.patience.has_value() || o.beam_size.has_value(),
      "decode: patience requires beam_size to be given");
  TORCH_CHECK(
      !o.length_penalty.has_value() || (*o.length_penalty >= 0 && *o.length_penalty <= 1),
      "decode: length_penalty (alpha) should be a value between 0 and 1");
  TORCH_CHECK(!o.beam_size.has_value() || *o.beam_size > 0, "decode: beam_size must be positive");
  TORCH_CHECK(
      !o.sample_len.has_value() || *o.sample_len > 0, "decode: sample_len must be positive");
}

// whisper.decoding.DecodingTask: the initial tokens and logit filters made
// once from the options, then language detection, the main loop over a token
// search, and the ranker.
class DecodingTask {
 public:
  DecodingTask(
      DecoderInference& inference,
      const ModelDimensions& dims,
      const Tokenizer& tokenizer,
      const DecodingOptions& options)
      : inference_(inference), dims_(dims), tokenizer_(tokenizer), options_(options) {
    check_options(options);
    TORCH_CHECK(
        tokenizer.n_vocab() == dims.n_vocab,
        "decode: the tokenizer's ",
        tokenizer.n_vocab(),
        " tokens do not fit the model's n_vocab=",
        dims.n_vocab);
    multilingual_ = dims.is_multilingual();
    // Whisper's get_tokenizer: a language and a task for multilingual models only.
    std::optional<std::string> language, task;
    if (options.language.has_value()) {
      language = language_code(*options.language);
      TORCH_CHECK(language.has_value(), "decode: unsupported language: ", *options.language);
    }
    if (multilingual_) {
      language = language.value_or("en");
      // (lang_id stops after the detection: its start tokens are transcribe's.)
      task = options.task == "lang_id" ? "transcribe" : options.task;
    } else {
      language.reset();
    }
    detect_ = !options.language.has_value() || options.task == "lang_id";
    TORCH_CHECK(
        !detect_ || multilingual_,
        "decode: this model doesn't have language tokens so it can't perform lang id: give a "
        "language");
    n_group_ = options.beam_size.value_or(options.best_of.value_or(1));
    sample_len_ = options.sample_len.value_or(dims.n_text_ctx / 2);
    initial_tokens(language, task);
    logit_filters();
  }

  std::vector<DecodingResult> run(const at::Tensor& features) {
    const int64_t n_audio = features.size(0);
    Rows tokens(n_audio, initial_);
    std::vector<std::string> languages(n_audio, options_.language.value_or(""));
    std::vector<std::map<std::string, double>> language_probs(n_audio);
    if (detect_) {
      detect_language(features, tokens, languages, language_probs);
    }
    std::vector<DecodingResult> results(n_audio);
    for (int64_t i = 0; i < n_audio; ++i) {
      results[i].language = languages[i];
      results[i].language_probs = language_probs[i];
      results[i].temperature = options_.temperature;
    }
    if (options_.task == "lang_id") {
      return results;
    }
    // Each audio's rows: one, a beam, or best_of samples.
    Rows rows;
    for (const auto& t : tokens) {
      for (int64_t g = 0; g < n_group_; ++g) {
        rows.push_back(t);
      }
    }
    std::unique_ptr<detail::TokenSearch> search;
    if (options_.beam_size.has_value()) {
      search = std::make_unique<detail::BeamSearch>(
          *options_.beam_size, tokenizer_.eot(), inference_, options_.patience);
    } else {
      search = std::make_unique<detail::GreedySearch>(
          tokenizer_.eot(),
          n_group_,
          options_.temperature,
          options_.generator,
          options_.reproduce_whisper_samples);
    }
    std::vector<float> sum_logprobs(rows.size(), 0.0f);
    std::vector<double> no_speech(rows.size(), std::nan(""));
    main_loop(features, *search, rows, sum_logprobs, no_speech);
    const auto candidates = search->finalize(rows, sum_logprobs);
    for (int64_t i = 0; i < n_audio; ++i) {
      rank(candidates, i, results[i]);
      results[i].no_speech_prob = no_speech[i * n_group_];
    }
    return results;
  }

 private:
  void initial_tokens(
      const std::optional<std::string>& language, const std::optional<std::string>& task) {
    const int64_t n_ctx = dims_.n_text_ctx;
    initial_ = tokenizer_.sot_sequence(language, task);
    if (options_.without_timestamps) {
      initial_.push_back(tokenizer_.no_timestamps());
    }
    if (!options_.prefix.empty()) {
      const auto prefix = python_tail(options_.prefix, n_ctx / 2 - sample_len_);
      initial_.insert(initial_.end(), prefix.begin(), prefix.end());
    }
    if (!options_.prompt.empty()) {
      const auto prompt = python_tail(options_.prompt, n_ctx / 2 - 1);
      std::vector<int64_t> with_prompt{tokenizer_.sot_prev()};
      with_prompt.insert(with_prompt.end(), prompt.begin(), prompt.end());
      with_prompt.insert(with_prompt.end(), initial_.begin(), initial_.end());
      initial_ = std::move(with_prompt);
    }
    for (const int64_t t : initial_) {
      TORCH_CHECK(
          t >= 0 && t < dims_.n_vocab,
          "decode: prompt or prefix token ",
          t,
          " is not in the vocabulary");
    }
    TORCH_CHECK(
        static_cast<int64_t>(initial_.size()) <= n_ctx,
        "decode: the prompt, prefix and start tokens (",
        initial_.size(),
        ") exceed n_text_ctx=",
        n_ctx);
    sample_begin_ = initial_.size();
    sot_index_ = std::find(initial_.begin(), initial_.end(), tokenizer_.sot()) - initial_.begin();
  }

  void logit_filters() {
    if (options_.suppress_blank) {
      filters_.push_back(std::make_unique<detail::SuppressBlank>(tokenizer_, sample_begin_));
    }
    if (!options_.suppress_tokens.empty()) {
      std::vector<int64_t> suppressed;
      bool non_speech = false;
      for (const int64_t t : options_.suppress_tokens) {
        TORCH_CHECK(
            t >= -1,
            "decode: suppress_tokens holds ",
            t,
            "; token ids are >= 0 (-1: the non-speech tokens)");
        if (t == -1) {
          non_speech = true;
        } else {
          suppressed.push_back(t);
        }
      }
      if (non_speech) {
        const auto more = tokenizer_.non_speech_tokens();
        suppressed.insert(suppressed.end(), more.begin(), more.end());
      }
      for (const int64_t t :
           {tokenizer_.transcribe(),
            tokenizer_.translate(),
            tokenizer_.sot(),
            tokenizer_.sot_prev(),
            tokenizer_.sot_lm(),
            tokenizer_.no_speech()}) {
        suppressed.push_back(t);
      }
      std::sort(suppressed.begin(), suppressed.end());
      suppressed.erase(std::unique(suppressed.begin(), suppressed.end()), suppressed.end());
      TORCH_CHECK(
          suppressed.back() < dims_.n_vocab,
          "decode: suppress_tokens holds ",
          suppressed.back(),
          ", not in the vocabulary");
      filters_.push_back(std::make_unique<detail::SuppressTokens>(std::move(suppressed)));
    }
    if (!options_.without_timestamps) {
      std::optional<int64_t> max_initial;
      if (options_.max_initial_timestamp.has_value() && *options_.max_initial_timestamp != 0.0) {
        const double precision = 30.0 / static_cast<double>(dims_.n_audio_ctx);
        max_initial =
            static_cast<int64_t>(std::nearbyint(*options_.max_initial_timestamp / precision));
      }
      filters_.push_back(
          std::make_unique<detail::ApplyTimestampRules>(tokenizer_, sample_begin_, max_initial));
    }
  }

  // detect_language: the likeliest language token after sot, without a cache.
  void detect_language(
      const at::Tensor& features,
      Rows& tokens,
      std::vector<std::string>& languages,
      std::vector<std::map<std::string, double>>& language_probs) {
    const int64_t n_audio = features.size(0);
    inference_.reset();
    const auto sot = at::full({n_audio, 1}, tokenizer_.sot(), at::kLong);
    auto logits = inference_.logits(sot, features).select(1, 0).to(at::kCPU).contiguous();
    inference_.reset();
    auto keep = at::ones({dims_.n_vocab}, at::kBool);
    const auto language_tokens = tokenizer_.all_language_tokens();
    for (const int64_t t : language_tokens) {
      keep[t] = false;
    }
    logits.masked_fill_(keep, -std::numeric_limits<float>::infinity());
    const auto best = at::argmax(logits, -1);
    const auto probs = at::softmax(logits, -1);
    for (int64_t i = 0; i < n_audio; ++i) {
      const int64_t token = best[i].item<int64_t>();
      languages[i] = tokenizer_.language_of_token(token);
      for (const int64_t t : language_tokens) {
        language_probs[i][tokenizer_.language_of_token(t)] = probs[i][t].item<float>();
      }
      if (!options_.language.has_value()) {
        tokens[i][sot_index_ + 1] = token;
      }
    }
  }

  void main_loop(
      const at::Tensor& features,
      detail::TokenSearch& search,
      Rows& rows,
      std::vector<float>& sum_logprobs,
      std::vector<double>& no_speech) {
    inference_.reset();
    try {
      for (int64_t i = 0; i < sample_len_; ++i) {
        // The first step feeds every initial token; later ones the newest only.
        const size_t from = rows.front().size() > sample_begin_ ? rows.front().size() - 1 : 0;
        // The first step: the start of transcript's logits (no speech) and the
        // last token's; later ones: the last token's.
        const auto tokens = as_tensor(rows, from);
        const int64_t last_position = tokens.size(1) - 1;
        auto logits =
            inference_
                .logits_at(
                    tokens,
                    features,
                    i == 0 ? std::vector<int64_t>{static_cast<int64_t>(sot_index_), last_position}
                           : std::vector<int64_t>{last_position})
                .to(at::kCPU);
        if (i == 0) {
          const auto at_sot = at::softmax(logits.select(1, 0), -1);
          for (size_t r = 0; r < rows.size(); ++r) {
            no_speech[r] = at_sot[static_cast<int64_t>(r)][tokenizer_.no_speech()].item<float>();
          }
        }
        auto last = logits.select(1, logits.size(1) - 1).contiguous();
        for (const auto& filter : filters_) {
          filter->apply(last, rows);
        }
        const bool completed = search.update(rows, last, sum_logprobs);
        if (completed || static_cast<int64_t>(rows.front().size()) > dims_.n_text_ctx) {
          break;
        }
      }
    } catch (...) {
      inference_.reset();
      throw;
    }
    inference_.reset();
  }

  // The maximum-likelihood ranker over audio i's candidates: the first best
  // score wins; each candidate from the first sampled token to its first end
  // of text.
  void rank(const detail::Candidates& candidates, int64_t i, DecodingResult& result) const {
    std::vector<std::vector<int64_t>> sampled;
    for (const auto& sequence : candidates.tokens[i]) {
      const size_t end =
          std::find(sequence.begin(), sequence.end(), tokenizer_.eot()) - sequence.begin();
      sampled.emplace_back(
          sequence.begin() + std::min(sample_begin_, end),
          sequence.begin() + std::max(sample_begin_, end));
    }
    size_t selected = 0;
    double best = -std::numeric_limits<double>::infinity();
    for (size_t c = 0; c < sampled.size(); ++c) {
      const double length = static_cast<double>(sampled[c].size());
      const double penalty = options_.length_penalty.has_value()
                                 ? std::pow((5.0 + length) / 6.0, *options_.length_penalty)
                                 : length;
      const double score = candidates.sum_logprobs[i][c] / penalty;
      if (c == 0 || score > best) {
        best = score;
        selected = c;
      }
    }
    result.tokens = sampled[selected];
    result.text = strip(tokenizer_.decode(result.tokens));
    result.avg_logprob =
        candidates.sum_logprobs[i][selected] / static_cast<double>(result.tokens.size() + 1);
    result.compression_ratio = compression_ratio(result.text);
  }

  DecoderInference& inference_;
  const ModelDimensions& dims_;
  const Tokenizer& tokenizer_;
  const DecodingOptions& options_;
  bool multilingual_ = false, detect_ = false;
  int64_t n_group_ = 1, sample_len_ = 0;
  std::vector<int64_t> initial_;
  size_t sample_begin_ = 0, sot_index_ = 0;
  std::vector<std::unique_ptr<detail::LogitFilter>> filters_;
};

} // namespace

std::vector<DecodingResult> decode(
    DecoderInference& inference,
    const ModelDimensions& dims,
    const Tokenizer& tokenizer,
    const at::Tensor& audio_features,
    const DecodingOptions& options) {
  TORCH_CHECK(
      audio_features.dim() == 3 && audio_features.size(0) > 0 &&
          audio_features.size(1) == dims.n_audio_ctx &&
          audio_features.size(2) == dims.n_audio_state,
      "decode: expected audio_features of shape (n_audio, n_audio_ctx=",
      dims.n_audio_ctx,
      ", n_audio_state=",
      dims.n_audio_state,
      "), got shape ",
      audio_features.sizes());
  DecodingTask task(inference, dims, tokenizer, options);
  return task.run(audio_features.contiguous());
}

std::vector<DecodingResult> decode(
    Whisper model,
    const Tokenizer& tokenizer,
    const at::Tensor& mel_or_audio_features,
    const DecodingOptions& options) {
  WhisperInference inference(std::move(model));
  return decode(inference, tokenizer, mel_or_audio_features, options);
}

std::vector<DecodingResult> decode(
    WhisperInference& inference,
    const Tokenizer& tokenizer,
    const at::Tensor& mel_or_audio_features,
    const DecodingOptions& options) {
  Whisper model = inference.model();
  const auto& dims = model->dims;
  TORCH_CHECK(
      mel_or_audio_features.dim() == 3,
      "decode: expected (n_audio, n_mels, frames) log-mel frames or (n_audio, n_audio_ctx, "
      "n_audio_state) "
      "audio features, got shape ",
      mel_or_audio_features.sizes());
  at::NoGradGuard no_grad;
  at::Tensor features = mel_or_audio_features;
  if (!(features.size(1) == dims.n_audio_ctx && features.size(2) == dims.n_audio_state)) {
    features = model->embed_audio(features);
  }
  features = features.to(model->decoder->token_embedding->weight.scalar_type());
  return decode(inference, dims, tokenizer, features, options);
}

} // namespace rotary_attention::whisper
