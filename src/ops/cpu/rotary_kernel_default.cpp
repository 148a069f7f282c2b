// The rotation loop for any x86-64 / other CPU (at::vec's portable code).
#define RA_KERNEL_ENTRY rotate_default
#include "rotary_kernel_impl.h"
