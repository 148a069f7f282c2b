#include <catch2/catch.hpp>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include "rotary_attention/rotary_attention.h"

namespace ra = rotary_attention;

namespace {

// The original rotate_queries_or_keys, written with ATen ops.
torch::Tensor original_rotate(const torch::Tensor& x, const torch::Tensor& inv_freq) {
  auto t = torch::arange(x.size(1), torch::TensorOptions().device(x.device()));
  auto sinusoid = torch::einsum("i , j -> i j", {t, inv_freq});
  auto sin = sinusoid.sin().index(
      {torch::indexing::None,
       torch::indexing::Slice(),
       torch::indexing::None,
       torch::indexing::Slice()});
  auto cos = sinusoid.cos().index(
      {torch::indexing::None,
       torch::indexing::Slice(),
       torch::indexing::None,
       torch::indexing::Slice()});
  using torch::indexing::Slice;
  auto x1 = x.index({"...", Slice(0, torch::indexing::None, 2)});
  auto x2 = x.index({"...", Slice(1, torch::indexing::None, 2)});
  return torch::cat({x1 * cos - x2 * sin, x1 * sin + x2 * cos}, -1);
}

// The rotation written independently of the kernels, in fp64: pair j of token
// (b, t) turns by angle float(positions[b, t]) * inv_freq[j] (rounded in
// inv_freq's dtype, as the operator documents); the layout says where pairs
// are read from and written to; features past rotary_dim are copied.
torch::Tensor formula_rotate(
    const torch::Tensor& x,
    const torch::Tensor& inv_freq,
    const torch::Tensor& positions, // (B, T) int64, the offset included
    const std::string& layout,
    int64_t rotary_dim) {
  using torch::indexing::Slice;
  const int64_t half = rotary_dim / 2;
  auto angle = positions.to(inv_freq.scalar_type()).unsqueeze(-1) * inv_freq; // (B, T, half)
  auto cos = angle.to(torch::kDouble).cos().unsqueeze(2);
  auto sin = angle.to(torch::kDouble).sin().unsqueeze(2);
  auto xd = x.to(torch::kDouble);
  auto rot = xd.narrow(3, 0, rotary_dim);
  auto tail = xd.narrow(3, rotary_dim, x.size(3) - rotary_dim);
  torch::Tensor x1, x2;
  if (layout == "half") {
    x1 = rot.narrow(3, 0, half);
    x2 = rot.narrow(3, half, half);
  } else {
    x1 = rot.index({"...", Slice(0, torch::indexing::None, 2)});
    x2 = rot.index({"...", Slice(1, torch::indexing::None, 2)});
  }
  auto o1 = x1 * cos - x2 * sin;
  auto o2 = x1 * sin + x2 * cos;
  auto out =
      layout == "interleaved" ? torch::stack({o1, o2}, -1).flatten(-2) : torch::cat({o1, o2}, -1);
  return torch::cat({out, tail}, -1);
}

torch::Tensor inv_freq_for(int64_t dim) {
  return ra::RotaryEmbedding(dim)->inv_freq.clone();
}

} // namespace

TEST_CASE("the operator is registered by linking the library", "[op]") {
  auto schema = c10::Dispatcher::singleton().findSchema({"rotary_attention::rotary", ""});
  REQUIRE(schema.has_value());
  auto backward =
      c10::Dispatcher::singleton().findSchema({"rotary_attention::rotary_backward", ""});
  REQUIRE(backward.has_value());
}

TEST_CASE("rotary equals the original rotate_queries_or_keys in fp32", "[op]") {
  torch::manual_seed(0);
  for (auto shape : std::vector<std::vector<int64_t>>{{2, 7, 3, 16}, {1, 1, 1, 2}, {3, 33, 2, 6}}) {
    auto x = torch::randn(shape);
    auto f = inv_freq_for(shape[3]);
    auto got = ra::rotary(x, f);
    auto want = original_rotate(x, f);
    CAPTURE(shape);
    REQUIRE(got.sizes() == want.sizes());
    REQUIRE(got.dtype() == torch::kFloat);
    REQUIRE(torch::allclose(got, want, 1e-6, 1e-6));
  }
}

