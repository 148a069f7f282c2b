#pragma once
// The typed dispatcher handle of one of the library's operators, which the
// C++ entry points call through (so autograd and every backend are reached
// the same way as from Python).

#include <ATen/core/dispatch/Dispatcher.h>

namespace rotary_attention::ops {

template <typename Signature>
c10::TypedOperatorHandle<Signature> typed_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

} // namespace rotary_attention::ops
