#include <rotary_attention/rotary_attention.h>

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/torch.h>

#include <iostream>

int main() {
  // The operator must be registered before anything from the library is called.
  auto schema = c10::Dispatcher::singleton().findSchema({"rotary_attention::rotary", ""});
  if (!schema.has_value()) {
    std::cerr << "rotary_attention::rotary is not registered\n";
    return 1;
  }
  rotary_attention::MultiHeadAttention mha(rotary_attention::MultiHeadAttentionOptions(64, 4));
  auto x = torch::randn({2, 5, 64});
  auto [out, qk] = mha(x);
  if (out.sizes() != x.sizes() || qk.defined()) {
    std::cerr << "unexpected output\n";
    return 1;
  }
  std::cout << "consumer ok: " << out.sizes() << "\n";
  return 0;
}