TEST_CASE("rotary handles strided input, fp64 and half types", "[op]") {
  torch::manual_seed(1);
  auto base = torch::randn({2, 4, 5, 12});
  auto x = base.transpose(1, 2); // (2, 5, 4, 12), non-contiguous
  auto f = inv_freq_for(12);
  REQUIRE(torch::allclose(ra::rotary(x, f), original_rotate(x, f), 1e-6, 1e-6));

  auto xd = x.to(torch::kDouble);
  auto fd = f.to(torch::kDouble);
  REQUIRE(ra::rotary(xd, fd).dtype() == torch::kDouble);
  REQUIRE(torch::allclose(ra::rotary(xd, fd), original_rotate(xd, fd), 1e-12, 1e-12));

  for (auto dt : {torch::kHalf, torch::kBFloat16}) {
    auto xh = x.to(dt);
    auto got = ra::rotary(xh, f);
    REQUIRE(got.dtype() == dt);
    // fp32 math, one rounding at the end.
    auto want = original_rotate(xh.to(torch::kFloat), f).to(dt);
    REQUIRE(torch::allclose(got.to(torch::kFloat), want.to(torch::kFloat), 0, 0));
  }
}

TEST_CASE(
    "rotary autograd: backward is the inverse rotation, double backward works", "[op][autograd]") {
  torch::manual_seed(2);
  auto x = torch::randn({2, 5, 3, 8}, torch::kDouble).requires_grad_();
  auto f = inv_freq_for(8).to(torch::kDouble);
  auto g = torch::randn({2, 5, 3, 8}, torch::kDouble);

  auto y = ra::rotary(x, f);
  auto gx = torch::autograd::grad({y}, {x}, {g}, /*retain_graph=*/true, /*create_graph=*/true)[0];
  auto x_ref = x.detach().clone().requires_grad_();
  auto gx_ref = torch::autograd::grad({original_rotate(x_ref, f)}, {x_ref}, {g})[0];
  REQUIRE(torch::allclose(gx, gx_ref, 1e-12, 1e-12));
  // The rotation is orthogonal: backward(forward(x)) == x.
  REQUIRE(
      torch::allclose(ra::rotary_backward(ra::rotary(x.detach(), f), f), x.detach(), 1e-12, 1e-12));

  // Second order: d/dx <grad_x(g), h> = 0 (linear), d/dg <grad_x(g), h> = rotary(h).
  auto gg = g.clone().requires_grad_();
  auto gx2 = torch::autograd::grad({ra::rotary(x, f)}, {x}, {gg}, true, true)[0];
  auto h = torch::randn_like(g);
  auto d_gg = torch::autograd::grad({gx2}, {gg}, {h})[0];
  REQUIRE(torch::allclose(d_gg, ra::rotary(h, f), 1e-12, 1e-12));
}

