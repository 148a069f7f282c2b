#include <catch2/catch.hpp>

#include <torch/torch.h>

#include <set>

#include "rotary_attention/rotary_attention.h"

#include <thread>
#include <vector>

namespace ra = rotary_attention;

TEST_CASE("MultiHeadAttention options and state-dict keys are the original's", "[mha]") {
  ra::MultiHeadAttentionOptions o(64, 4);
  REQUIRE(o.dropout_rate() == 0.01);
  REQUIRE_FALSE(o.gradient_checkpointing());
  REQUIRE_FALSE(o.group_norm());
  REQUIRE(o.sdpa());

  ra::MultiHeadAttention mha(o);
  std::set<std::string> keys;
  for (const auto& [k, v] : ra::state_dict(*mha)) {
    keys.insert(k);
  }
  const std::set<std::string> want = {
      "attn_ln.weight",
      "attn_ln.bias",
      "key.weight",
      "out.weight",
      "out.bias",
      "query.weight",
      "query.bias",
      "rotary_emb.inv_freq",
      "rotation_layer.rotation_matrix",
      "temperature",
      "value.weight",
      "value.bias"};
  REQUIRE(keys == want);
  REQUIRE(mha->temperature.item<float>() == Approx(1.0 / 4.0));
  REQUIRE(torch::equal(mha->rotation_layer->rotation_matrix, torch::eye(16)));
}

TEST_CASE("MultiHeadAttention shapes on both paths", "[mha]") {
  torch::manual_seed(0);
  auto x = torch::randn({2, 5, 64});
  auto xa = torch::randn({2, 9, 64});
  for (bool sdpa : {true, false}) {
    ra::MultiHeadAttention mha(ra::MultiHeadAttentionOptions(64, 4).sdpa(sdpa));
    mha->eval();
    auto [out, qk] = mha(x);
    REQUIRE(out.sizes() == x.sizes());
    REQUIRE(qk.defined() == !sdpa);
    if (!sdpa) {
      REQUIRE(qk.sizes() == torch::IntArrayRef({2, 4, 5, 5}));
      REQUIRE(qk.dtype() == torch::kFloat);
      REQUIRE_FALSE(qk.requires_grad());
    }
    auto [out_x, qk_x] = mha(x, xa);
    REQUIRE(out_x.sizes() == x.sizes());
    if (!sdpa) {
      REQUIRE(qk_x.sizes() == torch::IntArrayRef({2, 4, 5, 9}));
    }
  }
}

TEST_CASE("MultiHeadAttention gradients reach the input and every parameter", "[mha]") {
  torch::manual_seed(1);
  ra::MultiHeadAttention mha(ra::MultiHeadAttentionOptions(32, 2).sdpa(false).dropout_rate(0.0));
  auto x = torch::randn({2, 4, 32}, torch::requires_grad());
  auto mask = torch::full({4, 4}, -INFINITY).triu(1);
  auto [out, qk] = mha->forward(x, {}, mask);
  out.sum().backward();
  REQUIRE(x.grad().defined());
  for (const auto& p : mha->named_parameters()) {
    CAPTURE(p.key());
    REQUIRE(p.value().grad().defined());
  }
}

