// Runs the C++ MultiHeadAttention with weights trained in Python and compares
// it with the original's outputs (scripts/demo.sh prepares the files):
//
//   mha_from_python DIR
//
// DIR/weights.pt  torch.save(original.state_dict())
// DIR/io.pt       a dict of tensors: config [n_state, n_head, sdpa], x, out,
//                 mask, tokens (B, N, n_state) decoded one at a time, their
//                 outputs decode_out, and the Python timings in ms.

#include <rotary_attention/rotary_attention.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <vector>

namespace ra = rotary_attention;

namespace {

double median_ms(const std::function<void()>& fn, int reps) {
  std::vector<double> ms;
  fn(); // warm-up
  for (int i = 0; i < reps; ++i) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
            .count());
  }
  std::nth_element(ms.begin(), ms.begin() + ms.size() / 2, ms.end());
  return ms[ms.size() / 2];
}

double max_diff(const torch::Tensor& a, const torch::Tensor& b) {
  return (a - b).abs().max().item<double>();
}

} // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR (see scripts/demo.sh)\n", argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  auto io = ra::load_tensors(dir + "/io.pt");
  const auto config = io.at("config");
  const int64_t n_state = config[0].item<int64_t>(), n_head = config[1].item<int64_t>();
  const bool sdpa = config[2].item<int64_t>() != 0;

  ra::MultiHeadAttention mha(ra::MultiHeadAttentionOptions(n_state, n_head).sdpa(sdpa));
  ra::load_state_dict(*mha, dir + "/weights.pt");
  mha->eval();
  torch::NoGradGuard no_grad;

  const auto x = io.at("x"), mask = io.at("mask"), tokens = io.at("tokens");
  const auto [out, qk] = mha->forward(x, {}, mask);
  const double forward_diff = max_diff(out, io.at("out"));

  // Decode: one token per step, the cache growing as Whisper's hooks grow it.
  auto decode = [&](std::vector<torch::Tensor>* outputs) {
    ra::KVCache cache;
    for (int64_t i = 0; i < tokens.size(1); ++i) {
      auto step = std::get<0>(mha->forward(tokens.narrow(1, i, 1), {}, mask, &cache));
      if (outputs)
        outputs->push_back(step);
    }
  };
  std::vector<torch::Tensor> steps;
  decode(&steps);
  const double decode_diff = max_diff(torch::cat(steps, 1), io.at("decode_out"));

  const double cpp_forward = median_ms([&] { mha->forward(x, {}, mask); }, 20);
  const double cpp_decode = median_ms([&] { decode(nullptr); }, 10);
  const double py_forward = io.at("python_forward_ms").item<double>();
  const double py_decode = io.at("python_decode_ms").item<double>();

  std::printf(
      "MultiHeadAttention(n_state=%lld, n_head=%lld, sdpa=%s), x of shape (%lld, %lld, %lld)\n",
      (long long)n_state,
      (long long)n_head,
      sdpa ? "true" : "false",
      (long long)x.size(0),
      (long long)x.size(1),
      (long long)x.size(2));
  std::printf(
      "largest |C++ - Python| difference: forward %.3g, decode of %lld tokens %.3g\n",
      forward_diff,
      (long long)tokens.size(1),
      decode_diff);
  std::printf("%-28s %14s %14s %10s\n", "median time (ms)", "Python orig.", "C++ port", "speed-up");
  std::printf(
      "%-28s %14.3f %14.3f %9.2fx\n", "forward", py_forward, cpp_forward, py_forward / cpp_forward);
  std::printf(
      "%-28s %14.3f %14.3f %9.2fx\n",
      "decode (all tokens)",
      py_decode,
      cpp_decode,
      py_decode / cpp_decode);
  const double tolerance = x.scalar_type() == torch::kDouble ? 1e-9 : 1e-4;
  if (forward_diff > tolerance || decode_diff > tolerance) {
    std::fprintf(stderr, "difference above %.g: the port disagrees with the original\n", tolerance);
    return 1;
  }
  return 0;
}
