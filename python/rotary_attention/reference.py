"""The user's original attention layers, verbatim, with the helpers they assume.

`RotationLayer`, `RotaryEmbedding` and `MultiHeadAttention` below are the
original code unchanged (DESIGN.md section 1 lists what they really do). The
helpers around them are Whisper's: `Linear` casts its weight and bias to the
input dtype, `GroupNorm` is `torch.nn.GroupNorm`, and SDPA is available.

`install_kv_cache_hooks` reproduces Whisper's forward hooks that drive the
original's `kv_cache` dict. Use this module to check the C++-backed layers
against the original in the same process.
"""

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.functional import scaled_dot_product_attention

SDPA_AVAILABLE = True
GroupNorm = nn.GroupNorm


class Linear(nn.Linear):
    """Whisper's Linear: weight and bias are cast to the input's dtype."""

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(
            x,
            self.weight.to(x.dtype),
            None if self.bias is None else self.bias.to(x.dtype),
        )


class RotationLayer(nn.Module):
    def __init__(self, embed_dim: int):
        super().__init__()
        self.rotation_matrix = nn.Parameter(torch.eye(embed_dim))

    def forward(self, x):
        # Apply the rotational transformation
        rotated_x = torch.matmul(x, self.rotation_matrix)
        return rotated_x

    def reset_parameters(self):
        nn.init.orthogonal_(self.rotation_matrix)

class RotaryEmbedding(nn.Module):
    def __init__(self, dim, base=10000):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer('inv_freq', inv_freq)

    def rotate_queries_or_keys(self, x):
        sinusoid_inp = torch.einsum('i , j -> i j', torch.arange(x.shape[1], device=x.device), self.inv_freq) 
        sin = sinusoid_inp.sin()[None, :, None, :] 
        cos = sinusoid_inp.cos()[None, :, None, :]
        x1, x2 = x[..., ::2], x[..., 1::2]
        x = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
        return x


class MultiHeadAttention(nn.Module):
    sdpa = True

    def __init__(self, n_state: int, n_head: int, dropout_rate=0.01, gradient_checkpointing=False, group_norm=False):
        super().__init__()
        self.n_head = n_head
        self.n_state = n_state
        self.head_dim = n_state // n_head

        self.query = Linear(n_state, n_state)
        self.key = Linear(n_state, n_state, bias=False)
        self.value = Linear(n_state, n_state)
        self.out = Linear(n_state, n_state)

        self.rotary_emb = RotaryEmbedding(dim=self.head_dim)
        self.rotation_layer = RotationLayer(self.head_dim) 
        self.temperature = nn.Parameter(torch.ones(1) * (self.head_dim ** -0.5))
        self.dropout = nn.Dropout(dropout_rate)

        self.group_norm = group_norm
        self.attn_ln = GroupNorm(num_groups=1, num_channels=n_state) if group_norm else nn.LayerNorm(n_state)

        self.gradient_checkpointing = gradient_checkpointing

    def forward(self, x: Tensor, xa: Optional[Tensor] = None, mask: Optional[Tensor] = None, kv_cache: Optional[dict] = None):
        x_norm = self.attn_ln(x)

        q = self.query(x_norm)
        k = self.key(x_norm if xa is None else xa)
        v = self.value(x_norm if xa is None else xa)

        if kv_cache is not None and self.key in kv_cache:
            k = kv_cache[self.key]
            v = kv_cache[self.value]

        q = q.view(q.shape[0], q.shape[1], self.n_head, -1)
        k = k.view(k.shape[0], k.shape[1], self.n_head, -1)

        # Apply rotary embeddings and rotational layer
        q = self.rotary_emb.rotate_queries_or_keys(q)
        k = self.rotary_emb.rotate_queries_or_keys(k)
        q = self.rotation_layer(q)
        k = self.rotation_layer(k)

        q = q.view(q.shape[0], q.shape[1], -1)
        k = k.view(k.shape[0], k.shape[1], -1)

        wv, qk = self.qkv_attention(q, k, v, mask)

        return self.out(wv) + x, qk

    def qkv_attention(self, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor] = None) -> Tuple[Tensor, Optional[Tensor]]:
        n_batch, n_ctx, n_state = q.shape
        scale = self.temperature

        q = q.view(n_batch, n_ctx, self.n_head, self.head_dim).permute(0, 2, 1, 3)
        k = k.view(n_batch, k.shape[1], self.n_head, self.head_dim).permute(0, 2, 1, 3)
        v = v.view(n_batch, v.shape[1], self.n_head, self.head_dim).permute(0, 2, 1, 3)

        if SDPA_AVAILABLE and MultiHeadAttention.sdpa:
            a = scaled_dot_product_attention(q, k, v, is_causal=mask is not None and n_ctx > 1)
            out = a.permute(0, 2, 1, 3).reshape(n_batch, n_ctx, n_state)
            qk = None
        else:
            qk = (q * scale) @ (k.transpose(-2, -1) * scale)
            if mask is not None:
                qk += mask[:n_ctx, :n_ctx]
            qk = qk.float()

            w = F.softmax(qk, dim=-1).to(q.dtype)
            w = self.dropout(w)
            out = (w @ v).permute(0, 2, 1, 3).reshape(n_batch, n_ctx, n_state)
            qk = qk.detach()

        return out, qk


