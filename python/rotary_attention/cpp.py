"""The C++ modules themselves (LibTorch `torch::nn::Module`s bound with
pybind11), with nn.Module-like conveniences: for tests of the C++ objects and
for work that wants the C++ module's own behaviour (all-or-nothing
load_state_dict, `save(path)` / `load(path)` through the C++ weight I/O).
They are not torch.nn.Modules: use `rotary_attention.MultiHeadAttention` etc.
inside models. Their KVCache is this module's `KVCache`. `Whisper` is the
whole fork in C++ (model, log-mel front end, decoding loop, tokenizer)."""

from ._modules import IncompatibleKeys, KVCache, MultiHeadAttention, RotaryEmbedding, RotationLayer
from .whisper_model import Whisper

__all__ = ["IncompatibleKeys", "KVCache", "MultiHeadAttention", "RotaryEmbedding", "RotationLayer", "Whisper"]