TEST_CASE("MultiHeadAttention gradients equal central finite differences (fp64)", "[mha]") {
  // Independent of autograd: for a random direction v, <grad, v> must equal
  // (L(w + eps v) - L(w - eps v)) / (2 eps). SDPA path (all fp64): eps 1e-6,
  // truncation O(eps^2) and rounding 1e-16 / eps, so 1e-6 relative holds.
  // Explicit path: its softmax runs in fp32 (as the original's qk.float()), so
  // L carries fp32 noise (6e-8 |L|) that the quotient divides by eps: eps 1e-3
  // keeps that near 1e-4 |L|; 2e-3 relative leaves room for the O(eps^2) term.
  torch::manual_seed(11);
  for (bool sdpa : {true, false}) {
    ra::MultiHeadAttention mha(ra::MultiHeadAttentionOptions(16, 2).sdpa(sdpa).dropout_rate(0.0));
    mha->to(torch::kDouble);
    {
      torch::NoGradGuard no_grad;
      auto& R = mha->rotation_layer->rotation_matrix;
      R.add_(torch::randn_like(R) * 0.3); // not orthogonal, so R does not cancel
    }
    auto x = torch::randn({2, 5, 16}, torch::kDouble).requires_grad_();
    auto mask = torch::full({5, 5}, -INFINITY, torch::kDouble).triu(1);
    auto weights = torch::randn({2, 5, 16}, torch::kDouble);
    auto loss = [&] { return (std::get<0>(mha->forward(x, {}, mask)) * weights).sum(); };
    loss().backward();
    std::vector<std::pair<std::string, torch::Tensor>> tensors{{"x", x}};
    for (const auto& p : mha->named_parameters()) {
      tensors.emplace_back(p.key(), p.value());
    }
    for (auto& [name, t] : tensors) {
      CAPTURE(sdpa, name);
      if (sdpa && name == "temperature") {
        REQUIRE_FALSE(t.grad().defined()); // the SDPA path ignores it, as the original does
        continue;
      }
      auto v = torch::randn_like(t);
      const double eps = sdpa ? 1e-6 : 1e-3;
      const double tol = sdpa ? 1e-6 : 2e-3;
      double up, down;
      {
        torch::NoGradGuard no_grad;
        t.add_(v * eps);
        up = loss().item<double>();
        t.sub_(v * (2 * eps));
        down = loss().item<double>();
        t.add_(v * eps);
      }
      const double numeric = (up - down) / (2 * eps);
      const double analytic = (t.grad() * v).sum().item<double>();
      REQUIRE(std::abs(numeric - analytic) <= tol * std::max(1.0, std::abs(analytic)));
    }
  }
}

TEST_CASE("KVCache grows for self-attention and is reused for cross-attention", "[mha][cache]") {
  torch::manual_seed(2);
  ra::MultiHeadAttention self_attn(ra::MultiHeadAttentionOptions(32, 4));
  ra::MultiHeadAttention cross_attn(ra::MultiHeadAttentionOptions(32, 4));
  ra::KVCache cache;
  auto xa = torch::randn({1, 7, 32});
  auto prompt = torch::randn({1, 3, 32});
  self_attn->forward(prompt, {}, torch::zeros({8, 8}), &cache);
  cross_attn->forward(prompt, xa, {}, &cache);
  REQUIRE(cache.size() == 2);
  REQUIRE(cache.length(self_attn.get()) == 3);
  REQUIRE(cache.length(cross_attn.get()) == 7);
  const auto cross_key = cache.find(cross_attn.get())->key_buffer;
  for (int step = 1; step <= 4; ++step) {
    auto token = torch::randn({1, 1, 32});
    self_attn->forward(token, {}, torch::zeros({8, 8}), &cache);
    cross_attn->forward(token, xa, {}, &cache);
    REQUIRE(cache.length(self_attn.get()) == 3 + step);
    REQUIRE(cache.find(cross_attn.get())->key_buffer.is_same(cross_key));
  }
  cache.clear();
  REQUIRE(cache.size() == 0);
}

