// Which cross-attention heads word timestamps read: openai's choice for its
// released models, Whisper's default otherwise, or the user's.
#include "rotary_attention/whisper/alignment_heads.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <sstream>

#include "rotary_attention/whisper/model.h"

namespace rotary_attention::whisper {

namespace {

struct ReleasedModel {
  const char* name;
  int64_t n_mels, n_vocab, n_audio_layer, n_text_layer, n_text_state, n_text_head;
  /// The mask's true entries, as indices into the (layer, head) row-major mask
  /// that openai-whisper's `_ALIGNMENT_HEADS` dump decodes to.
  std::vector<int64_t> heads;
};

const std::vector<ReleasedModel>& released_models() {
  static const std::vector<ReleasedModel> models{
      {"tiny.en", 80, 51864, 4, 4, 384, 6, {6, 12, 17, 18, 19, 20, 21, 22}},
      {"tiny", 80, 51865, 4, 4, 384, 6, {14, 18, 20, 21, 22, 23}},
      {"base.en", 80, 51864, 6, 6, 512, 8, {27, 39, 41, 45, 47}},
      {"base", 80, 51865, 6, 6, 512, 8, {25, 34, 35, 39, 41, 42, 44, 46}},
      {"small.en",
       80,
       51864,
       12,
       12,
       768,
       12,
       {78, 84, 87, 92, 98, 101, 103, 108, 112, 116, 118, 120, 121, 122, 123, 126, 131, 134, 136}},
      {"small", 80, 51865, 12, 12, 768, 12, {63, 69, 96, 100, 103, 104, 108, 115, 117, 125}},
      {"medium.en",
       80,
       51864,
       24,
       24,
       1024,
       16,
       {180, 225, 236, 238, 244, 256, 260, 265, 284, 286, 295, 298, 303, 320, 323, 329, 334, 348}},
      {"medium", 80, 51865, 24, 24, 1024, 16, {223, 244, 255, 257, 320, 372}},
      {"large-v1", 80, 51865, 32, 32, 1280, 20, {199, 222, 224, 237, 447, 451, 457, 462, 475}},
      {"large-v2", 80, 51865, 32, 32, 1280, 20, {212, 277, 331, 332, 333, 355, 356, 364,
                                                 371, 379, 391, 422, 423, 443, 449, 452,
                                                 465, 467, 473, 505, 521, 532, 555}},
      {"large-v3",
       128,
       51866,
       32,
       32,
       1280,
       20,
       {140, 217, 258, 272, 321, 354, 391, 424, 481, 506}},
      {"large", 128, 51866, 32, 32, 1280, 20, {140, 217, 258, 272, 321, 354, 391, 424, 481, 506}},
      {"large-v3-turbo", 128, 51866, 32, 4, 1280, 20, {44, 51, 63, 66, 71, 74}},
      {"turbo", 128, 51866, 32, 4, 1280, 20, {44, 51, 63, 66, 71, 74}},
  };
  return models;
}

bool has_dims(const ReleasedModel& m, const ModelDimensions& d) {
  return m.n_mels == d.n_mels && m.n_vocab == d.n_vocab && m.n_audio_layer == d.n_audio_layer &&
         m.n_text_layer == d.n_text_layer && m.n_text_state == d.n_text_state &&
         m.n_text_head == d.n_text_head;
}

} // namespace

AlignmentHeads default_alignment_heads(const ModelDimensions& dims) {
  AlignmentHeads heads;
  for (int64_t layer = dims.n_text_layer / 2; layer < dims.n_text_layer; ++layer) {
    for (int64_t head = 0; head < dims.n_text_head; ++head) {
      heads.emplace_back(layer, head);
    }
  }
  return heads;
}

AlignmentHeads openai_alignment_heads(const std::string& model_name, const ModelDimensions* dims) {
  std::string names;
  for (const auto& m : released_models()) {
    names += std::string(names.empty() ? "" : ", ") + m.name;
    if (model_name != m.name) {
      continue;
    }
    TORCH_CHECK(
        dims == nullptr || has_dims(m, *dims),
        "alignment heads: openai's ",
        m.name,
        " has n_mels=",
        m.n_mels,
        ", n_vocab=",
        m.n_vocab,
        ", n_text_layer=",
        m.n_text_layer,
        ", n_text_head=",
        m.n_text_head,
        "; this model has n_mels=",
        dims->n_mels,
        ", n_vocab=",
        dims->n_vocab,
        ", n_text_layer=",
        dims->n_text_layer,
        ", n_text_head=",
        dims->n_text_head);
    AlignmentHeads heads;
    for (const int64_t index : m.heads) {
      heads.emplace_back(index / m.n_text_head, index % m.n_text_head);
    }
    return heads;
  }
  TORCH_CHECK(
      false, "alignment heads: no openai model is named \"", model_name, "\" (", names, ")");
}

std::optional<std::string> openai_model_with_dims(const ModelDimensions& dims) {
  std::optional<std::string> found;
  std::vector<int64_t> found_heads;
  for (const auto& m : released_models()) {
    if (!has_dims(m, dims)) {
      continue;
    }
    if (found && m.heads != found_heads) {
      return std::nullopt; // two releases with these dims and different heads
    }
    if (!found) {
      found = m.name;
      found_heads = m.heads;
    }
  }
  return found;
}

AlignmentHeads checked_alignment_heads(AlignmentHeads heads, const ModelDimensions& dims) {
  for (const auto& [layer, head] : heads) {
    TORCH_CHECK(
        layer >= 0 && layer < dims.n_text_layer && head >= 0 && head < dims.n_text_head,
        "alignment heads: (layer ",
        layer,
        ", head ",
        head,
        ") is outside the decoder's ",
        dims.n_text_layer,
        " layers of ",
        dims.n_text_head,
        " heads");
  }
  std::sort(heads.begin(), heads.end());
  TORCH_CHECK(
      std::adjacent_find(heads.begin(), heads.end()) == heads.end(),
      "alignment heads: a (layer, head) pair is given twice");
  return heads;
}

AlignmentHeads parse_alignment_heads(const std::string& text, const ModelDimensions& dims) {
  if (text.find(',') == std::string::npos) {
    return openai_alignment_heads(text, &dims);
  }
  AlignmentHeads heads;
  std::istringstream pairs(text);
  std::string pair;
  while (std::getline(pairs, pair, ';')) {
    std::istringstream numbers(pair);
    int64_t layer = -1, head = -1;
    char comma = 0;
    numbers >> layer >> comma >> head;
    TORCH_CHECK(
        numbers && comma == ',' && (numbers >> std::ws).eof(),
        "alignment heads: expected \"layer,head;layer,head;...\" or one of openai's model "
        "names, got \"",
        text,
        "\"");
    heads.emplace_back(layer, head);
  }
  return checked_alignment_heads(std::move(heads), dims);
}

} // namespace rotary_attention::whisper
