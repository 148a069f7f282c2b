// The rotation loop with AVX2 + FMA (CMake adds -mavx2 -mfma -mf16c and
// CPU_CAPABILITY=AVX2 to this file only); chosen at run time when the CPU has them.
#define RA_KERNEL_ENTRY rotate_avx2
#include "rotary_kernel_impl.h"
