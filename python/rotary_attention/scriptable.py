"""A TorchScript-ready Python version of the original layers that calls the
`rotary_attention::rotary` operator.

Same constructors, parameters and state-dict keys as the original
(`rotary_attention.reference`), so a trained original's `state_dict()` loads
as is. Script it, save it, and run it from C++ with `torch::jit::load` (link
librotary_attention so the operator is registered):

    model = rotary_attention.scriptable.MultiHeadAttention(512, 8)
    model.load_state_dict(trained.state_dict())
    torch.jit.script(model.eval()).save("mha.pt")

Differences from the original, both because TorchScript cannot express them:
- `sdpa` is a per-module attribute (the original reads a class attribute);
- there is no `kv_cache` argument (the original's cache is a dict keyed by
  modules, driven by forward hooks); decode with the C++ `MultiHeadAttention`
  and `KVCache` instead.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _C  # noqa: F401  (registers the operator)


class Linear(nn.Linear):
    """Whisper's Linear (weight and bias cast to the input's dtype), scriptable."""

    def forward(self, x: Tensor) -> Tensor:
        bias = self.bias
        return F.linear(x, self.weight.to(x.dtype), None if bias is None else bias.to(x.dtype))


class RotationLayer(nn.Module):
    def __init__(self, embed_dim: int):
        super().__init__()
        self.rotation_matrix = nn.Parameter(torch.eye(embed_dim))

    def forward(self, x: Tensor) -> Tensor:
        return torch.matmul(x, self.rotation_matrix)

    def reset_parameters(self):
        nn.init.orthogonal_(self.rotation_matrix)


class RotaryEmbedding(nn.Module):
    def __init__(self, dim: int, base: float = 10000):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2).float() / dim))
        self.register_buffer("inv_freq", inv_freq)

    def rotate_queries_or_keys(self, x: Tensor) -> Tensor:
        return torch.ops.rotary_attention.rotary(x, self.inv_freq)

    def forward(self, x: Tensor) -> Tensor:
        return self.rotate_queries_or_keys(x)


class MultiHeadAttention(nn.Module):
    def __init__(
        self,
        n_state: int,
        n_head: int,
        dropout_rate: float = 0.01,
        gradient_checkpointing: bool = False,
        group_norm: bool = False,
        sdpa: bool = True,
    ):
        super().__init__()
        if n_state % n_head != 0 or (n_state // n_head) % 2 != 0:
            raise ValueError(f"n_state ({n_state}) must be divisible by n_head ({n_head}) with an even head dim")
        self.n_head = n_head
        self.n_state = n_state
        self.head_dim = n_state // n_head
        self.sdpa = sdpa

        self.query = Linear(n_state, n_state)
        self.key = Linear(n_state, n_state, bias=False)
        self.value = Linear(n_state, n_state)
        self.out = Linear(n_state, n_state)

        self.rotary_emb = RotaryEmbedding(dim=self.head_dim)
        self.rotation_layer = RotationLayer(self.head_dim)
        self.temperature = nn.Parameter(torch.ones(1) * (self.head_dim**-0.5))
        self.dropout = nn.Dropout(dropout_rate)

        self.group_norm = group_norm
        self.attn_ln = nn.GroupNorm(num_groups=1, num_channels=n_state) if group_norm else nn.LayerNorm(n_state)
        self.gradient_checkpointing = gradient_checkpointing

    def forward(self, x: Tensor, xa: Tensor | None = None, mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        if self.group_norm and x.shape[1] != self.n_state:
            raise RuntimeError("group_norm=True treats dim 1 (T) as channels: it needs T == n_state")
        x_norm = self.attn_ln(x)
        source = x_norm if xa is None else xa
        q = self.query(x_norm)
        k = self.key(source)
        v = self.value(source)

        q = q.view(q.shape[0], q.shape[1], self.n_head, -1)
        k = k.view(k.shape[0], k.shape[1], self.n_head, -1)
        q = self.rotation_layer(self.rotary_emb.rotate_queries_or_keys(q))
        k = self.rotation_layer(self.rotary_emb.rotate_queries_or_keys(k))
        q = q.view(q.shape[0], q.shape[1], -1)
        k = k.view(k.shape[0], k.shape[1], -1)

        wv, qk = self.qkv_attention(q, k, v, mask)
        return self.out(wv) + x, qk

    def qkv_attention(
        self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        n_batch, n_ctx, n_state = q.shape
        scale = self.temperature
        q = q.view(n_batch, n_ctx, self.n_head, self.head_dim).permute(0, 2, 1, 3)
        k = k.view(n_batch, k.shape[1], self.n_head, self.head_dim).permute(0, 2, 1, 3)
        v = v.view(n_batch, v.shape[1], self.n_head, self.head_dim).permute(0, 2, 1, 3)

        if self.sdpa:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=mask is not None and n_ctx > 1)
            return a.permute(0, 2, 1, 3).reshape(n_batch, n_ctx, n_state), None

        qk = (q * scale) @ (k.transpose(-2, -1) * scale)
        if mask is not None:
            qk = qk + mask[:n_ctx, :n_ctx]
        qk = qk.float()
        w = F.softmax(qk, dim=-1).to(q.dtype)
        w = self.dropout(w)
        out = (w @ v).permute(0, 2, 1, 3).reshape(n_batch, n_ctx, n_state)
        return out, qk.detach()
