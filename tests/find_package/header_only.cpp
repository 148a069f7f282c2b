// Includes the library's header but calls nothing from it: with --as-needed the
// library stays linked only through the header's symbol reference, and the
// operator must still be registered.
#include <rotary_attention/ops/rotary.h>

#include <ATen/core/dispatch/Dispatcher.h>

#include <iostream>

int main() {
  if (!c10::Dispatcher::singleton().findSchema({"rotary_attention::rotary", ""}).has_value()) {
    std::cerr << "rotary_attention::rotary is not registered\n";
    return 1;
  }
  std::cout << "operator registered without calling the library\n";
  return 0;
}
