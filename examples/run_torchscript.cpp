// Loads a TorchScript model that calls torch.ops.rotary_attention.rotary
// (e.g. a scripted rotary_attention.MultiHeadAttention), runs it
// from C++, and runs the C++ MultiHeadAttention with the same weights:
//
//   run_torchscript MODEL.pt WEIGHTS.pt INPUTS.pt OUTPUTS.pt
//
// INPUTS.pt holds x and optionally xa and mask; OUTPUTS.pt receives
// script_out and cpp_out (and script_qk, cpp_qk on the explicit path).

#include <rotary_attention/rotary_attention.h>
#include <torch/script.h>
#include <torch/torch.h>

#include <cstdio>

namespace ra = rotary_attention;

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s MODEL.pt WEIGHTS.pt INPUTS.pt OUTPUTS.pt\n", argv[0]);
    return 2;
  }
  // The operator is registered because this program links librotary_attention.
  torch::jit::Module scripted = torch::jit::load(argv[1]);
  scripted.eval();
  const auto inputs = ra::load_tensors(argv[3]);
  auto get = [&](const char* name) {
    auto it = inputs.find(name);
    return it == inputs.end() ? torch::Tensor() : it->second;
  };
  const torch::Tensor x = get("x"), xa = get("xa"), mask = get("mask");

  ra::MultiHeadAttention mha(
      ra::MultiHeadAttentionOptions(
          scripted.attr("n_state").toInt(), scripted.attr("n_head").toInt())
          .sdpa(scripted.attr("sdpa").toBool())
          .group_norm(scripted.attr("group_norm").toBool()));
  ra::load_state_dict(*mha, argv[2]);
  mha->eval();

  torch::NoGradGuard no_grad;
  auto opt = [](const torch::Tensor& t) {
    return t.defined() ? torch::IValue(t) : torch::IValue();
  };
  const auto result = scripted.forward({x, opt(xa), opt(mask)}).toTuple();
  const auto [cpp_out, cpp_qk] = mha->forward(x, xa, mask);

  std::vector<std::pair<std::string, torch::Tensor>> outputs = {
      {"script_out", result->elements()[0].toTensor()}, {"cpp_out", cpp_out}};
  if (!result->elements()[1].isNone()) {
    outputs.emplace_back("script_qk", result->elements()[1].toTensor());
    outputs.emplace_back("cpp_qk", cpp_qk);
  }
  ra::save_tensors(outputs, argv[4]);
  std::printf(
      "TorchScript vs C++ MultiHeadAttention: largest difference %.3g\n",
      (outputs[0].second - outputs[1].second).abs().max().item<double>());
  return 0;
}
