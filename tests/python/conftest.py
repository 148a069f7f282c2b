import contextlib

import pytest
import torch

import rotary_attention
from rotary_attention import reference


randomize = reference.randomize_weights_


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
    """Forward: the port runs the original's ATen ops in the original's order and
    its rotary kernel reproduces the original's floats, so outputs are bitwise
    equal in fp32 and fp64 on both paths."""
    return (0.0, 0.0)


def grad_tolerances(sdpa):
    """Backward (fp64): the rotary backward is one fused inverse rotation where
    the original's autograd sums slice gradients, so they agree to rounding;
    the explicit path's fp32 softmax limits it to fp32 level."""
    return (1e-10, 1e-10) if sdpa else (2e-6, 2e-6)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)
