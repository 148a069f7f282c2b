"""The layers as torch.nn.Modules: drop-in replacements for the original's
classes whose forward calls the library's dispatcher operators, so the math
is the C++ implementation the C++ modules run too. Parameters and buffers
have the original's names; everything torch.nn.Module offers works (parents
see the parameters, .to()/.double(), deepcopy, pickle, torch.save(model),
hooks, torch.func.functional_call, torch.compile, torch.export)."""

import itertools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensor
from torch._subclasses.functional_tensor import FunctionalTensor


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
    key: Tensor  # self-attention: (B, capacity, n_state) buffer; cross-attention: xa's keys
    value: Tensor
    cross: bool
    length: int = 0  # cached steps (self-attention, default cache; rows of different lengths: the longest)
    queries: int = 0  # query tokens seen (cross-attention positions with absolute_positions)
    # Steps written (self) or queries seen (cross) as data: a static cache's (a scalar,
    # or one per row), or each row's when rows differ (after crop).
    filled: Tensor | None = None

    def rows(self, batch: int) -> Tensor:
        """`filled` per row, (batch,)."""
        return self.filled.expand(batch) if self.filled.dim() == 0 else self.filled


class KVCache:
    """Keys and values for incremental decoding, shared by every attention
    layer of a model (one entry per layer), with the semantics of Whisper's
    forward hooks: self-attention keys/values are appended each call,
    cross-attention ones computed on the first call and reused. Call `clear()`
    between sequences. Not thread-safe: one cache per sequence and thread.

    Default: self-attention keys and values are written in place into buffers
    that grow by doubling (`capacity` preallocates that many steps), and
    attention reads exactly what Whisper's concatenation gave.

    `static=True` (needs `capacity` and `absolute_positions=True` layers): the
    buffers never grow and the number of cached steps is a tensor, so a decode
    step has the same shapes at every step and `torch.compile` compiles it
    once (torch.export exports it). Attention reads the whole buffers with the
    steps not yet written masked out; results match the default cache to
    floating-point rounding (not bitwise: more, masked, keys are summed). A
    step past the capacity raises when it runs. Masks: on the SDPA path a
    mask makes attention causal at the queries' positions, as with the default
    cache; the explicit path adds the mask's rows at the queries' positions
    over all `capacity` columns, so pass a mask of at least
    (capacity, capacity).

    Rows of different lengths (`crop`, e.g. after a batch of prompts padded on
    the right): each row's new steps go to its own positions and attention
    reads each row's own steps; decoding the batch in one call equals decoding
    each row alone (absolute_positions=True layers)."""

    def __init__(self, capacity: int | None = None, static: bool = False):
        if capacity is not None and capacity < 0:
            raise ValueError(f"KVCache: capacity must be non-negative, got {capacity}")
        if static and not capacity:
            raise ValueError("KVCache(static=True) needs a capacity: its buffers never grow")
        self.capacity = capacity or 0
        self.static = static
        self._entries: dict[int, _CacheEntry] = {}  # by id(layer)

    def get(self, layer: nn.Module) -> tuple[Tensor, Tensor] | None:
        """(key, value) cached for `layer` (the cached steps; cross-attention keys are kept
        rotated, as attention reads them), or None."""
        entry = self._entries.get(id(layer))
        if entry is None:
            return None
        n = self.length(layer)
        return entry.key[:, :n], entry.value[:, :n]

    def length(self, layer: nn.Module) -> int:
        """Number of cached time steps of `layer` (0 when absent)."""
        entry = self._entries.get(id(layer))
        if entry is None:
            return 0
        if entry.cross:
            return entry.key.shape[1]
        return int(entry.filled.max()) if entry.filled is not None else entry.length

    def row_lengths(self, layer: nn.Module) -> Tensor | None:
        """Each row's cached time steps of `layer`'s self-attention, (B,) int64, or None when absent."""
        entry = self._entries.get(id(layer))
        if entry is None or entry.cross:
            return None
        if entry.filled is not None:
            return entry.rows(entry.key.shape[0]).clone()
        return torch.full((entry.key.shape[0],), entry.length, dtype=torch.long, device=entry.key.device)

    def crop(self, lengths) -> None:
        """Keeps the first `lengths[b]` cached steps of each row b (a sequence or an int64
        tensor of the batch size; an int: every row), for every layer: the steps after
        them are overwritten by the row's next ones. Cross-attention entries keep xa's
        keys and count lengths[b] queries seen. For a batch of prompts padded on the
        right: run the padded batch, then `crop(prompt_lengths)`; each row then decodes
        from its own position, in one batched call per step (absolute_positions=True
        layers). Checked before anything changes."""
        lengths = torch.as_tensor(lengths)
        if lengths.dtype not in (torch.int64, torch.int32) or lengths.dim() > 1:
            raise ValueError(
                f"KVCache.crop: lengths must be an int or 1-D integers, got {lengths.dtype} of shape "
                f"{tuple(lengths.shape)}"
            )
        lengths = lengths.long()
        for entry in self._entries.values():
            if entry.cross:
                continue
            have = self.row_lengths(entry.layer).cpu()
            rows = lengths.expand(have.shape) if lengths.dim() == 0 else lengths
            if rows.shape != have.shape or bool((rows < 0).any()) or bool((rows > have).any()):
                raise ValueError(
                    f"KVCache.crop: lengths must give each of the {have.numel()} rows a value in [0, its cached "
                    f"steps] (the rows hold {have.tolist()}), got {lengths.tolist()}"
                )
        uniform = lengths.numel() == 0 or lengths.dim() == 0 or bool((lengths == lengths[0]).all())
        for entry in self._entries.values():
            if entry.filled is not None and (lengths.dim() == 0 or entry.filled.shape == lengths.shape):
                entry.filled.copy_(lengths)  # the same tensor: a compiled step stays valid
            elif uniform and not self.static:
                entry.filled = None
            else:
                entry.filled = lengths.to(entry.key.device, copy=True)
            n = int(lengths.max()) if lengths.numel() else 0
            if entry.cross:
                entry.queries = n
            else:
                entry.length = n

    def clear(self) -> None:
        self._entries.clear()

    def values(self) -> list[Tensor]:
        """Each layer's cached values, in the order the layers first used the
        cache (as the dict of Whisper's hooks holds them): Whisper's
        TextDecoder reads the first one's length as the tokens decoded so far."""
        return [self.get(entry.layer)[1] for entry in self._entries.values()]

    def reorder(self, indices) -> None:
        """Re-indexes every entry along the batch for a beam search (what
        Whisper's `rearrange_kv_cache` does to its dict): row i becomes row
        `indices[i]`. `indices` (a sequence or an int64 tensor) may select
        fewer rows (finished beams dropped) or repeat rows. Cross-attention
        entries of batch 1 serve every row and stay. A static cache keeps its
        buffers when the batch size stays (rows copied in place, so a compiled
        step stays valid); the indices are checked before anything changes."""
        indices = torch.as_tensor(indices)
        if indices.dim() != 1 or indices.dtype != torch.long:
            raise ValueError(
                f"KVCache.reorder: indices must be 1-D integers, got {indices.dtype} of shape {tuple(indices.shape)}"
            )
        shared = [e for e in self._entries.values() if not (e.cross and e.key.shape[0] == 1)]
        for entry in shared:
            batch = entry.key.shape[0]
            if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= batch):
                raise IndexError(
                    f"KVCache.reorder: indices must be in [0, {batch}) (the cached batch size), got {indices.tolist()}"
                )
        for entry in self._entries.values():
            if entry.filled is not None and entry.filled.dim() == 1:  # each row's count
                rows = indices.to(entry.filled.device)
                if rows.numel() == entry.filled.numel():
                    entry.filled.copy_(entry.filled.index_select(0, rows))
                else:
                    entry.filled = entry.filled.index_select(0, rows)
        for entry in shared:
            rows = indices.to(entry.key.device)
            if entry.cross:
                entry.key, entry.value = entry.key.index_select(0, rows), entry.value.index_select(0, rows)
            elif self.static and rows.numel() == entry.key.shape[0]:
                entry.key.copy_(entry.key.index_select(0, rows))
                entry.value.copy_(entry.value.index_select(0, rows))
            elif rows.numel() == entry.key.shape[0]:
                # A beam keeps its size: the written steps are gathered in place (the
                # steps past them stay zero), with no buffer of full capacity per step.
                n = self.length(entry.layer)
                for buffer in (entry.key, entry.value):
                    buffer[:, :n] = buffer[:, :n].index_select(0, rows)
            else:
                n = self.length(entry.layer)
                for name in ("key", "value"):
                    old = getattr(entry, name)
                    new = old.new_zeros((rows.numel(), *old.shape[1:]))  # (see _reserve)
                    new[:, :n] = old[:, :n].index_select(0, rows)
                    setattr(entry, name, new)

    def __len__(self) -> int:
        return len(self._entries)

    def _entry(self, layer: nn.Module) -> "_CacheEntry | None":
        return self._entries.get(id(layer))

    def _store(self, layer: nn.Module, key: Tensor, value: Tensor) -> _CacheEntry:
        """Cross-attention: xa's keys and values, kept as they are."""
        filled = torch.zeros((), dtype=torch.long, device=key.device) if self.static else None
        entry = _CacheEntry(layer, key, value, cross=True, filled=filled)
        self._entries[id(layer)] = entry
        return entry

    def _adopt(self, layer: nn.Module, key: Tensor, value: Tensor, filled: Tensor | None) -> _CacheEntry:
        """Self-attention: `layer`'s entry over these buffers (and, static, this count)."""
        entry = _CacheEntry(layer, key, value, cross=False, filled=filled)
        self._entries[id(layer)] = entry
        return entry

    def _reserve(self, layer: nn.Module, x: Tensor) -> _CacheEntry:
        """Self-attention: buffers with room for x's steps (created, or grown by doubling)."""
        entry = self._entries.get(id(layer))
        steps = x.shape[1]
        if entry is None:
            capacity = self.capacity if self.static else max(self.capacity, steps)
            shape = (x.shape[0], capacity, x.shape[2])
            # Attention over whole buffers (a static cache's, or rows of different
            # lengths) reads steps a row has not written with zero weight: they must
            # be finite (0 * NaN is NaN), so zeros, not empty memory.
            key, value = x.new_zeros(shape), x.new_zeros(shape)
            filled = torch.zeros((), dtype=torch.long, device=x.device) if self.static else None
            entry = self._adopt(layer, key, value, filled)
        elif not self.static and entry.length + steps > entry.key.shape[1]:
            n = entry.length
            shape = (entry.key.shape[0], max(n + steps, 2 * entry.key.shape[1]), entry.key.shape[2])
            for name in ("key", "value"):
                grown = getattr(entry, name).new_zeros(shape)
                grown[:, :n].copy_(getattr(entry, name)[:, :n])
                setattr(entry, name, grown)
        return entry


