"""rotary_attention: rotary attention layers whose math is one C++ (LibTorch)
implementation, and the `torch.ops.rotary_attention.*` operators.

- `MultiHeadAttention`, `RotaryEmbedding`, `RotationLayer`: torch.nn.Modules
  with the original's constructors, parameters and call signatures; their
  forward calls the library's operators. `KVCache` for incremental decoding.
- `rotary_attention.cpp`: the C++ modules themselves (pybind11-bound).
- `rotary_attention.reference`: the original PyTorch layers, for parity checks.
- `rotary(...)`: the operator (`torch.ops.rotary_attention.rotary`), with
  `rotary_` (in place, inference) and `rotary_qk` (queries and keys in one
  call); `multi_head_attention(...)`, the layer math as one operator;
  `decode_attention(...)`, a few queries over a KV cache with a length per row.
- `export_aoti_package`, `StaticDecodeStep`: deployment to C++ through
  torch.export and AOTInductor.
"""

import torch  # loads libtorch before the extension

from . import (
    _C,  # registers torch.ops.rotary_attention.*
    cpp,
)
from .deploy import StaticDecodeStep, export_aoti_package, static_cache_over
from .layers import KVCache, MultiHeadAttention, RotaryEmbedding, RotationLayer

rotary = torch.ops.rotary_attention.rotary
rotary_backward = torch.ops.rotary_attention.rotary_backward
rotary_qk = torch.ops.rotary_attention.rotary_qk
multi_head_attention = torch.ops.rotary_attention.multi_head_attention
decode_attention = torch.ops.rotary_attention.decode_attention
built_with_cuda = _C.built_with_cuda
cpu_kernel_capability = _C.cpu_kernel_capability


def load_file(path, prefix=""):
    """The tensors of a `torch.save`d checkpoint or of a safetensors file (the
    format is read from the content), read by the library's C++ reader (no
    Python unpickling): `dict[str, Tensor]`. Nested dicts, lists and tuples
    (openai-whisper's `{"dims", "model_state_dict"}`, Lightning's checkpoints)
    name their tensors by dotted paths ("model_state_dict.decoder.ln.weight");
    plain values are skipped; globals other than tensors, storages and
    OrderedDict are refused by name, as `torch.load(weights_only=True)` does.
    With a prefix (e.g. "model_state_dict.decoder.blocks.3.attn", the final dot
    implied), only the tensors under it, the prefix removed, and no others are
    read: `layer.load_state_dict(load_file(path, prefix))` loads one layer out
    of a whole model's checkpoint (strict within the prefix)."""
    return _C._load_file(str(path), prefix)


def save_file(state_dict, path, format=None):
    """Writes named tensors, in order, with the library's C++ writer: as
    safetensors when the path ends in ".safetensors" or format="safetensors"
    (`safetensors.torch.load_file` reads them), otherwise in `torch.save`'s
    format (`torch.load(path, weights_only=True)` reads them)."""
    items = list(state_dict.items())
    for name, value in items:
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"save_file: the value of {name!r} is not a tensor")
    _C._save_file([(str(k), v.detach()) for k, v in items], str(path), format or "")


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
    "StaticDecodeStep",
    "built_with_cuda",
    "cpu_kernel_capability",
    "cpp",
    "decode_attention",
    "export_aoti_package",
    "load_file",
    "multi_head_attention",
    "rotary",
    "rotary_",
    "rotary_backward",
    "rotary_qk",
    "save_file",
    "static_cache_over",
]
