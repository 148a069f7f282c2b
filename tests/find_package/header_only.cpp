// Includes one of the library's public headers (RA_HEADER) but calls nothing
// from it: with --as-needed the library stays linked only through the header's
// symbol reference. The check is that the library was loaded (its loading is
// what registers the operators; main.cpp checks the registration itself), read
// from the loader's list, so this file adds no torch header of its own to the
// header's: each header's program costs what the header costs.
#include RA_HEADER

#include <link.h>

#include <cstring>
#include <iostream>

int main() {
  bool loaded = false;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* found) {
        if (std::strstr(info->dlpi_name, "librotary_attention.so") != nullptr) {
          *static_cast<bool*>(found) = true;
        }
        return 0;
      },
      &loaded);
  if (!loaded) {
    std::cerr << "librotary_attention is not loaded when only " << RA_HEADER
              << " is included (the linker dropped it: its operators are not registered)\n";
    return 1;
  }
  std::cout << "library loaded with only " << RA_HEADER << " included\n";
  return 0;
}