def _hooked(module: nn.Module) -> bool:
    """Hooks that calling `module` would run."""
    return bool(
        module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
    )


_TRACING_TENSORS = (FakeTensor, FunctionalTensor)


def _holds_subclass_tensors(module: nn.Module) -> bool:
    """Parameters or buffers that are tensor subclasses (torchao's quantized
    weights, DTensors, ...): only the module's own forward knows how to use
    them, so its weights cannot be handed to an operator. The tensors that
    torch.export and torch.compile trace with stand for plain ones."""
    return any(
        type(t) not in (torch.Tensor, nn.Parameter) and not isinstance(t, _TRACING_TENSORS)
        for t in itertools.chain(module.parameters(recurse=False), module.buffers(recurse=False))
    )


def _query_position_if(absolute: bool, cache: tuple) -> tuple:
    """attention_core's cache arguments (cached_key, cached_value, query_position,
    ...): the query position given only for absolute positions (None: the
    original's)."""
    if not cache:
        return (None, None, 0) if absolute else ()
    cache = list(cache)
    if not absolute:
        cache[2] = None
    return tuple(cache)


def _global_hooks() -> bool:
    """Hooks registered for every module (torch.nn.modules.module.register_module_*_hook)."""
    g = torch.nn.modules.module
    return bool(
        g._global_forward_hooks
        or g._global_forward_pre_hooks
        or g._global_backward_hooks
        or g._global_backward_pre_hooks
    )


