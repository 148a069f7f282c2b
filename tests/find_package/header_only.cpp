// Includes one of the library's public headers (RA_HEADER) but calls nothing
// from it: with --as-needed the library stays linked only through the header's
// symbol reference, and the operator must still be registered.
#include RA_HEADER

#include <ATen/core/dispatch/Dispatcher.h>

#include <iostream>

int main() {
  if (!c10::Dispatcher::singleton().findSchema({"rotary_attention::rotary", ""}).has_value()) {
    std::cerr << "rotary_attention::rotary is not registered when only " << RA_HEADER
              << " is included\n";
    return 1;
  }
  std::cout << "operator registered with only " << RA_HEADER << " included\n";
  return 0;
}
