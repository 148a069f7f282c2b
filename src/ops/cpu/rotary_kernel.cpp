// CPU kernels of rotary_attention::rotary, ::rotary_backward and ::rotary_:
// the shared front end (rotary_frontend.h), cos/sin tables, then the rotation
// loop built for this CPU's instruction set.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>

#include "../rotary_frontend.h"
#include "cpu_capability.h"
#include "rotary_loop.h"
#include "rotary_table_memo.h"
#include "rotary_tables.h"

namespace rotary_attention::ops::cpu {
namespace {

const CpuLoop<void (*)(const RotateArgs&)>& rotary_loop() {
  static const auto chosen = RA_PICK_CPU_LOOP(rotate);
  return chosen;
}

struct Cpu {
  static constexpr c10::DeviceType type = c10::DeviceType::CPU;
  // A row is read into a buffer before it is written: any layouts in place.
  static constexpr bool in_place_across_layouts = true;

  static void rotate(const RotaryCall& c) {
    static auto* memo = new RotaryTableMemo(); // never destroyed: no tensor freed at exit
    const RotaryTables tables = c.positions.has_value()
                                    ? make_rotary_tables(c.x, c.inv_freq, c.positions, c.offset)
                                    : memo->get(c.x, c.inv_freq, c.offset);
    rotary_loop().fn(
        {c.x,
         c.out,
         tables.cos,
         tables.sin,
         tables.per_batch,
         c.layouts,
         c.inverse,
         c.rotary_dim,
         c.in_place});
  }
};

} // namespace

TORCH_LIBRARY_IMPL(rotary_attention, CPU, m) {
  RotaryKernels<Cpu>::register_in(m);
}

} // namespace rotary_attention::ops::cpu

namespace rotary_attention {
std::string cpu_kernel_capability() {
  return ops::cpu::rotary_loop().name;
}
} // namespace rotary_attention
