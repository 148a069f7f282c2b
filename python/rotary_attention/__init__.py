"""rotary_attention: C++ (LibTorch) rotary attention layers and the
`torch.ops.rotary_attention.rotary` operator.

- `MultiHeadAttention`, `RotaryEmbedding`, `RotationLayer`, `KVCache`: the
  C++-backed layers, with the original's constructors and call signatures.
- `rotary_attention.reference`: the original PyTorch layers, for parity checks.
- `rotary(...)`: the operator (`torch.ops.rotary_attention.rotary`).
"""

import torch  # loads libtorch before the extension

from . import _C  # registers torch.ops.rotary_attention.*
from ._modules import IncompatibleKeys, KVCache, MultiHeadAttention, RotaryEmbedding, RotationLayer

rotary = torch.ops.rotary_attention.rotary
rotary_backward = torch.ops.rotary_attention.rotary_backward
built_with_cuda = _C.built_with_cuda

__all__ = [
    "IncompatibleKeys",
    "KVCache",
    "MultiHeadAttention",
    "RotaryEmbedding",
    "RotationLayer",
    "built_with_cuda",
    "rotary",
    "rotary_backward",
]
