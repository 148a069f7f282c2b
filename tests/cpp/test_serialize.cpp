#include <catch2/catch.hpp>

#include <torch/torch.h>

#include <filesystem>

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
