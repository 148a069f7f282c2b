"""The kinds of KVCache: the default (buffers written in place, growing by doubling), one
with a capacity (preallocated, still growing), and the static cache (fixed shapes, for
compiled decoding). Decoding with each equals one causal pass; the original semantics
still equal Whisper's hooks bit for bit across growth; full, cleared and misused caches."""

import pytest
import torch
import torch._dynamo.testing

import rotary_attention
from conftest import DEVICES, IMPLEMENTATIONS, IMPLS, causal_mask, make_pair, original_sdpa, path_tolerance
from rotary_attention import reference

N_STATE, N_HEAD = 64, 4
KINDS = {
    "default": lambda impl: IMPLEMENTATIONS[impl].KVCache(),
    "capacity2": lambda impl: IMPLEMENTATIONS[impl].KVCache(2),  # grows at the second call
    "static": lambda impl: rotary_attention.KVCache(32, static=True),
}
CASES = [(impl, kind) for impl in IMPLS for kind in KINDS if not (impl == "cpp" and kind == "static")]
CASE_IDS = [f"{impl}-{kind}" for impl, kind in CASES]
# SDPA: fp64 rounding; the explicit path's fp32 softmax limits it to fp32 level.


def chunks(x, sizes):
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    assert sum(sizes) == x.shape[1]
    return [x[:, s : s + n] for s, n in zip(starts, sizes, strict=True)]


def absolute_layer(impl, sdpa, seed, dtype=torch.float64):
    ref, _ = make_pair(N_STATE, N_HEAD, sdpa=sdpa, dtype=dtype, seed=seed, impl=impl)
    layer = IMPLEMENTATIONS[impl].MultiHeadAttention(N_STATE, N_HEAD, sdpa=sdpa, absolute_positions=True)
    layer.load_state_dict(ref.state_dict())
    return ref, layer.to(dtype).eval()


