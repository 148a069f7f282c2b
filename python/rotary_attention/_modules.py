"""Python faces of the C++ modules: the original's call signatures and the
usual torch.nn.Module conveniences (state_dict, load_state_dict, to, train,
eval returning self) on top of the pybind11 classes in `_C`."""

from collections import OrderedDict
from collections.abc import Iterator
from typing import NamedTuple

import torch

from . import _C


class IncompatibleKeys(NamedTuple):
    missing_keys: list[str]
    unexpected_keys: list[str]


class _CppModule:
    """Mixin for a bound C++ module (a `torch::nn::Module`)."""

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def __repr__(self):
        return _C._repr(self)

    __str__ = __repr__

    def named_parameters(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        for name, p in super().named_parameters(recurse).items():
            yield prefix + name, p

    def parameters(self, recurse: bool = True) -> Iterator[torch.Tensor]:
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True) -> Iterator[tuple[str, torch.Tensor]]:
        for name, b in super().named_buffers(recurse).items():
            yield prefix + name, b

    def buffers(self, recurse: bool = True) -> Iterator[torch.Tensor]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    def state_dict(self, prefix: str = "", keep_vars: bool = False) -> "OrderedDict[str, torch.Tensor]":
        """Parameters, then buffers, under the original's keys (detached unless keep_vars)."""
        out = OrderedDict()
        for name, t in list(self.named_parameters(prefix)) + list(self.named_buffers(prefix)):
            out[name] = t if keep_vars else t.detach()
        return out

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False) -> IncompatibleKeys:
        """Copies tensors in (dtype and device converted). Every key and shape is
        checked first: on error nothing is loaded."""
        if assign:
            raise NotImplementedError("load_state_dict(assign=True) is not supported by the C++-backed modules")
        state = {}
        for key, value in state_dict.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"load_state_dict: the value of {key!r} is not a tensor")
            state[key] = value
        missing, unexpected = _C._load_state_dict(self, state, strict)
        return IncompatibleKeys(missing, unexpected)

    def to(self, *args, **kwargs):
        """Like torch.nn.Module.to: a device, a dtype, both, or a tensor."""
        device, dtype, non_blocking, _ = torch._C._nn._parse_to(*args, **kwargs)
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"to() only accepts floating point dtypes, got {dtype}")
        if device is not None or dtype is not None:
            super().to(device, dtype, non_blocking)
        return self

    def cuda(self, device=None):
        if device is None:
            device = "cuda"
        elif isinstance(device, int):
            device = f"cuda:{device}"
        return self.to(torch.device(device))

    def cpu(self):
        return self.to(torch.device("cpu"))

    def double(self):
        return self.to(torch.float64)

    def float(self):
        return self.to(torch.float32)

    def half(self):
        return self.to(torch.float16)

    def bfloat16(self):
        return self.to(torch.bfloat16)

    def train(self, mode: bool = True):
        super().train(mode)
        return self

    def eval(self):
        super().eval()
        return self

    def requires_grad_(self, requires_grad: bool = True):
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True):
        for p in self.parameters():
            if p.grad is not None:
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.zero_()

    def save(self, path, format: str | None = None) -> None:
        """Writes the state dict from C++, as safetensors when the path ends in
        ".safetensors" (or format="safetensors"), in torch.save's format otherwise."""
        _C._save_state_dict_file(self, str(path), format or "")

    def load(self, path, prefix: str = "") -> None:
        """Reads a state dict or checkpoint (torch.save or safetensors, told by
        content) strictly, from C++; on error the module is unchanged. With a
        prefix (e.g. "model_state_dict.decoder.blocks.3.attn", the final dot
        implied), loads that layer out of a whole model's checkpoint, nested
        containers addressed by dotted paths: the rest is ignored, strict within."""
        _C._load_state_dict_file(self, str(path), prefix)


class RotationLayer(_CppModule, _C.cpp.RotationLayer):
    """`x @ rotation_matrix`; identity at construction, `reset_parameters()`
    makes it orthogonal. Same constructor as the original: `RotationLayer(embed_dim)`."""


class RotaryEmbedding(_CppModule, _C.cpp.RotaryEmbedding):
    """Rotary embedding backed by the `rotary_attention::rotary` operator.
    Same constructor and `rotate_queries_or_keys(x)` as the original."""


class MultiHeadAttention(_CppModule, _C.cpp.MultiHeadAttention):
    """The original `MultiHeadAttention` in C++.

    `MultiHeadAttention(n_state, n_head, dropout_rate=0.01,
    gradient_checkpointing=False, group_norm=False, sdpa=True,
    absolute_positions=False)`;
    `forward(x, xa=None, mask=None, kv_cache=None)` returns `(out, qk)`,
    `qk` None on the SDPA path. `kv_cache` is a `rotary_attention.KVCache`.
    `absolute_positions=True` decodes correctly (see docs/decoding.md) instead of
    the original's re-rotation of the cache at positions 0..S-1.
    """


KVCache = _C.KVCache
