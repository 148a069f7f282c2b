// Decodes token by token from C++ with an exported decode step: an
// AOTInductor package of rotary_attention.StaticDecodeStep (one step of
// self-attention layers whose static cache is passed in), compiled once and
// run for every step; this loop owns the cache tensors, which the package
// writes in place. The file (written by Python) holds "tokens" (B, N,
// n_state), the empty cache "cache<j>" in the step's order, "expected" (the
// outputs of eager decoding in Python) and "tolerance".
//
//   decode_aoti decode.pt2 decode_cases.pt [cuda]

#include <rotary_attention/rotary_attention.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#include <cstdlib>
#include <iostream>
#include <string>

int main(int argc, char** argv) {
  if (argc != 3 && argc != 4) {
    std::cerr << "usage: decode_aoti <decode_step.pt2> <decode_cases.pt> [cuda]\n";
    return 2;
  }
  const torch::Device device(argc == 4 ? argv[3] : "cpu");
  setenv("AOTI_RUNTIME_CHECK_INPUTS", "1", /*overwrite=*/0); // see run_aoti.cpp
  const auto file = rotary_attention::load_tensors(argv[2]);
  const torch::Tensor tokens = file.at("tokens").to(device);
  const double tolerance = file.at("tolerance").item<double>();
  std::vector<torch::Tensor> cache;
  for (int j = 0; file.count("cache" + std::to_string(j)) != 0; ++j) {
    cache.push_back(file.at("cache" + std::to_string(j)).to(device).clone());
  }
  torch::inductor::AOTIModelPackageLoader loader(argv[1]);
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> outputs;
  for (int64_t i = 0; i < tokens.size(1); ++i) {
    std::vector<torch::Tensor> inputs{tokens.slice(1, i, i + 1).contiguous()};
    inputs.insert(inputs.end(), cache.begin(), cache.end()); // written in place by the step
    outputs.push_back(loader.run(inputs).at(0));
  }
  const torch::Tensor decoded = torch::cat(outputs, 1).cpu();
  const double diff = (decoded - file.at("expected")).abs().max().item<double>();
  std::cout << tokens.size(1) << " steps decoded from C++, max |package - Python eager| = " << diff
            << " (tolerance " << tolerance << "); cached steps: " << cache.at(2).item<int64_t>()
            << "\n";
  return diff <= tolerance && cache.at(2).item<int64_t>() == tokens.size(1) ? 0 : 1;
}
