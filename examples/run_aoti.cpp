// Runs an AOTInductor package (torch.export + aoti_compile_and_package, e.g.
// rotary_attention.export_aoti_package in Python) on the cases of a file
// written by Python (rotary_attention.save_file or torch.save of a dict):
// "case<i>.input<j>" are the inputs of case i, "case<i>.output<k>" the outputs
// Python computed eagerly, "tolerance" the largest absolute difference allowed.
// Prints the difference per case; exits non-zero when one is above it.
//
//   run_aoti block.pt2 block_cases.pt [cuda]   (cuda: a CUDA package; inputs moved there)
//
// Linking RotaryAttention::rotary_attention registers the library's operators,
// which the package calls through AOTInductor's proxy executor.

#include <rotary_attention/rotary_attention.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

#include <cstdlib>
#include <iostream>
#include <string>

int main(int argc, char** argv) {
  if (argc != 3 && argc != 4) {
    std::cerr << "usage: run_aoti <package.pt2> <cases.pt> [cuda]\n";
    return 2;
  }
  const torch::Device device(argc == 4 ? argv[3] : "cpu");
  // The package checks inputs against the exported shapes (dynamic ranges,
  // static sizes, dtypes) only when this is set; without it they run unchecked.
  setenv("AOTI_RUNTIME_CHECK_INPUTS", "1", /*overwrite=*/0);
  const auto cases = rotary_attention::load_tensors(argv[2]);
  const double tolerance = cases.at("tolerance").item<double>();
  torch::inductor::AOTIModelPackageLoader loader(argv[1]);
  bool ok = true;
  for (int c = 0; cases.count("case" + std::to_string(c) + ".input0") != 0; ++c) {
    const std::string name = "case" + std::to_string(c);
    std::vector<torch::Tensor> inputs;
    for (int j = 0; cases.count(name + ".input" + std::to_string(j)) != 0; ++j) {
      // A package assumes the strides its example inputs had: contiguous here.
      inputs.push_back(cases.at(name + ".input" + std::to_string(j)).to(device).contiguous());
    }
    torch::NoGradGuard no_grad;
    const std::vector<torch::Tensor> outputs = loader.run(inputs);
    for (size_t k = 0; k < outputs.size(); ++k) {
      const auto& want = cases.at(name + ".output" + std::to_string(k));
      const double diff = (outputs[k].cpu() - want).abs().max().item<double>();
      std::cout << name << " output " << k << " " << outputs[k].sizes()
                << " max |C++ package - Python eager| = " << diff << "\n";
      ok = ok && outputs[k].sizes() == want.sizes() && diff <= tolerance;
    }
  }
  std::cout << (ok ? "all cases within " : "FAILED: a case above ") << tolerance << "\n";
  return ok ? 0 : 1;
}
