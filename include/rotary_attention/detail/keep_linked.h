#pragma once
// Every public header includes this: it makes each program that includes any
// of them reference a symbol of the library, so a linker using --as-needed
// keeps the library, and with it the operators' registration (which runs when
// the library is loaded), even when the program calls nothing else from it
// (e.g. it only runs a TorchScript or exported model).

#include <cstdint>

namespace rotary_attention::detail {
// Defined next to the TORCH_LIBRARY block.
int64_t operators_registered();
inline const int64_t keep_operators_linked = operators_registered();
} // namespace rotary_attention::detail
