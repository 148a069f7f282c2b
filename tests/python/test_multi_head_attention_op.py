"""torch.ops.rotary_attention.multi_head_attention, the layer math as one
dispatcher operator: against the original layer, opcheck, torch.compile and
torch.export with dynamic batch and sequence sizes."""

import pytest
import torch

from conftest import causal_mask, make_pair, original_sdpa, randomize
from rotary_attention import reference

mha_op = torch.ops.rotary_attention.multi_head_attention


def weights(ref):
    """The operator's weight arguments, from an original layer."""
    return dict(
        norm_weight=ref.attn_ln.weight,
        norm_bias=ref.attn_ln.bias,
        group_norm=isinstance(ref.attn_ln, torch.nn.GroupNorm),
        query_weight=ref.query.weight,
        query_bias=ref.query.bias,
        key_weight=ref.key.weight,
        value_weight=ref.value.weight,
        value_bias=ref.value.bias,
        out_weight=ref.out.weight,
        out_bias=ref.out.bias,
        inv_freq=ref.rotary_emb.inv_freq,
        rotation_matrix=ref.rotation_layer.rotation_matrix,
        temperature=ref.temperature,
        n_head=ref.n_head,
    )


def arguments(ref, sdpa):
    """Every argument after (x, xa, mask): the weights and a cache-free inference call."""
    return dict(
        weights(ref),
        sdpa=sdpa,
        dropout_p=0.0,
        cached_key=None,
        cached_value=None,
        query_position=None,
    )


def call(ref, x, xa=None, mask=None, sdpa=True):
    out, qk, _, _ = mha_op(x, xa, mask, **arguments(ref, sdpa))
    return out, qk


class Block(torch.nn.Module):
    """Self- then cross-attention through the operator, with the original's weights."""

    def __init__(self, ref_self, ref_cross, sdpa):
        super().__init__()
        self.ref_self, self.ref_cross, self.sdpa = ref_self, ref_cross, sdpa

    def forward(self, x, xa, mask=None):
        x = call(self.ref_self, x, mask=mask, sdpa=self.sdpa)[0]
        return call(self.ref_cross, x, xa=xa, sdpa=self.sdpa)[0]


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
def test_operator_is_bitwise_the_original(sdpa):
    ref, _ = make_pair(64, 4, sdpa=sdpa, dtype=torch.float64, seed=3)
    x = torch.randn(2, 6, 64, dtype=torch.float64)
    xa = torch.randn(2, 9, 64, dtype=torch.float64)
    with original_sdpa(sdpa), torch.no_grad():
        for xa_i, mask in [(None, None), (None, causal_mask(8, torch.float64)), (xa, None)]:
            want, want_qk = ref(x, xa=xa_i, mask=mask)
            got, qk = call(ref, x, xa_i, mask, sdpa)
            torch.testing.assert_close(got, want, rtol=0, atol=0)
            if sdpa:
                assert qk.numel() == 0 and want_qk is None
            else:
                torch.testing.assert_close(qk, want_qk, rtol=0, atol=0)


def test_opcheck():
    ref = randomize(reference.MultiHeadAttention(32, 4), seed=1).eval()
    x = torch.randn(2, 5, 32, requires_grad=True)
    torch.library.opcheck(mha_op, (x, None, causal_mask(5)), arguments(ref, sdpa=False))


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
def test_torch_compile_fullgraph_forward_and_backward(sdpa):
    ref_self = randomize(reference.MultiHeadAttention(32, 4), seed=1).eval()
    ref_cross = randomize(reference.MultiHeadAttention(32, 4), seed=2).eval()
    block = Block(ref_self, ref_cross, sdpa)
    compiled = torch.compile(block, fullgraph=True)
    x = torch.randn(2, 5, 32, requires_grad=True)
    xa = torch.randn(2, 7, 32)
    mask = causal_mask(5)
    want = block(x, xa, mask)
    got = compiled(x, xa, mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(want)
    (want_grad,) = torch.autograd.grad(want, x, g)
    (got_grad,) = torch.autograd.grad(got, x, g)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("masked", [False, True], ids=["no_mask", "mask"])
def test_torch_export_with_dynamic_batch_and_sequence(masked):
    ref_self = randomize(reference.MultiHeadAttention(32, 4), seed=1).eval()
    ref_cross = randomize(reference.MultiHeadAttention(32, 4), seed=2).eval()
    block = Block(ref_self, ref_cross, sdpa=True)
    batch, seq, audio = torch.export.Dim("batch"), torch.export.Dim("seq", min=2), torch.export.Dim("audio")
    x, xa = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    mask = causal_mask(16) if masked else None
    shapes = {"x": {0: batch, 1: seq}, "xa": {0: batch, 1: audio}, "mask": None}
    ep = torch.export.export(block, (x, xa, mask), dynamic_shapes=shapes)
    for b, t, s in [(2, 5, 7), (3, 9, 4), (1, 2, 11)]:
        x, xa = torch.randn(b, t, 32), torch.randn(b, s, 32)
        torch.testing.assert_close(ep.module()(x, xa, mask), block(x, xa, mask), rtol=1e-5, atol=1e-5)