TEST_CASE("rotary positions, offset, layouts and partial rotary", "[op]") {
  torch::manual_seed(3);
  auto x = torch::randn({2, 6, 2, 8});
  auto f = inv_freq_for(8);
  // fp32 cos/sin and products against the fp64 formula: a few fp32 ulps of |x|.
  const double tol = 1e-5;
  // offset 3 == positions 3..8, and both are the formula at 3..8.
  auto pos = torch::arange(3, 9);
  auto at_3 = formula_rotate(x, f, pos.expand({2, 6}), "interleaved_to_half", 8);
  REQUIRE(torch::equal(ra::rotary(x, f, std::nullopt, 3), ra::rotary(x, f, pos)));
  REQUIRE(torch::allclose(ra::rotary(x, f, std::nullopt, 3).to(torch::kDouble), at_3, tol, tol));
  REQUIRE_FALSE(torch::allclose(ra::rotary(x, f).to(torch::kDouble), at_3, tol, tol));
  // (B, T) positions: batch 1 at positions 0..5 equals the default.
  auto pos2 = torch::stack({torch::arange(10, 16), torch::arange(0, 6)});
  auto got = ra::rotary(x, f, pos2);
  REQUIRE(torch::equal(got.select(0, 1), ra::rotary(x, f).select(0, 1)));
  REQUIRE(
      torch::allclose(
          got.to(torch::kDouble), formula_rotate(x, f, pos2, "interleaved_to_half", 8), tol, tol));
  // Every layout is the formula (offset on top of the positions), and is undone by rotary_backward.
  for (const char* layout : {"interleaved_to_half", "interleaved", "half"}) {
    CAPTURE(layout);
    auto y = ra::rotary(x, f, pos2, 5, layout);
    REQUIRE(
        torch::allclose(y.to(torch::kDouble), formula_rotate(x, f, pos2 + 5, layout, 8), tol, tol));
    REQUIRE(torch::allclose(ra::rotary_backward(y, f, pos2, 5, layout), x, 1e-5, 1e-5));
    // Partial rotary: the first 4 features rotate, the tail is copied.
    auto f4 = inv_freq_for(4);
    auto part = ra::rotary(x, f4, pos2, 0, layout, 4);
    REQUIRE(torch::equal(part.narrow(3, 4, 4), x.narrow(3, 4, 4)));
    REQUIRE(
        torch::allclose(part.to(torch::kDouble), formula_rotate(x, f4, pos2, layout, 4), tol, tol));
  }
}

TEST_CASE("rotary rejects bad input with clear errors", "[op][errors]") {
  auto f = inv_freq_for(8);
  REQUIRE_THROWS_WITH(ra::rotary(torch::randn({2, 3, 8}), f), Catch::Contains("(B, T, H, D)"));
  REQUIRE_THROWS_WITH(ra::rotary(torch::randn({1, 2, 1, 7}), f), Catch::Contains("even"));
  REQUIRE_THROWS_WITH(
      ra::rotary(torch::randn({1, 2, 1, 8}), inv_freq_for(4)),
      Catch::Contains("inv_freq must have"));
  REQUIRE_THROWS_WITH(
      ra::rotary(torch::ones({1, 2, 1, 8}, torch::kLong), f), Catch::Contains("float32"));
  REQUIRE_THROWS_WITH(
      ra::rotary(torch::randn({1, 2, 1, 8}), f, std::nullopt, 0, "gptj"),
      Catch::Contains("layout"));
  REQUIRE_THROWS_WITH(
      ra::rotary(torch::randn({1, 2, 1, 8}), f, torch::arange(3)), Catch::Contains("positions"));
  REQUIRE_THROWS_WITH(
      ra::rotary(torch::randn({1, 2, 1, 8}), f.clone().requires_grad_()),
      Catch::Contains("must not require grad"));
  auto empty = ra::rotary(torch::randn({0, 4, 2, 8}), f);
  REQUIRE(empty.sizes() == torch::IntArrayRef({0, 4, 2, 8}));
}

TEST_CASE("rotary_ rotates in place and rotary_qk rotates q and k together", "[op]") {
  torch::manual_seed(4);
  auto f = inv_freq_for(8);
  for (const char* layout : {"interleaved_to_half", "interleaved", "half"}) {
    auto x = torch::randn({2, 3, 5, 8}).transpose(1, 2); // strided
    const auto want = ra::rotary(x, f, std::nullopt, 2, layout);
    auto& same = ra::rotary_(x, f, std::nullopt, 2, layout);
    REQUIRE(same.is_same(x));
    REQUIRE(torch::equal(x, want));
  }
  auto needs_grad = torch::randn({1, 2, 1, 8}, torch::requires_grad());
  REQUIRE_THROWS_WITH(ra::rotary_(needs_grad, f), Catch::Contains("for inference"));

  auto q = torch::randn({2, 4, 6, 8}), k = torch::randn({2, 4, 2, 8});
  auto [rq, rk] = ra::rotary_qk(q, k, f, torch::arange(4) * 3);
  REQUIRE(torch::equal(rq, ra::rotary(q, f, torch::arange(4) * 3)));
  REQUIRE(torch::equal(rk, ra::rotary(k, f, torch::arange(4) * 3)));
}
