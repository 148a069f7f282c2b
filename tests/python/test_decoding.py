"""absolute_positions: token-by-token decoding equals one causal pass; and
16-bit inputs end to end."""

import pytest
import torch

import rotary_attention
from conftest import (
    DEVICES,
    IMPLEMENTATIONS,
    IMPLS,
    assert_rotation_close,
    causal_mask,
    make_pair,
    original_sdpa,
    path_tolerance,
    table_reference,
)

N_STATE, N_HEAD = 64, 4


def chunks(x, sizes):
    out, start = [], 0
    for n in sizes:
        out.append(x[:, start : start + n])
        start += n
    assert start == x.shape[1]
    return out


def port_pair(sdpa, dtype=torch.float64, seed=0, impl="module"):
    """The original plus two ports with its weights: default and absolute_positions."""
    ref, port = make_pair(N_STATE, N_HEAD, sdpa=sdpa, dtype=dtype, seed=seed, impl=impl)
    absolute = IMPLEMENTATIONS[impl].MultiHeadAttention(N_STATE, N_HEAD, sdpa=sdpa, absolute_positions=True)
    absolute.load_state_dict(ref.state_dict())
    absolute.to(dtype).eval()
    return ref, port, absolute


# SDPA: agreement to fp64 rounding; explicit path: its qk.float() softmax limits it to fp32 level.


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
@pytest.mark.parametrize("sizes", [[1] * 9, [3, 1, 1, 1, 1, 1, 1], [4, 3, 1, 2]], ids=["tokens", "prompt", "chunks"])
def test_decoding_equals_one_causal_pass(impl, sdpa, sizes):
    ref, _, absolute = port_pair(sdpa, seed=len(sizes), impl=impl)
    x = torch.randn(2, sum(sizes), N_STATE, dtype=torch.float64)
    mask = causal_mask(16, torch.float64)
    with original_sdpa(sdpa), torch.no_grad():
        full, _ = ref(x, mask=mask)  # the original's own full causal pass
        full_port, _ = absolute(x, mask=mask)
        cache = IMPLEMENTATIONS[impl].KVCache()
        steps = [absolute(part, mask=mask, kv_cache=cache)[0] for part in chunks(x, sizes)]
    torch.testing.assert_close(full_port, full, rtol=0, atol=0)  # no cache: the original's pass
    torch.testing.assert_close(torch.cat(steps, 1), full, **path_tolerance(torch.float64, sdpa))
    assert cache.length(absolute) == x.shape[1]


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
def test_the_original_decoding_does_not_equal_its_full_pass(sdpa):
    """Why the option exists: the original rotates each new query at position 0."""
    ref, port, _ = port_pair(sdpa, seed=3)
    x = torch.randn(1, 6, N_STATE, dtype=torch.float64)
    mask = causal_mask(8, torch.float64)
    with original_sdpa(sdpa), torch.no_grad():
        full, _ = ref(x, mask=mask)
        cache = rotary_attention.KVCache()
        steps = torch.cat([port(x[:, i : i + 1], mask=mask, kv_cache=cache)[0] for i in range(6)], 1)
    torch.testing.assert_close(steps[:, 0], full[:, 0])  # the first token has nothing to get wrong
    assert not torch.allclose(steps, full, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
def test_decoder_block_with_cross_attention(sdpa):
    ref_self, _, abs_self = port_pair(sdpa, seed=5)
    ref_cross, _, abs_cross = port_pair(sdpa, seed=6)
    x = torch.randn(2, 7, N_STATE, dtype=torch.float64)
    xa = torch.randn(2, 11, N_STATE, dtype=torch.float64)
    mask = causal_mask(10, torch.float64)
    with original_sdpa(sdpa), torch.no_grad():
        full = ref_cross(ref_self(x, mask=mask)[0], xa=xa)[0]
        cache = rotary_attention.KVCache()
        steps = []
        for part in chunks(x, [2, 1, 3, 1]):
            h = abs_self(part, mask=mask, kv_cache=cache)[0]
            steps.append(abs_cross(h, xa=xa, kv_cache=cache)[0])
    torch.testing.assert_close(torch.cat(steps, 1), full, **path_tolerance(torch.float64, sdpa))
    assert cache.length(abs_cross) == 11


def test_absolute_positions_mask_too_small_is_a_clear_error():
    _, _, absolute = port_pair(False)
    cache = rotary_attention.KVCache()
    mask = causal_mask(4, torch.float64)
    x = torch.randn(1, 3, N_STATE, dtype=torch.float64)
    absolute(x, mask=mask, kv_cache=cache)
    with pytest.raises(RuntimeError, match="absolute_positions"):
        absolute(x, mask=mask, kv_cache=cache)  # positions 3..5 are past the mask


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
def test_16_bit_input_runs_end_to_end(impl, dtype, sdpa):
    """fp32 module, 16-bit input: the original fails on mixed dtypes; the port
    computes rotary and the rotation in fp32 and attention in the input dtype.

    Tolerance: the attention part (out - x) passes through about four stages
    rounded to the input dtype (q/k/v projections, attention, output
    projection), each within half an ulp (eps / 2) relative, so its norm-wise
    error against the fp32 original is within 2 eps (bf16 0.016, fp16 0.002;
    measured 0.005 and 0.0006). Query and key weights are scaled up so that
    attention is sharp and positions matter: decoding with the positions
    ignored (the original's semantics) is off by 0.04 or more, outside it."""
    ref, port, absolute = port_pair(sdpa, dtype=torch.float32, seed=7, impl=impl)
    with torch.no_grad():
        ref.query.weight.mul_(3)
        ref.key.weight.mul_(3)
    port.load_state_dict(ref.state_dict())
    absolute.load_state_dict(ref.state_dict())
    T = 24
    x = torch.randn(2, T, N_STATE)
    mask = causal_mask(T)
    with original_sdpa(sdpa), torch.no_grad():
        want, _ = ref(x, mask=mask)
        if sdpa:
            with pytest.raises(RuntimeError):
                ref(x.to(dtype), mask=mask)
        got, qk = port(x.to(dtype), mask=mask)
        cache = IMPLEMENTATIONS[impl].KVCache()
        steps = torch.cat([absolute(x[:, i : i + 1].to(dtype), mask=mask, kv_cache=cache)[0] for i in range(T)], 1)
        cache = IMPLEMENTATIONS[impl].KVCache()
        positions_ignored = torch.cat(
            [port(x[:, i : i + 1].to(dtype), mask=mask, kv_cache=cache)[0] for i in range(T)], 1
        )
    assert got.dtype == dtype and steps.dtype == dtype
    if not sdpa:
        assert qk.dtype == torch.float32

    def error(out):
        return ((out.float() - want).norm() / (want - x).norm()).item()

    tol = 2 * torch.finfo(dtype).eps
    assert error(got) <= tol
    assert error(steps) <= tol
    assert error(positions_ignored) > tol


@pytest.mark.parametrize("impl", IMPLS)
def test_cached_keys_are_rotated_at_their_absolute_positions(impl):
    """Compared directly (a shift by one position is visible here even where
    attention scores would hide it): keys projected, rotated at 0..T-1 by the
    fp64 table formula, then multiplied by R."""
    ref, _, absolute = port_pair(True, seed=5, impl=impl)
    x = torch.randn(2, 6, N_STATE, dtype=torch.float64)
    cache = IMPLEMENTATIONS[impl].KVCache()
    with torch.no_grad():
        for part in chunks(x, [2, 1, 3]):
            absolute(part, mask=causal_mask(8, torch.float64), kv_cache=cache)
        key, value = cache.get(absolute)
        k = ref.key(ref.attn_ln(x)).view(2, 6, N_HEAD, -1)
        f = ref.rotary_emb.inv_freq.double()
        want_k = (table_reference(k, f) @ ref.rotation_layer.rotation_matrix).view(2, 6, N_STATE)
    torch.testing.assert_close(key, want_k, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(value, ref.value(ref.attn_ln(x)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_cache_stores_detached_tensors(impl):
    _, port, absolute = port_pair(True, seed=2, impl=impl)
    for model in (port, absolute):
        cache = IMPLEMENTATIONS[impl].KVCache()
        x = torch.randn(1, 3, N_STATE, dtype=torch.float64, requires_grad=True)
        for i in range(3):
            model(x[:, i : i + 1], mask=causal_mask(4, torch.float64), kv_cache=cache)
        key, value = cache.get(model)
        assert not key.requires_grad and not value.requires_grad


def test_fp16_module_keeps_positions_past_2048():
    """Angles are computed in fp32 even in an fp16 module: at position 3000 an
    fp16 angle would be off by up to 1 radian."""
    emb = rotary_attention.RotaryEmbedding(16).half()
    x = torch.randn(1, 3100, 2, 16)
    got = emb.rotate_queries_or_keys(x.half())
    f = rotary_attention.RotaryEmbedding(16).inv_freq  # fp32 frequencies
    assert_rotation_close(got[:, 2048:], table_reference(x.half(), f.half().float())[:, 2048:], x.half(), f)


@pytest.mark.parametrize("device", DEVICES)
def test_absolute_positions_decoding_on_device(device):
    ref, _ = make_pair(64, 4, sdpa=True, seed=9)
    model = rotary_attention.MultiHeadAttention(64, 4, absolute_positions=True)
    model.load_state_dict(ref.state_dict())
    model.to(device).eval()
    x = torch.randn(1, 6, 64, device=device)
    mask = causal_mask(8).to(device)
    with torch.no_grad():
        full, _ = model(x, mask=mask)
        cache = rotary_attention.KVCache()
        steps = torch.cat([model(x[:, i : i + 1], mask=mask, kv_cache=cache)[0] for i in range(6)], 1)
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-4)