@pytest.mark.parametrize(("impl", "kind"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
@pytest.mark.parametrize("sizes", [[1] * 9, [3, 1, 1, 1, 1, 1, 1], [4, 3, 1, 1]], ids=["tokens", "prompt3", "chunks"])
def test_decoding_with_each_cache_equals_one_causal_pass(impl, kind, sdpa, sizes):
    ref, layer = absolute_layer(impl, sdpa, seed=len(sizes))
    x = torch.randn(2, sum(sizes), N_STATE, dtype=torch.float64)
    mask = causal_mask(32, torch.float64)  # a static cache's explicit path reads (capacity, capacity)
    with original_sdpa(sdpa), torch.no_grad():
        full, _ = ref(x, mask=mask)
        cache = KINDS[kind](impl)
        steps = [layer(part, mask=mask, kv_cache=cache)[0] for part in chunks(x, sizes)]
    torch.testing.assert_close(torch.cat(steps, 1), full, **path_tolerance(torch.float64, sdpa))
    assert cache.length(layer) == x.shape[1]
    key, value = cache.get(layer)
    assert key.shape == value.shape == (2, x.shape[1], N_STATE)


@pytest.mark.parametrize(("impl", "kind"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
def test_decoder_block_with_cross_attention_and_each_cache(impl, kind, sdpa):
    ref_self, self_attn = absolute_layer(impl, sdpa, seed=5)
    ref_cross, cross_attn = absolute_layer(impl, sdpa, seed=6)
    x = torch.randn(3, 7, N_STATE, dtype=torch.float64)
    xa = torch.randn(3, 11, N_STATE, dtype=torch.float64)
    mask = causal_mask(32, torch.float64)
    with original_sdpa(sdpa), torch.no_grad():
        full = ref_cross(ref_self(x, mask=mask)[0], xa=xa)[0]
        cache = KINDS[kind](impl)
        steps = []
        for part in chunks(x, [2, 1, 3, 1]):
            h = self_attn(part, mask=mask, kv_cache=cache)[0]
            steps.append(cross_attn(h, xa=xa, kv_cache=cache)[0])
    torch.testing.assert_close(torch.cat(steps, 1), full, **path_tolerance(torch.float64, sdpa))
    assert cache.length(cross_attn) == 11 and cache.length(self_attn) == 7


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("capacity", [None, 1, 3], ids=["default", "capacity1", "capacity3"])
@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
def test_original_semantics_equal_whisper_hooks_bitwise_across_growth(impl, capacity, sdpa):
    """Buffers that grow (capacity 1: at every early step) still give, at every step, what
    the hooks' concatenation gives, bit for bit, and the cached keys are the hooks'."""
    ref, port = make_pair(N_STATE, N_HEAD, sdpa=sdpa, dtype=torch.float32, seed=21, impl=impl)
    x = torch.randn(2, 12, N_STATE)
    mask = causal_mask(16)
    hooks_cache, hooks = reference.install_kv_cache_hooks(ref, n_text_ctx=16)
    cache = IMPLEMENTATIONS[impl].KVCache() if capacity is None else IMPLEMENTATIONS[impl].KVCache(capacity)
    with original_sdpa(sdpa), torch.no_grad():
        for i, part in enumerate(chunks(x, [3] + [1] * 9)):
            want = ref(part, mask=mask, kv_cache=hooks_cache)[0]
            got = port(part, mask=mask, kv_cache=cache)[0]
            torch.testing.assert_close(got, want, rtol=0, atol=0, msg=f"step {i}")
            key, value = cache.get(port)
            torch.testing.assert_close(key, hooks_cache[ref.key], rtol=0, atol=0)
            torch.testing.assert_close(value, hooks_cache[ref.value], rtol=0, atol=0)
    for h in hooks:
        h.remove()


@pytest.mark.parametrize("impl", IMPLS)
def test_buffers_grow_by_doubling_and_keep_the_cached_steps(impl):
    _, layer = absolute_layer(impl, True, seed=1, dtype=torch.float32)
    cache = IMPLEMENTATIONS[impl].KVCache(4)
    x = torch.randn(1, 20, N_STATE)
    capacities = []
    with torch.no_grad():
        for part in chunks(x, [3] + [1] * 17):
            layer(part, kv_cache=cache)
            capacities.append(capacity_of(cache, layer))
    assert capacities[:3] == [4, 4, 8] and capacities[-1] == 32  # 4 -> 8 -> 16 -> 32
    want = IMPLEMENTATIONS[impl].KVCache()
    with torch.no_grad():
        layer(x, kv_cache=want)
    torch.testing.assert_close(cache.get(layer)[0], want.get(layer)[0], rtol=1e-6, atol=1e-6)


def capacity_of(cache, layer):
    if isinstance(cache, rotary_attention.KVCache):
        return cache._entry(layer).key.shape[1]
    return cache.capacity(layer)


def test_static_cache_full_is_a_clear_error_naming_the_capacity():
    _, layer = absolute_layer("module", True, seed=2, dtype=torch.float32)
    cache = rotary_attention.KVCache(5, static=True)
    with torch.no_grad():
        layer(torch.randn(1, 4, N_STATE), kv_cache=cache)
        layer(torch.randn(1, 1, N_STATE), kv_cache=cache)
        assert cache.length(layer) == 5
        with pytest.raises(RuntimeError, match="capacity of 5 steps is full"):
            layer(torch.randn(1, 1, N_STATE), kv_cache=cache)
        with pytest.raises(RuntimeError, match="capacity of 5 steps is full"):
            layer(torch.randn(1, 6, N_STATE), kv_cache=rotary_attention.KVCache(5, static=True))  # a long prompt
    with pytest.raises(ValueError, match="needs a capacity"):
        rotary_attention.KVCache(static=True)
    plain = rotary_attention.MultiHeadAttention(N_STATE, N_HEAD)  # original semantics
    with pytest.raises(RuntimeError, match="needs absolute_positions=True"), torch.no_grad():
        plain(torch.randn(1, 1, N_STATE), kv_cache=rotary_attention.KVCache(4, static=True))


@pytest.mark.parametrize(("impl", "kind"), CASES, ids=CASE_IDS)
def test_clear_and_reuse_for_a_new_sequence(impl, kind):
    _, layer = absolute_layer(impl, True, seed=3)
    cache = KINDS[kind](impl)
    a, b = torch.randn(1, 6, N_STATE, dtype=torch.float64), torch.randn(2, 5, N_STATE, dtype=torch.float64)
    with torch.no_grad():
        for i in range(6):
            layer(a[:, i : i + 1], kv_cache=cache)
        cache.clear()
        assert len(cache) == 0 and cache.length(layer) == 0
        got = [layer(b[:, i : i + 1], kv_cache=cache)[0] for i in range(5)]  # another batch size too
        fresh = KINDS[kind](impl)
        want = [layer(b[:, i : i + 1], kv_cache=fresh)[0] for i in range(5)]
    torch.testing.assert_close(torch.cat(got, 1), torch.cat(want, 1), rtol=0, atol=0)


@pytest.mark.parametrize(("impl", "kind"), CASES, ids=CASE_IDS)
def test_a_cache_used_with_a_layer_of_another_size_or_dtype_is_a_clear_error(impl, kind):
    mha = IMPLEMENTATIONS[impl].MultiHeadAttention
    small = mha(N_STATE, N_HEAD, absolute_positions=True).eval()
    wide = mha(2 * N_STATE, N_HEAD, absolute_positions=True).eval()
    cache = KINDS[kind](impl)
    with torch.no_grad():
        small(torch.randn(1, 2, N_STATE), kv_cache=cache)
        if isinstance(cache, rotary_attention.KVCache):  # the entry handed to another layer
            cache._entries[id(wide)] = cache._entries[id(small)]
            with pytest.raises(RuntimeError, match="KVCache: .*cannot hold"):
                wide(torch.randn(1, 1, 2 * N_STATE), kv_cache=cache)
        with pytest.raises(RuntimeError, match="KVCache: "):
            small(torch.randn(1, 1, N_STATE, dtype=torch.float64), kv_cache=cache)  # another dtype
        with pytest.raises(RuntimeError, match="KVCache: "):
            small(torch.randn(3, 1, N_STATE), kv_cache=cache)  # another batch size
        assert cache.length(small) == 2  # failed calls cached nothing


@pytest.mark.parametrize(("impl", "kind"), CASES, ids=CASE_IDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_16_bit_caches(impl, kind, dtype):
    """A 16-bit module decoding 16-bit tokens: the buffers hold the 16-bit keys, and the
    steps agree with one causal pass of the same module to 16-bit rounding."""
    _, layer = absolute_layer(impl, True, seed=4, dtype=dtype)
    x = torch.randn(2, 8, N_STATE, dtype=dtype)
    mask = causal_mask(32, dtype)
    cache = KINDS[kind](impl)
    with torch.no_grad():
        full = layer(x, mask=mask)[0]
        steps = torch.cat([layer(p, mask=mask, kv_cache=cache)[0] for p in chunks(x, [3, 1, 1, 1, 1, 1])], 1)
    key, _ = cache.get(layer)
    assert key.dtype == dtype
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(steps - x, full - x, rtol=8 * eps, atol=8 * eps)


def test_compiled_static_decode_step_compiles_once():
    _, layer = absolute_layer("module", True, seed=7, dtype=torch.float32)
    x = torch.randn(2, 20, N_STATE)
    mask = causal_mask(64)
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")  # counts, then compiles
    cache = rotary_attention.KVCache(64, static=True)

    def step(token):
        return layer(token, mask=mask, kv_cache=cache)[0]

    compiled = torch.compile(step, backend=counter, fullgraph=True)
    eager_cache = rotary_attention.KVCache()
    with torch.no_grad():
        layer(x[:, :4], mask=mask, kv_cache=cache)  # the prompt, eager
        got = [compiled(x[:, i : i + 1]) for i in range(4, 20)]
        layer(x[:, :4], mask=mask, kv_cache=eager_cache)
        want = [layer(x[:, i : i + 1], mask=mask, kv_cache=eager_cache)[0] for i in range(4, 20)]
    assert counter.frame_count == 1  # one compilation for all 16 steps
    assert cache.length(layer) == 20
    torch.testing.assert_close(torch.cat(got, 1), torch.cat(want, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_static_cache_on_device(device):
    _, layer = absolute_layer("module", True, seed=8, dtype=torch.float32)
    layer.to(device)
    x = torch.randn(1, 6, N_STATE, device=device)
    with torch.no_grad():
        full = layer(x, mask=causal_mask(8).to(device))[0]
        cache = rotary_attention.KVCache(8, static=True)
        steps = [layer(x[:, i : i + 1], kv_cache=cache)[0] for i in range(6)]
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)
    assert cache.get(layer)[0].device.type == device


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_inference_writes_rotated_keys_into_their_slot_with_the_same_bits(sdpa, dtype):
    """Under no_grad with batch 1 the operator rotates the new keys in place and the
    rotation layer writes them straight into the cache (no temporary); with grad on it
    takes the general path (rotate, then copy). Both cache the same bits; the outputs are
    the same bits too where both attend alike (without grad, fp32 on the SDPA path runs
    decode_attention, not SDPA: equal to fp32 rounding)."""
    _, layer = absolute_layer("module", sdpa, seed=9, dtype=dtype)
    x = torch.randn(1, 12, N_STATE, dtype=dtype)
    mask = causal_mask(16, dtype)
    in_slot, general = rotary_attention.KVCache(), rotary_attention.KVCache()
    parts = chunks(x, [3] + [1] * 9)
    with torch.no_grad():
        got = [layer(p, mask=mask, kv_cache=in_slot)[0] for p in parts]
    with torch.enable_grad():
        want = [layer(p, mask=mask, kv_cache=general)[0].detach() for p in parts]
    exact = not (sdpa and dtype == torch.float32)
    tol = dict(rtol=0, atol=0) if exact else dict(rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.cat(got, 1), torch.cat(want, 1), **tol)
    torch.testing.assert_close(in_slot.get(layer)[0], general.get(layer)[0], rtol=0, atol=0)
