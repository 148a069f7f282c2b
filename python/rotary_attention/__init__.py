"""rotary_attention: rotary attention layers whose math is one C++ (LibTorch)
implementation, and the `torch.ops.rotary_attention.*` operators.

- `MultiHeadAttention`, `RotaryEmbedding`, `RotationLayer`: torch.nn.Modules
  with the original's constructors, parameters and call signatures; their
  forward calls the library's operators. `KVCache` for incremental decoding.
- `rotary_attention.cpp`: the C++ modules themselves (pybind11-bound).
- `rotary_attention.reference`: the original PyTorch layers, for parity checks.
- `rotary(...)`: the operator (`torch.ops.rotary_attention.rotary`), with
  `rotary_` (in place, inference) and `rotary_qk` (queries and keys in one
  call); `multi_head_attention(...)`, the layer math as one operator.
"""

import torch  # loads libtorch before the extension

from . import (
    _C,  # registers torch.ops.rotary_attention.*
    cpp,
)
from .layers import KVCache, MultiHeadAttention, RotaryEmbedding, RotationLayer

rotary = torch.ops.rotary_attention.rotary
rotary_backward = torch.ops.rotary_attention.rotary_backward
rotary_qk = torch.ops.rotary_attention.rotary_qk
multi_head_attention = torch.ops.rotary_attention.multi_head_attention
built_with_cuda = _C.built_with_cuda
cpu_kernel_capability = _C.cpu_kernel_capability


def rotary_(x, inv_freq, positions=None, offset=0, layout="interleaved_to_half", rotary_dim=-1):
    """`rotary` in place, for inference; returns x. (The operator itself,
    torch.ops.rotary_attention.rotary_, returns nothing so that torch.compile
    can functionalize it.)"""
    torch.ops.rotary_attention.rotary_(x, inv_freq, positions, offset, layout, rotary_dim)
    return x


__all__ = [
    "KVCache",
    "MultiHeadAttention",
    "RotaryEmbedding",
    "RotationLayer",
    "built_with_cuda",
    "cpu_kernel_capability",
    "cpp",
    "multi_head_attention",
    "rotary",
    "rotary_",
    "rotary_backward",
    "rotary_qk",
]
