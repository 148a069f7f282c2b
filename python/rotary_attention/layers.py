"""The layers as torch.nn.Modules: drop-in replacements for the original's
classes whose forward calls the library's dispatcher operators, so the math
is the C++ implementation the C++ modules run too. Parameters and buffers
have the original's names; everything torch.nn.Module offers works (parents
see the parameters, .to()/.double(), deepcopy, pickle, torch.save(model),
hooks, torch.func.functional_call, torch.compile, torch.export)."""

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn


class RotationLayer(nn.Module):
    """`x @ rotation_matrix`; identity at construction, `reset_parameters()`
    makes it orthogonal (the constructor does not call it, as the original)."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.rotation_matrix = nn.Parameter(torch.eye(embed_dim))

    def forward(self, x: Tensor) -> Tensor:
        return torch.matmul(x, self.rotation_matrix)

    def reset_parameters(self) -> None:
        nn.init.orthogonal_(self.rotation_matrix)


class RotaryEmbedding(nn.Module):
    """The original's rotary embedding, through `torch.ops.rotary_attention.rotary`
    (pairs read interleaved, written half-split; fp32 math for 16-bit input)."""

    def __init__(self, dim: int, base: float = 10000):
        super().__init__()
        if dim <= 0 or dim % 2:
            raise ValueError(f"RotaryEmbedding: dim (the head dim) must be positive and even, got {dim}")
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("inv_freq", inv_freq)

    def rotate_queries_or_keys(self, x: Tensor) -> Tensor:
        return torch.ops.rotary_attention.rotary(x, self.inv_freq)

    def forward(self, x: Tensor) -> Tensor:
        return self.rotate_queries_or_keys(x)


@dataclass
class _CacheEntry:
    layer: nn.Module  # kept so that its id stays unique while it is cached
    key: Tensor
    value: Tensor
    queries: int  # query tokens seen (cross-attention positions with absolute_positions)


class KVCache:
    """Keys and values for incremental decoding, shared by every attention
    layer of a model (one entry per layer), with the semantics of Whisper's
    forward hooks: self-attention keys/values are appended each call (the
    detached concatenation), cross-attention ones computed on the first call
    and reused. Call `clear()` between sequences."""

    def __init__(self):
        self._entries: dict[int, _CacheEntry] = {}  # by id(layer)

    def get(self, layer: nn.Module) -> tuple[Tensor, Tensor] | None:
        """(key, value) cached for `layer`, or None."""
        entry = self._entries.get(id(layer))
        return None if entry is None else (entry.key, entry.value)

    def length(self, layer: nn.Module) -> int:
        """Number of cached time steps of `layer` (0 when absent)."""
        entry = self._entries.get(id(layer))
        return 0 if entry is None else entry.key.shape[1]

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _entry(self, layer: nn.Module) -> "_CacheEntry | None":
        return self._entries.get(id(layer))

    def _store(self, layer: nn.Module, key: Tensor, value: Tensor, queries: int) -> None:
        self._entries[id(layer)] = _CacheEntry(layer, key, value, queries)


class MultiHeadAttention(nn.Module):
    """The original MultiHeadAttention, its math in the library's
    `multi_head_attention` operator.

    `MultiHeadAttention(n_state, n_head, dropout_rate=0.01,
    gradient_checkpointing=False, group_norm=False, sdpa=True,
    absolute_positions=False)`; `forward(x, xa=None, mask=None, kv_cache=None)`
    returns `(out, qk)`, `qk` None on the SDPA path. `sdpa` is a per-module
    switch (the original's class attribute). `absolute_positions=True` decodes
    at absolute positions (see the README) instead of the original's
    re-rotation of the cache at 0..S-1.
    """

    def __init__(
        self,
        n_state: int,
        n_head: int,
        dropout_rate: float = 0.01,
        gradient_checkpointing: bool = False,
        group_norm: bool = False,
        sdpa: bool = True,
        absolute_positions: bool = False,
    ):
        super().__init__()
        if n_state <= 0 or n_head <= 0 or n_state % n_head:
            raise ValueError(f"MultiHeadAttention: n_state ({n_state}) must be divisible by n_head ({n_head})")
        if (n_state // n_head) % 2:
            raise ValueError(
                f"MultiHeadAttention: head_dim = n_state / n_head = {n_state // n_head} must be even "
                "(rotary embeddings rotate pairs of features)"
            )
        self.n_head = n_head
        self.n_state = n_state
        self.head_dim = n_state // n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)
        self.rotary_emb = RotaryEmbedding(dim=self.head_dim)
        self.rotation_layer = RotationLayer(self.head_dim)
        self.temperature = nn.Parameter(torch.ones(1) * (self.head_dim**-0.5))
        self.dropout = nn.Dropout(dropout_rate)
        self.group_norm = group_norm
        self.attn_ln = nn.GroupNorm(num_groups=1, num_channels=n_state) if group_norm else nn.LayerNorm(n_state)
        self.gradient_checkpointing = gradient_checkpointing
        self.sdpa = sdpa
        self.absolute_positions = absolute_positions

    def forward(
        self,
        x: Tensor,
        xa: Tensor | None = None,
        mask: Tensor | None = None,
        kv_cache: Any = None,
    ) -> tuple[Tensor, Tensor | None]:
        # TorchScript compiles the cache-free path only (a scripted layer takes
        # no kv_cache; decode with the eager module, or export a decode step).
        if not torch.jit.is_scripting():
            if kv_cache is not None:
                return self._forward_with_cache(x, xa, mask, kv_cache)
        out, qk, _, _ = self._attention(x, xa, mask, None, None, 0)
        return out, None if self.sdpa else qk

    def _forward_with_cache(
        self, x: Tensor, xa: Tensor | None, mask: Tensor | None, kv_cache: KVCache
    ) -> tuple[Tensor, Tensor | None]:
        entry = kv_cache._entry(self)
        cached_key = cached_value = None
        query_position = 0
        if entry is not None:
            cached_key, cached_value = entry.key, entry.value
            if self.absolute_positions:
                # After the cached keys (self-attention), or the queries seen so far (cross).
                query_position = entry.queries if xa is not None else cached_key.shape[1]
        out, qk, key, value = self._attention(x, xa, mask, cached_key, cached_value, query_position)
        cross = xa is not None
        queries = (entry.queries if entry is not None else 0) + (x.shape[1] if cross else 0)
        if not cross or entry is None:  # self-attention keys grow; cross-attention ones are stored once
            kv_cache._store(self, key, value, queries)
        else:
            entry.queries = queries
        return out, None if self.sdpa else qk

    def _attention(
        self,
        x: Tensor,
        xa: Tensor | None,
        mask: Tensor | None,
        cached_key: Tensor | None,
        cached_value: Tensor | None,
        query_position: int,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return torch.ops.rotary_attention.multi_head_attention(
            x,
            xa,
            mask,
            self.attn_ln.weight,
            self.attn_ln.bias,
            self.group_norm,
            self.query.weight,
            self.query.bias,
            self.key.weight,
            self.value.weight,
            self.value.bias,
            self.out.weight,
            self.out.bias,
            self.rotary_emb.inv_freq,
            self.rotation_layer.rotation_matrix,
            self.temperature,
            self.n_head,
            self.sdpa,
            self.dropout.p,
            self.training,
            self.absolute_positions,
            cached_key,
            cached_value,
            query_position,
        )

    def extra_repr(self) -> str:
        return (
            f"n_state={self.n_state}, n_head={self.n_head}, dropout_rate={self.dropout.p}, "
            f"group_norm={self.group_norm}, sdpa={self.sdpa}, absolute_positions={self.absolute_positions}"
        )