TEST_CASE("MultiHeadAttention rejects bad input with clear errors", "[mha][errors]") {
  REQUIRE_THROWS_WITH(
      ra::MultiHeadAttention(ra::MultiHeadAttentionOptions(30, 4)), Catch::Contains("divisible"));
  REQUIRE_THROWS_WITH(
      ra::MultiHeadAttention(ra::MultiHeadAttentionOptions(30, 2)), Catch::Contains("even"));
  ra::MultiHeadAttention mha(ra::MultiHeadAttentionOptions(32, 4).sdpa(false));
  REQUIRE_THROWS_WITH(mha(torch::randn({4, 32})), Catch::Contains("(B, T, n_state=32)"));
  REQUIRE_THROWS_WITH(mha(torch::randn({1, 4, 16})), Catch::Contains("(B, T, n_state=32)"));
  REQUIRE_THROWS_WITH(
      mha(torch::randn({1, 4, 32}), torch::randn({1, 4, 8})), Catch::Contains("xa"));
  REQUIRE_THROWS_WITH(
      mha->forward(torch::randn({1, 4, 32}), {}, torch::zeros({4})), Catch::Contains("2-D"));
  // Explicit path, cross-attention with a mask: the original cannot add mask[:T, :T] either.
  REQUIRE_THROWS_WITH(
      mha(torch::randn({1, 4, 32}), torch::randn({1, 6, 32}), torch::zeros({8, 8})),
      Catch::Contains("S != T"));
  ra::MultiHeadAttention gn(ra::MultiHeadAttentionOptions(32, 4).group_norm(true));
  REQUIRE_THROWS_WITH(gn(torch::randn({1, 4, 32})), Catch::Contains("T == n_state"));
  auto [out, qk] = gn(torch::randn({1, 32, 32}));
  REQUIRE(out.sizes() == torch::IntArrayRef({1, 32, 32}));
}

TEST_CASE(
    "RotationLayer: identity at construction, orthogonal after reset_parameters", "[rotation]") {
  ra::RotationLayer r(8);
  auto x = torch::randn({3, 8});
  REQUIRE(torch::equal(r(x), x));
  r->reset_parameters();
  auto R = r->rotation_matrix.detach();
  REQUIRE_FALSE(torch::allclose(R, torch::eye(8)));
  REQUIRE(torch::allclose(R.matmul(R.t()), torch::eye(8), 1e-5, 1e-5));
  REQUIRE_THROWS_WITH(r(torch::randn({3, 7})), Catch::Contains("last dimension 8"));
}

TEST_CASE("modules clone deeply", "[mha]") {
  ra::MultiHeadAttention mha(ra::MultiHeadAttentionOptions(16, 2));
  auto copy = std::dynamic_pointer_cast<ra::MultiHeadAttentionImpl>(mha->clone());
  REQUIRE(copy);
  REQUIRE_FALSE(copy->query->weight.is_same(mha->query->weight));
  REQUIRE(torch::equal(copy->query->weight, mha->query->weight));
}

TEST_CASE("absolute_positions: decoding with a cache equals one causal pass", "[mha][cache]") {
  torch::manual_seed(3);
  for (bool sdpa : {true, false}) {
    ra::MultiHeadAttention mha(
        ra::MultiHeadAttentionOptions(32, 4).sdpa(sdpa).absolute_positions(true).dropout_rate(0.0));
    mha->to(torch::kDouble);
    mha->rotation_layer->reset_parameters();
    auto x = torch::randn({2, 7, 32}, torch::kDouble);
    auto mask = torch::full({8, 8}, -INFINITY, torch::kDouble).triu(1);
    auto full = std::get<0>(mha->forward(x, {}, mask));
    ra::KVCache cache;
    std::vector<torch::Tensor> parts;
    for (auto [start, n] :
         std::vector<std::pair<int64_t, int64_t>>{{0, 3}, {3, 1}, {4, 2}, {6, 1}}) {
      parts.push_back(std::get<0>(mha->forward(x.narrow(1, start, n), {}, mask, &cache)));
    }
    CAPTURE(sdpa);
    REQUIRE(cache.length(mha.get()) == 7);
    REQUIRE(torch::allclose(torch::cat(parts, 1), full, sdpa ? 1e-10 : 2e-6, sdpa ? 1e-10 : 2e-6));

    // The cache holds keys rotated at their absolute positions 0..6, then
    // multiplied by R, written here without the module: a shift by one
    // position (invisible in scores when R is orthogonal) shows here.
    torch::NoGradGuard no_grad;
    auto k = torch::nn::functional::linear(mha->layer_norm->forward(x), mha->key->weight)
                 .view({2, 7, 4, 8});
    auto f = mha->rotary_emb->inv_freq;
    auto angle = torch::arange(7, torch::kDouble).unsqueeze(-1) * f.to(torch::kDouble);
    auto cos = angle.cos().unsqueeze(1), sin = angle.sin().unsqueeze(1); // (7, 1, 4)
    using torch::indexing::Slice;
    auto x1 = k.index({"...", Slice(0, torch::indexing::None, 2)});
    auto x2 = k.index({"...", Slice(1, torch::indexing::None, 2)});
    auto rotated = torch::cat({x1 * cos - x2 * sin, x1 * sin + x2 * cos}, -1);
    auto want = torch::matmul(rotated, mha->rotation_layer->rotation_matrix).view({2, 7, 32});
    REQUIRE(torch::allclose(cache.find(mha.get())->key(), want, 1e-10, 1e-10));
  }
}

