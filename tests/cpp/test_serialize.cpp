#include <catch2/catch.hpp>

#include <torch/torch.h>

#include <filesystem>
#include <fstream>

#include "rotary_attention/rotary_attention.h"

namespace ra = rotary_attention;

namespace {
std::string temp_path(const std::string& name) {
  return (std::filesystem::path(RA_TEST_DATA_DIR) / name).string();
}
} // namespace

TEST_CASE("state dict round trip through a torch.save-format file", "[serialize]") {
  torch::manual_seed(0);
  ra::MultiHeadAttention a(ra::MultiHeadAttentionOptions(32, 4));
  a->rotation_layer->reset_parameters();
  ra::MultiHeadAttention b(ra::MultiHeadAttentionOptions(32, 4));
  const auto path = temp_path("roundtrip.pt");
  ra::save_state_dict(*a, path);
  ra::load_state_dict(*b, path);
  const auto sa = ra::state_dict(*a);
  for (const auto& [k, v] : ra::state_dict(*b)) {
    CAPTURE(k);
    REQUIRE(torch::equal(v, sa.at(k)));
  }
  auto x = torch::randn({2, 3, 32});
  REQUIRE(torch::equal(std::get<0>(a(x)), std::get<0>(b(x))));
}

TEST_CASE(
    "strict loading names the bad key and leaves the module unchanged", "[serialize][errors]") {
  ra::MultiHeadAttention m(ra::MultiHeadAttentionOptions(32, 4));
  const auto before = m->query->weight.clone();
  auto good = ra::state_dict(*ra::MultiHeadAttention(ra::MultiHeadAttentionOptions(32, 4)));

  auto missing = good;
  missing.erase("key.weight");
  REQUIRE_THROWS_WITH(ra::load_state_dict(*m, missing), Catch::Contains("\"key.weight\""));
  REQUIRE(torch::equal(m->query->weight, before));

  auto unexpected = good;
  unexpected["key.bias"] = torch::zeros({32});
  REQUIRE_THROWS_WITH(ra::load_state_dict(*m, unexpected), Catch::Contains("\"key.bias\""));
  REQUIRE(torch::equal(m->query->weight, before));

  auto wrong_shape = good;
  wrong_shape["temperature"] = torch::ones({2});
  REQUIRE_THROWS_WITH(ra::load_state_dict(*m, wrong_shape), Catch::Contains("\"temperature\""));
  REQUIRE(torch::equal(m->query->weight, before));

  // Non-strict reports instead of failing.
  auto result = ra::load_state_dict(*m, missing, /*strict=*/false);
  REQUIRE(result.missing_keys == std::vector<std::string>{"key.weight"});
  REQUIRE(torch::equal(m->query->weight, good.at("query.weight")));

  REQUIRE_THROWS_WITH(
      ra::load_state_dict(*m, temp_path("does-not-exist.pt")), Catch::Contains("cannot open"));
}

TEST_CASE("one layer out of a whole model's checkpoint, by prefix", "[serialize]") {
  torch::manual_seed(3);
  ra::MultiHeadAttention first(ra::MultiHeadAttentionOptions(32, 4));
  ra::MultiHeadAttention second(ra::MultiHeadAttentionOptions(32, 4));
  second->rotation_layer->reset_parameters();
  // A model's checkpoint: two layers under "blocks.0." and "blocks.1.", plus an unrelated key.
  std::vector<std::pair<std::string, torch::Tensor>> model;
  for (const auto& [name, layer] :
       {std::pair{"blocks.0.", &first}, std::pair{"blocks.1.", &second}}) {
    for (const auto& [key, value] : ra::state_dict(**layer)) {
      model.emplace_back(name + key, value);
    }
  }
  model.emplace_back("head.weight", torch::randn({10, 32}));
  const auto path = temp_path("model.pt");
  ra::save_tensors(model, path);

  ra::MultiHeadAttention layer(ra::MultiHeadAttentionOptions(32, 4));
  ra::load_state_dict(*layer, path, "blocks.1.");
  const auto want = ra::state_dict(*second);
  for (const auto& [key, value] : ra::state_dict(*layer)) {
    CAPTURE(key);
    REQUIRE(torch::equal(value, want.at(key)));
  }
  const auto before = layer->query->weight.clone();
  REQUIRE_THROWS_WITH(ra::load_state_dict(*layer, path, "blocks.9."), Catch::Contains("blocks.9."));
  REQUIRE_THROWS_WITH(
      ra::load_state_dict(*layer, path, "blocks."), Catch::Contains("unexpected keys"));
  REQUIRE(torch::equal(layer->query->weight, before));
}

