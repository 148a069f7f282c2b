// The rotation loop with AVX-512 (CMake adds -mavx512{f,bw,vl,dq} -mfma and
// CPU_CAPABILITY=AVX512 to this file only); chosen when ATen itself runs AVX-512.
#define RA_KERNEL_ENTRY rotate_avx512
#include "rotary_kernel_impl.h"
