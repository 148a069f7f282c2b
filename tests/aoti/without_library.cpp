// A program linked to LibTorch only, not to RotaryAttention::rotary_attention,
// loading a package whose graph calls rotary_attention::rotary: what a user
// who forgot to link the library sees (the test checks the message names the
// operator).

#include <ATen/ops/randn.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <iostream>

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: aoti_without_library <package.pt2>\n";
    return 2;
  }
  try {
    torch::inductor::AOTIModelPackageLoader loader(argv[1]);
    auto out = loader.run({at::randn({1, 4, 64}), at::randn({1, 3, 64}), at::zeros({64, 64})});
    std::cout << "ran without the library: " << out.at(0).sizes() << "\n";
    return 0;
  } catch (const std::exception& e) {
    std::cout << "error: " << e.what() << "\n";
    return 1;
  }
}