TEST_CASE(
    "one module used from 8 threads, each with its own KVCache, equals serial use",
    "[mha][threads]") {
  torch::manual_seed(12);
  ra::MultiHeadAttention mha(ra::MultiHeadAttentionOptions(32, 4).absolute_positions(true));
  mha->eval();
  auto mask = torch::full({6, 6}, -INFINITY).triu(1);
  std::vector<torch::Tensor> inputs;
  for (int i = 0; i < 8; ++i) {
    inputs.push_back(torch::randn({2, 6, 32}));
  }
  auto decode = [&](const torch::Tensor& x) {
    torch::NoGradGuard no_grad;
    ra::KVCache cache;
    std::vector<torch::Tensor> steps;
    for (int64_t t = 0; t < x.size(1); ++t) {
      steps.push_back(std::get<0>(mha->forward(x.narrow(1, t, 1), {}, mask, &cache)));
    }
    return torch::cat(steps, 1);
  };
  std::vector<torch::Tensor> serial;
  for (const auto& x : inputs) {
    serial.push_back(decode(x));
  }
  std::vector<torch::Tensor> threaded(inputs.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < inputs.size(); ++i) {
    threads.emplace_back([&, i] { threaded[i] = decode(inputs[i]); });
  }
  for (auto& t : threads) {
    t.join();
  }
  for (size_t i = 0; i < inputs.size(); ++i) {
    CAPTURE(i);
    REQUIRE(torch::equal(threaded[i], serial[i]));
  }
}

TEST_CASE(
    "KVCache::reorder: decode, reorder, decode on equals decoding the reordered rows from scratch",
    "[mha][cache][reorder]") {
  torch::manual_seed(21);
  torch::NoGradGuard no_grad;
  for (bool absolute : {false, true}) {
    for (bool shared_audio : {false, true}) {
      ra::MultiHeadAttention self_attn(
          ra::MultiHeadAttentionOptions(32, 4).absolute_positions(absolute));
      ra::MultiHeadAttention cross_attn(
          ra::MultiHeadAttentionOptions(32, 4).absolute_positions(absolute));
      self_attn->eval();
      cross_attn->eval();
      auto mask = torch::full({8, 8}, -INFINITY).triu(1);
      // A beam of 3 rows; one audio's features shared by all (a batch of 1) or one per row.
      auto xa = torch::randn({shared_audio ? 1 : 3, 7, 32});
      auto prompt = torch::randn({3, 3, 32});
      // One step of the stack: self-attention over the cache, then cross-attention.
      auto step = [&](const torch::Tensor& x, const torch::Tensor& audio, ra::KVCache* cache) {
        auto h = std::get<0>(self_attn->forward(x, {}, mask, cache));
        return std::get<0>(cross_attn->forward(h, audio, {}, cache));
      };
      for (const std::vector<int64_t>& order :
           std::vector<std::vector<int64_t>>{{2, 0, 0}, {1, 2}, {0, 1, 2}}) {
        CAPTURE(absolute, shared_audio, order);
        const auto indices = torch::tensor(order, torch::kLong);
        const int64_t rows = indices.size(0);
        auto next = torch::randn({rows, 2, 32});
        // (Each row's audio goes with it; cross-attention reads the cached keys.)
        auto audio = shared_audio ? xa : xa.index_select(0, indices);
        ra::KVCache cache;
        step(prompt, xa, &cache);
        cache.reorder(indices);
        REQUIRE(cache.find(self_attn.get())->key().size(0) == rows);
        std::vector<torch::Tensor> decoded;
        for (int64_t t = 0; t < 2; ++t) {
          decoded.push_back(step(next.narrow(1, t, 1), audio, &cache));
        }
        // From scratch: the reordered prompts, then the same tokens.
        ra::KVCache fresh;
        step(prompt.index_select(0, indices), audio, &fresh);
        for (int64_t t = 0; t < 2; ++t) {
          auto want = step(next.narrow(1, t, 1), audio, &fresh);
          REQUIRE(torch::allclose(decoded[t], want, 1e-6, 1e-6));
        }
      }
    }
  }
}

