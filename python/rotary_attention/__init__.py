"""rotary_attention: C++ (LibTorch) rotary attention layers and the
`torch.ops.rotary_attention.rotary` operator.

- `MultiHeadAttention`, `RotaryEmbedding`, `RotationLayer`, `KVCache`: the
  C++-backed layers, with the original's constructors and call signatures.
- `rotary_attention.reference`: the original PyTorch layers, for parity checks.
- `rotary(...)`: the operator (`torch.ops.rotary_attention.rotary`), with
  `rotary_` (in place, inference) and `rotary_qk` (queries and keys in one call).
"""

import torch  # loads libtorch before the extension

from . import _C  # registers torch.ops.rotary_attention.*
from ._modules import IncompatibleKeys, KVCache, MultiHeadAttention, RotaryEmbedding, RotationLayer

rotary = torch.ops.rotary_attention.rotary
rotary_backward = torch.ops.rotary_attention.rotary_backward
rotary_qk = torch.ops.rotary_attention.rotary_qk
built_with_cuda = _C.built_with_cuda
cpu_kernel_capability = _C.cpu_kernel_capability


def rotary_(x, inv_freq, positions=None, offset=0, layout="interleaved_to_half", rotary_dim=-1):
    """`rotary` in place, for inference; returns x. (The operator itself,
    torch.ops.rotary_attention.rotary_, returns nothing so that torch.compile
    can functionalize it.)"""
    torch.ops.rotary_attention.rotary_(x, inv_freq, positions, offset, layout, rotary_dim)
    return x


__all__ = [
    "IncompatibleKeys",
    "KVCache",
    "MultiHeadAttention",
    "RotaryEmbedding",
    "RotationLayer",
    "built_with_cuda",
    "cpu_kernel_capability",
    "rotary",
    "rotary_",
    "rotary_backward",
    "rotary_qk",
]
