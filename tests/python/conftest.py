import contextlib

import pytest
import torch

import rotary_attention
from rotary_attention import reference


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Random, non-trivial weights: every parameter away from its initial value,
    an orthogonal non-identity rotation and a temperature away from head_dim**-0.5."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("rotation_matrix"):
                q, _ = torch.linalg.qr(torch.randn(p.shape, generator=g, dtype=torch.float64))
                p.copy_(q)
            elif name.endswith("temperature"):
                p.fill_(0.8 + 0.4 * torch.rand(1, generator=g).item())
            else:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 / p.shape[-1] ** 0.5) + 0.05)


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


def tolerances(dtype, sdpa):
    if dtype == torch.float64:
        # The explicit path's qk.float() softmax limits it to fp32 rounding.
        return (1e-12, 1e-12) if sdpa else (2e-6, 2e-6)
    return (2e-5, 2e-5)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