TEST_CASE("KVCache::reorder refuses bad indices and changes nothing", "[mha][cache][reorder]") {
  torch::NoGradGuard no_grad;
  ra::MultiHeadAttention mha(ra::MultiHeadAttentionOptions(32, 4));
  ra::KVCache cache;
  mha->forward(torch::randn({2, 3, 32}), {}, {}, &cache);
  const auto before = cache.find(mha.get())->key().clone();
  REQUIRE_THROWS_WITH(
      cache.reorder(torch::tensor({0, 2}, torch::kLong)),
      Catch::Contains("indices must be in [0, 2)"));
  REQUIRE_THROWS_WITH(
      cache.reorder(torch::tensor({0.0, 1.0})), Catch::Contains("1-D int64 tensor"));
  REQUIRE(torch::equal(cache.find(mha.get())->key(), before));
}

TEST_CASE(
    "decode_attention equals SDPA over each row's own keys; refuses grad and bad lengths",
    "[decode]") {
  torch::manual_seed(5);
  torch::NoGradGuard no_grad;
  const int64_t n_head = 4, head_dim = 32, n_state = n_head * head_dim, steps = 3;
  const auto q = torch::randn({3, steps, n_state});
  const auto keys = torch::randn({3, 700, n_state});
  const auto values = torch::randn({3, 700, n_state});
  const std::vector<int64_t> rows = {1, 300, 699}; // past a block (256) and a chunk (32)
  const auto lengths = torch::tensor(rows);
  for (const bool causal : {false, true}) {
    const auto got = ra::decode_attention(q, keys, values, lengths, n_head, causal);
    for (int64_t b = 0; b < 3; ++b) {
      for (int64_t t = 0; t < steps; ++t) {
        const int64_t seen = causal ? std::max<int64_t>(rows[b] - (steps - 1 - t), 0) : rows[b];
        const auto heads = [&](const torch::Tensor& x, int64_t n) {
          return x.reshape({n, n_head, head_dim}).transpose(0, 1).to(torch::kDouble);
        };
        const auto want = seen == 0 ? torch::zeros({n_head, 1, head_dim}, torch::kDouble)
                                    : torch::scaled_dot_product_attention(
                                          heads(q[b][t], 1),
                                          heads(keys[b].slice(0, 0, seen), seen),
                                          heads(values[b].slice(0, 0, seen), seen));
        REQUIRE(
            torch::allclose(
                got[b][t].to(torch::kDouble), want.transpose(0, 1).reshape({n_state}), 1e-5, 1e-5));
      }
    }
  }
  {
    torch::AutoGradMode grad(true);
    REQUIRE_THROWS_WITH(
        ra::decode_attention(q.clone().requires_grad_(), keys, values, lengths, n_head),
        Catch::Contains("for inference and has no backward"));
  }
  REQUIRE_THROWS_WITH(
      ra::decode_attention(q, keys, values, torch::tensor({1, 2, 701}), n_head),
      Catch::Contains("lengths must lie in [0, capacity=700]"));
}
