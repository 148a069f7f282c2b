"""Helpers shared by the tests: the original layers paired with the port,
masks, rotary references written independently of the kernels, and the
`device` parameter (CUDA cases skip, with the reason, where there is no GPU)."""

import contextlib

import pytest
import torch

import rotary_attention
from rotary_attention import reference

randomize = reference.randomize_weights_
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LAYOUTS = ["interleaved_to_half", "interleaved", "half"]

NEEDS_CUDA = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
    pytest.mark.skipif(
        not rotary_attention.built_with_cuda(), reason="the CUDA kernel was not built (no nvcc or CPU-only torch)"
    ),
]
# Parametrize a test with `@pytest.mark.parametrize("device", DEVICES)`.
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=NEEDS_CUDA)]


@contextlib.contextmanager
def original_sdpa(enabled: bool):
    """The original reads the class attribute MultiHeadAttention.sdpa."""
    saved = reference.MultiHeadAttention.sdpa
    reference.MultiHeadAttention.sdpa = enabled
    try:
        yield
    finally:
        reference.MultiHeadAttention.sdpa = saved


def make_pair(n_state, n_head, *, sdpa=True, group_norm=False, dtype=torch.float32, seed=0, dropout_rate=0.01):
    """The original layer with random weights and the C++ port loaded from its state dict."""
    ref = reference.MultiHeadAttention(n_state, n_head, dropout_rate=dropout_rate, group_norm=group_norm)
    randomize(ref, seed)
    port = rotary_attention.MultiHeadAttention(
        n_state, n_head, dropout_rate=dropout_rate, group_norm=group_norm, sdpa=sdpa
    )
    port.load_state_dict(ref.state_dict())
    ref.to(dtype).eval()
    port.to(dtype).eval()
    return ref, port


def causal_mask(n, dtype=torch.float32):
    return torch.empty(n, n).fill_(float("-inf")).triu_(1).to(dtype)


def grad_tolerances(sdpa):
    """Backward (fp64): the rotary backward is one fused inverse rotation where
    the original's autograd sums slice gradients, so they agree to rounding;
    the explicit path's fp32 softmax limits it to fp32 level."""
    return (1e-10, 1e-10) if sdpa else (2e-6, 2e-6)


def inv_freq(dim, dtype=torch.float32, device="cpu"):
    """The original's frequencies for `dim` rotated features."""
    return reference.RotaryEmbedding(dim).inv_freq.to(device=device, dtype=dtype)


def original_rotate(x, inv_freq):
    """The original rotate_queries_or_keys, with a given inv_freq."""
    emb = reference.RotaryEmbedding(2 * inv_freq.numel()).to(x.device)
    emb.inv_freq = inv_freq
    return emb.rotate_queries_or_keys(x)


def table_reference(x, f, positions=None, offset=0, layout="interleaved_to_half", rotary_dim=-1):
    """Gathers cos/sin rows from a table indexed by position, then applies the
    layout's formula; written independently of the kernels. Angles are rounded
    to f's dtype, as the operator (and the original) computes them; everything
    else is fp64. Runs on x's device; returns fp64."""
    B, T, H, D = x.shape
    rd = D if rotary_dim < 0 else rotary_dim
    half = rd // 2
    max_pos = 20000
    table = (torch.arange(max_pos, device=f.device).to(f.dtype)[:, None] * f[None]).double()  # (P, half)
    cos_t, sin_t = table.cos(), table.sin()
    if positions is None:
        idx = torch.arange(T, device=x.device).expand(B, T) + offset
    else:
        idx = (positions if positions.dim() == 2 else positions.expand(B, T)).long() + offset
    cos = cos_t[idx][:, :, None, :]  # (B, T, 1, half)
    sin = sin_t[idx][:, :, None, :]
    xd = x.double()
    rot, tail = xd[..., :rd], xd[..., rd:]
    if layout in ("interleaved_to_half", "interleaved"):
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
    else:
        x1, x2 = rot[..., :half], rot[..., half:]
    o1, o2 = x1 * cos - x2 * sin, x1 * sin + x2 * cos
    if layout == "interleaved":
        out = torch.stack([o1, o2], -1).flatten(-2)
    else:
        out = torch.cat([o1, o2], -1)
    return torch.cat([out, tail], -1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