def randomize_weights_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random, non-trivial weights for parity checks: every parameter away from
    its initial value; rotation matrices neither the identity nor orthogonal
    (an orthogonal R cancels in q @ k^T, so a dropped or transposed rotation
    would go unseen; trained rotations are not orthogonal); temperatures away
    from head_dim**-0.5. Works on the original and the port."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("rotation_matrix"):
                n = p.shape[0]
                p.copy_(torch.eye(n) + torch.randn(n, n, generator=g) * (0.5 / n ** 0.5))
            elif name.endswith("temperature"):
                p.fill_(0.8 + 0.4 * torch.rand(1, generator=g).item())
            else:
                p.copy_(torch.randn(tuple(p.shape), generator=g) * (1.0 / p.shape[-1] ** 0.5) + 0.05)
    return model


def install_kv_cache_hooks(
    model: nn.Module, n_text_ctx: int = 448, cache: Optional[dict] = None, layer_type: type = None
):
    """Whisper's `install_kv_cache_hooks`: returns `(cache, hooks)`.

    Each `MultiHeadAttention` in `model` gets forward hooks on `key` and
    `value` that store their output in `cache` the first time (or when it is
    longer than `n_text_ctx`, i.e. cross-attention over audio features) and
    otherwise append the new step to what is cached. Pass `cache` as the
    forward's `kv_cache`; call `hook.remove()` on each hook when done.
    `layer_type`: the attention class to hook (default: the original's).
    """
    layer_type = MultiHeadAttention if layer_type is None else layer_type
    cache = {} if cache is None else cache
    hooks: List = []

    def save_to_cache(module, _, output):
        if module not in cache or output.shape[1] > n_text_ctx:
            cache[module] = output
        else:
            cache[module] = torch.cat([cache[module], output], dim=1).detach()
        return cache[module]

    for layer in model.modules():
        if isinstance(layer, layer_type):
            hooks.append(layer.key.register_forward_hook(save_to_cache))
            hooks.append(layer.value.register_forward_hook(save_to_cache))
    return cache, hooks


class OriginalGivenOneAudioPerRow(MultiHeadAttention):
    """The original, handed xa repeated for every row of x. openai-whisper's
    loop (since 2024-09) passes one audio's features to a whole beam, which the
    original's `view` cannot broadcast: this is the original's answer for it
    (what Whisper's loop gave before), for comparisons with a beam search."""

    def forward(self, x, xa=None, mask=None, kv_cache=None):
        if xa is not None and xa.shape[0] != x.shape[0]:
            xa = xa.expand(x.shape[0], -1, -1)
        return super().forward(x, xa, mask, kv_cache)