TEST_CASE("state dict round trip through safetensors, the format told by content", "[serialize]") {
  torch::manual_seed(1);
  ra::MultiHeadAttention a(ra::MultiHeadAttentionOptions(32, 4));
  a->rotation_layer->reset_parameters();
  a->to(torch::kBFloat16);
  const auto by_extension = temp_path("roundtrip.safetensors");
  const auto explicit_format = temp_path("safetensors_named.pt");
  ra::save_state_dict(*a, by_extension);
  ra::save_state_dict(*a, explicit_format, ra::WeightFileFormat::safetensors);
  for (const auto& path : {by_extension, explicit_format}) {
    CAPTURE(path);
    std::ifstream in(path, std::ios::binary);
    char head[9];
    in.read(head, 9);
    REQUIRE(head[8] == '{'); // safetensors: an 8-byte length, then the JSON header
    ra::MultiHeadAttention b(ra::MultiHeadAttentionOptions(32, 4));
    b->to(torch::kBFloat16);
    ra::load_state_dict(*b, path);
    const auto sa = ra::state_dict(*a);
    for (const auto& [k, v] : ra::state_dict(*b)) {
      CAPTURE(k);
      REQUIRE(v.scalar_type() == torch::kBFloat16);
      REQUIRE(torch::equal(v, sa.at(k)));
    }
  }
  // A torch.save file named .safetensors is still read as what it holds.
  const auto zip_named = temp_path("zip_named.safetensors");
  ra::save_state_dict(*a, zip_named, ra::WeightFileFormat::torch_save);
  REQUIRE(ra::load_tensors(zip_named).size() == ra::state_dict(*a).size());
}

TEST_CASE("safetensors: every dtype a torch tensor can take there round-trips", "[serialize]") {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (auto dtype :
       {torch::kFloat,
        torch::kDouble,
        torch::kHalf,
        torch::kBFloat16,
        torch::kLong,
        torch::kInt,
        torch::kShort,
        torch::kChar,
        torch::kByte,
        torch::kBool}) {
    tensors.emplace_back(
        std::string("t_") + c10::toString(dtype), (torch::randn({3, 5}) * 10).to(dtype));
  }
  tensors.emplace_back("empty", torch::zeros({0, 4}));
  tensors.emplace_back("scalar", torch::tensor(2.5));
  tensors.emplace_back("strided", torch::randn({4, 6}).t()); // written contiguous
  const auto path = temp_path("dtypes.safetensors");
  ra::save_tensors(tensors, path);
  const auto read = ra::load_tensors(path);
  REQUIRE(read.size() == tensors.size());
  for (const auto& [name, t] : tensors) {
    CAPTURE(name);
    REQUIRE(read.at(name).scalar_type() == t.scalar_type());
    REQUIRE(torch::equal(read.at(name), t));
  }
  REQUIRE_THROWS_WITH(
      ra::save_tensors({{"a", torch::zeros(1)}, {"a", torch::ones(1)}}, path),
      Catch::Contains("\"a\" is given twice"));
  REQUIRE_THROWS_WITH(
      ra::save_tensors({{"c", torch::zeros(1, torch::kComplexDouble)}}, path),
      Catch::Contains("safetensors cannot hold"));
}