class MultiHeadAttention(nn.Module):
    """The original MultiHeadAttention, its math in the library's operators.

    Two roads to the same C++ code, chosen per call by inspecting the
    children (never by a flag): when every child is the plain class the
    operator assumes (nn.Linear, nn.LayerNorm/GroupNorm as constructed, the
    library's RotaryEmbedding/RotationLayer, nn.Dropout) and no hook would run,
    one `multi_head_attention` call (the fast road). Otherwise (hooks on a
    child or global ones, peft's LoRA layers, quantized or replaced children,
    a dict kv_cache) the children are called as modules in the original's
    order and the rest runs in `attention_core` (the faithful road).

    `MultiHeadAttention(n_state, n_head, dropout_rate=0.01,
    gradient_checkpointing=False, group_norm=False, sdpa=True,
    absolute_positions=False)`; `forward(x, xa=None, mask=None, kv_cache=None)`
    returns `(out, qk)`, `qk` None on the SDPA path. `sdpa` is a per-module
    switch (the original's class attribute). `absolute_positions=True` decodes
    at absolute positions (see docs/decoding.md) instead of the original's
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
        # TorchScript compiles the fast road without a cache only (a scripted
        # layer takes no kv_cache; decode with the eager module, or export a
        # decode step).
        if not torch.jit.is_scripting():
            if isinstance(kv_cache, dict):
                return self._forward_with_cache_dict(x, xa, mask, kv_cache)
            if kv_cache is not None and not isinstance(kv_cache, KVCache):
                raise TypeError(
                    "MultiHeadAttention: kv_cache must be a rotary_attention.KVCache or a dict filled "
                    f"by forward hooks on key/value (the original's protocol), got {type(kv_cache).__name__}"
                )
            attention = self._attention if self._children_are_plain() else self._attention_through_children
            if kv_cache is not None:
                return self._forward_with_cache(x, xa, mask, kv_cache, attention)
            out, qk, _, _ = attention(x, xa, mask, None, None, 0)
            return out, None if self.sdpa else qk
        out, qk, _, _ = self._attention(x, xa, mask, None, None, 0)
        return out, None if self.sdpa else qk

    def _children_are_plain(self) -> bool:
        """True when one `multi_head_attention` call computes what calling the
        children would (the fast road): every child is the class the operator
        assumes, configured as the operator computes it, and no hook would run."""
        if _global_hooks():
            return False
        m = self._modules
        for name in ("query", "key", "value", "out"):
            if type(m[name]) is not nn.Linear or _hooked(m[name]) or _holds_subclass_tensors(m[name]):
                return False
        if _holds_subclass_tensors(self) or _holds_subclass_tensors(m["attn_ln"]):
            return False
        if m["key"].bias is not None:
            return False
        norm = m["attn_ln"]
        if _hooked(norm) or norm.eps != 1e-5:
            return False
        if self.group_norm:
            if type(norm) is not nn.GroupNorm or norm.num_groups != 1:
                return False
        elif type(norm) is not nn.LayerNorm or norm.normalized_shape != (self.n_state,):
            return False
        return self._rotation_is_plain() and self._dropout_is_plain()

    def _rotation_is_plain(self) -> bool:
        """The library's rotary embedding and rotation layer, unhooked: the
        operators apply them (the original calls `rotate_queries_or_keys` as a
        method, so hooks on rotary_emb never run there either)."""
        m = self._modules
        return (
            type(m["rotary_emb"]) is RotaryEmbedding
            and type(m["rotation_layer"]) is RotationLayer
            and not _hooked(m["rotation_layer"])
            and not _holds_subclass_tensors(m["rotation_layer"])
            and not _holds_subclass_tensors(m["rotary_emb"])
            and not _global_hooks()
        )

    def _dropout_is_plain(self) -> bool:
        """The original calls `dropout` only on the explicit path."""
        d = self._modules["dropout"]
        return self.sdpa or (type(d) is nn.Dropout and not _hooked(d) and not _global_hooks())

    def _forward_with_cache_dict(
        self, x: Tensor, xa: Tensor | None, mask: Tensor | None, kv_cache: dict
    ) -> tuple[Tensor, Tensor | None]:
        """The original's protocol: forward hooks on `key`/`value` fill the dict
        (Whisper's `install_kv_cache_hooks`); whatever it holds for `self.key`
        replaces the keys. The children run as modules, in the original's order."""
        if self.absolute_positions:
            raise ValueError(
                "MultiHeadAttention: a dict kv_cache follows the original's semantics (every call rotates "
                "its queries at 0..T-1); absolute_positions=True needs a rotary_attention.KVCache"
            )
        return self._forward_like_the_original(x, xa, mask, kv_cache)

    def _forward_like_the_original(
        self, x: Tensor, xa: Tensor | None, mask: Tensor | None, kv_cache: dict | None
    ) -> tuple[Tensor, Tensor | None]:
        x_norm = self.attn_ln(x)
        q = self.query(x_norm)
        k = self.key(x_norm if xa is None else xa)
        v = self.value(x_norm if xa is None else xa)
        if kv_cache is not None and self.key in kv_cache:
            k = kv_cache[self.key]
            v = kv_cache[self.value]
        rotate = self._rotation_is_plain()
        if not rotate or not self._dropout_is_plain():
            # The original's lines: the rotary and rotation children called by
            # the layer (queries, then keys).
            q = q.view(q.shape[0], q.shape[1], self.n_head, -1)
            k = k.view(k.shape[0], k.shape[1], self.n_head, -1)
            q = self.rotary_emb.rotate_queries_or_keys(q)
            k = self.rotary_emb.rotate_queries_or_keys(k)
            q = self.rotation_layer(q)
            k = self.rotation_layer(k)
            q = q.view(q.shape[0], q.shape[1], -1)
            k = k.view(k.shape[0], k.shape[1], -1)
            if not self._dropout_is_plain():
                wv, qk = self._explicit_attention_calling_dropout(q, k, v, mask)
                return self.out(wv) + x, qk
        wv, qk, _, _ = self._attention_core(q, k, v, xa is not None, mask, rotate)
        return self.out(wv) + x, None if self.sdpa else qk

    def _explicit_attention_calling_dropout(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """The original's explicit path, for a replaced or hooked `dropout`
        child, which no operator can call between the softmax and the values."""
        n_batch, n_ctx, n_state = q.shape
        scale = self.temperature
        q = q.view(n_batch, n_ctx, self.n_head, self.head_dim).permute(0, 2, 1, 3)
        k = k.view(k.shape[0], k.shape[1], self.n_head, self.head_dim).permute(0, 2, 1, 3)
        v = v.view(v.shape[0], v.shape[1], self.n_head, self.head_dim).permute(0, 2, 1, 3)
        qk = (q * scale) @ (k.transpose(-2, -1) * scale)
        if mask is not None:
            qk = qk + mask[:n_ctx, :n_ctx]
        qk = qk.float()
        w = self.dropout(torch.softmax(qk, dim=-1).to(q.dtype))
        out = (w @ v).permute(0, 2, 1, 3).reshape(n_batch, n_ctx, n_state)
        return out, qk.detach()

    def _attention_core(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        cross: bool,
        mask: Tensor | None,
        rotate: bool = True,
        *cache,
        absolute: bool | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # (rotate=False: the children rotated q and k, and may hold no such tensors)
        unused = q.new_empty(0)
        return torch.ops.rotary_attention.attention_core(
            q,
            k,
            v,
            cross,
            mask,
            self.rotary_emb.inv_freq if rotate else unused,
            self.rotation_layer.rotation_matrix if rotate else unused,
            self.temperature,
            self.n_head,
            self.sdpa,
            self._dropout_p(),
            rotate,
            *_query_position_if(self.absolute_positions if absolute is None else absolute, cache),
        )

    def _dropout_p(self) -> float:
        """What the operators take: the dropout's p in training, 0 otherwise (as SDPA)."""
        # (sdpa: a replaced dropout is never called)
        return getattr(self.dropout, "p", 0.0) if self.training else 0.0

    def _attention_through_children(
        self,
        x: Tensor,
        xa: Tensor | None,
        mask: Tensor | None,
        cached_key: Tensor | None,
        cached_value: Tensor | None,
        query_position: int,
        key_buffer: Tensor | None = None,
        value_buffer: Tensor | None = None,
        cache_length: int = 0,
        positions: Tensor | None = None,
        lengths: Tensor | None = None,
        absolute: bool | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """`_attention`'s result with the norm and the projections called as
        modules (the faithful road); rotary, the rotation, the cache and
        attention in `attention_core`."""
        if not self._rotation_is_plain() or not self._dropout_is_plain():
            if cached_key is None and key_buffer is None:
                out, qk = self._forward_like_the_original(x, xa, mask, None)
                return out, qk, None, None
            raise ValueError(
                "MultiHeadAttention: a KVCache needs the library's own RotaryEmbedding and RotationLayer "
                "without hooks (and an unhooked nn.Dropout on the explicit path): the operator rotates the "
                "cached keys; use a dict kv_cache with forward hooks instead"
            )
        x_norm = self.attn_ln(x)
        q = self.query(x_norm)
        if xa is not None and cached_key is not None:
            k, v = cached_key, cached_value  # a KVCache computes xa's keys once
        else:
            k = self.key(x_norm if xa is None else xa)
            v = self.value(x_norm if xa is None else xa)
        wv, qk, key, value = self._attention_core(
            q, k, v, xa is not None, mask, True,
            cached_key, cached_value, query_position, key_buffer, value_buffer, cache_length, positions, lengths,
            absolute=absolute,
        )  # fmt: skip
        return self.out(wv) + x, qk, key, value

    def _forward_with_cache(
        self, x: Tensor, xa: Tensor | None, mask: Tensor | None, kv_cache: KVCache, attention
    ) -> tuple[Tensor, Tensor | None]:
        steps = x.shape[1]
        if xa is None:
            # Self-attention: the new keys go into the cache's buffers, in place.
            entry = kv_cache._reserve(self, x)
            if entry.filled is not None:
                # Each row's count as data (a static cache's, or rows of different lengths).
                lengths = entry.rows(x.shape[0])
                out, qk, _, _ = attention(x, None, mask, None, None, 0, entry.key, entry.value, 0, None, lengths)
                entry.filled.add_(steps)
            else:
                out, qk, _, _ = attention(x, None, mask, None, None, 0, entry.key, entry.value, entry.length)
            if not kv_cache.static:  # (a static cache counts in `filled` only: a compiled step stays one graph)
                entry.length += steps
            return out, None if self.sdpa else qk
        # Cross-attention: xa's keys and values, computed on the first call.
        entry = kv_cache._entry(self)
        positions = None
        if entry is not None:
            seen = entry.filled  # (None: a default cache with one count, entry.queries)
        else:
            seen = torch.zeros((), dtype=torch.long, device=x.device) if kv_cache.static else None
        if seen is not None and self.absolute_positions:
            # The queries' positions as data: (T,), or (B, T) when rows differ.
            at = torch.arange(steps, device=seen.device)
            positions = seen + at if seen.dim() == 0 else seen.unsqueeze(1) + at
        query_position = entry.queries if entry is not None and self.absolute_positions else 0
        cached_key = cached_value = None
        if entry is not None:
            cached_key, cached_value = entry.key, entry.value
        # The entry keeps xa's keys rotated, computed once per audio: the original
        # rotates them at 0..S-1 and the queries at 0..T-1 on every call, which is
        # absolute_positions with the queries at 0 (the same rotation, the same bits).
        out, qk, key, value = attention(
            x, xa, mask, cached_key, cached_value, query_position, positions=positions, absolute=True
        )
        if entry is None:
            entry = kv_cache._store(self, key, value)
        if entry.filled is not None:
            entry.filled.add_(steps)
        else:
            entry.queries += steps
        return out, None if self.sdpa else qk

    def _attention(
        self,
        x: Tensor,
        xa: Tensor | None,
        mask: Tensor | None,
        cached_key: Tensor | None,
        cached_value: Tensor | None,
        query_position: int,
        key_buffer: Tensor | None = None,
        value_buffer: Tensor | None = None,
        cache_length: int = 0,
        positions: Tensor | None = None,
        lengths: Tensor | None = None,
        absolute: bool | None = None,
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
            self._dropout_p(),
            cached_key,
            cached_value,
            query_position if (self.absolute_positions if absolute is None else absolute) else None,
            key_buffer,
            value_buffer,
            cache_length,
            positions,
            lengths,
        )

    def extra_repr(self) -> str:
        return (
            f"n_state={self.n_state}, n_head={self.n_head}, dropout_rate={self.dropout.p}, "
            f"group_norm={self.group_norm}, sdpa={self.sdpa}, absolute_positions={self.absolute_positions}"
        )
