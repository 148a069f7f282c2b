"""Cached decoding at absolute positions through decode_attention, and batches whose rows
hold different numbers of cached steps (KVCache.crop): decoding the batch in one call per
step equals decoding each row alone; rows can be dropped (reorder) on the way."""

import pytest
import torch

import rotary_attention
from conftest import causal_mask, path_tolerance, randomize
from rotary_attention import reference

N_STATE, N_HEAD = 64, 4
FP32_TOL = path_tolerance(torch.float32)


def layers(sdpa=True, dtype=torch.float32, cross=False):
    made = []
    for seed in (1, 2) if cross else (1,):
        ref = randomize(reference.MultiHeadAttention(N_STATE, N_HEAD), seed)
        layer = rotary_attention.MultiHeadAttention(N_STATE, N_HEAD, sdpa=sdpa, absolute_positions=True)
        layer.load_state_dict(ref.state_dict())
        made.append(layer.to(dtype).eval())
    return made


def block(made, x, mask, cache, xa):
    h = made[0](x, mask=mask, kv_cache=cache)[0]
    return made[1](h, xa=xa, kv_cache=cache)[0] if len(made) > 1 else h


def calls_of(op_name, fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.count for e in prof.key_averages() if e.key == op_name)


def make_cache(kind):
    return rotary_attention.KVCache(64, static=True) if kind == "static" else rotary_attention.KVCache()


@pytest.mark.parametrize("kind", ["default", "static"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_decoding_through_decode_attention_equals_one_causal_pass(kind, dtype):
    (layer,) = layers(dtype=dtype)
    x = torch.randn(2, 12, N_STATE).to(dtype)
    mask = causal_mask(64).to(dtype)
    with torch.no_grad():
        full = layer(x, mask=mask)[0]
        cache = make_cache(kind)
        steps = [layer(x[:, :4], mask=mask, kv_cache=cache)[0]]
        n = calls_of(
            "rotary_attention::decode_attention", lambda: steps.append(layer(x[:, 4:5], mask=mask, kv_cache=cache)[0])
        )
        steps += [layer(x[:, i : i + 1], mask=mask, kv_cache=cache)[0] for i in range(5, 12)]
    assert n == 1  # the step ran the library's kernel, not SDPA
    torch.testing.assert_close(torch.cat(steps, 1), full, **path_tolerance(dtype))


def test_without_no_grad_the_step_keeps_sdpa_and_its_gradients():
    (layer,) = layers()
    x = torch.randn(1, 6, N_STATE)
    cache = rotary_attention.KVCache()
    layer(x[:, :5], kv_cache=cache)
    step = x[:, 5:].clone().requires_grad_()
    assert calls_of("rotary_attention::decode_attention", lambda: layer(step, kv_cache=cache)[0].sum().backward()) == 0
    assert step.grad is not None


def decode_rows_alone(made, prompts, tokens, xa, mask, kind):
    """Each row decoded by itself (batch 1): its prompt, then one token per step."""
    outs = []
    with torch.no_grad():
        for b, prompt in enumerate(prompts):
            cache = make_cache(kind)
            row_xa = None if xa is None else xa[b : b + 1]
            first = block(made, prompt.unsqueeze(0), mask, cache, row_xa)[:, -1:]
            steps = [block(made, tokens[b : b + 1, i : i + 1], mask, cache, row_xa) for i in range(tokens.shape[1])]
            outs.append(torch.cat([first] + steps, 1))
    return torch.cat(outs, 0)


def padded_batch(prompts):
    longest = max(p.shape[0] for p in prompts)
    x = torch.zeros(len(prompts), longest, N_STATE, dtype=prompts[0].dtype)
    for b, p in enumerate(prompts):
        x[b, : p.shape[0]] = p
    return x


@pytest.mark.parametrize("kind", ["default", "static"])
@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("cross", [False, True], ids=["self", "decoder-block"])
def test_rows_of_different_lengths_decode_in_one_call_as_each_row_alone(kind, sdpa, dtype, cross):
    made = layers(sdpa, dtype, cross)
    lengths = [5, 2, 7, 1]
    prompts = [torch.randn(n, N_STATE, dtype=dtype) for n in lengths]
    tokens = torch.randn(len(lengths), 6, N_STATE, dtype=dtype)
    xa = torch.randn(len(lengths), 9, N_STATE, dtype=dtype) if cross else None
    mask = causal_mask(64, dtype)
    want = decode_rows_alone(made, prompts, tokens, xa, mask, kind)
    with torch.no_grad():
        cache = make_cache(kind)
        padded = block(made, padded_batch(prompts), mask, cache, xa)
        cache.crop(lengths)
        assert cache.row_lengths(made[0]).tolist() == lengths
        firsts = torch.stack([padded[b, n - 1] for b, n in enumerate(lengths)]).unsqueeze(1)
        steps = [block(made, tokens[:, i : i + 1], mask, cache, xa) for i in range(tokens.shape[1])]
    got = torch.cat([firsts] + steps, 1)
    torch.testing.assert_close(got, want, **path_tolerance(dtype, sdpa))
    assert cache.row_lengths(made[0]).tolist() == [n + 6 for n in lengths]
    assert cache.length(made[0]) == max(lengths) + 6


@pytest.mark.parametrize("kind", ["default", "static"])
def test_several_tokens_per_row_in_one_causal_call(kind):
    """Speculative-style steps of 3 tokens at each row's own positions (causal within the step)."""
    made = layers()
    lengths = [3, 6]
    prompts = [torch.randn(n, N_STATE) for n in lengths]
    tokens = torch.randn(2, 6, N_STATE)
    mask = causal_mask(64)
    want = []
    with torch.no_grad():
        for b, prompt in enumerate(prompts):
            cache = make_cache(kind)
            made[0](prompt.unsqueeze(0), mask=mask, kv_cache=cache)
            want.append(
                torch.cat([made[0](tokens[b : b + 1, i : i + 3], mask=mask, kv_cache=cache)[0] for i in (0, 3)], 1)
            )
        cache = make_cache(kind)
        made[0](padded_batch(prompts), mask=mask, kv_cache=cache)
        cache.crop(torch.tensor(lengths))
        got = [made[0](tokens[:, :3], mask=mask, kv_cache=cache)[0]]
        n = calls_of(
            "rotary_attention::decode_attention",
            lambda: got.append(made[0](tokens[:, 3:], mask=mask, kv_cache=cache)[0]),
        )
    assert n == 1
    torch.testing.assert_close(torch.cat(got, 1), torch.cat(want, 0), **FP32_TOL)


@pytest.mark.parametrize("kind", ["default", "static"])
def test_rows_dropped_on_the_way_keep_their_own_lengths(kind):
    made = layers(cross=True)
    lengths = [4, 1, 6]
    prompts = [torch.randn(n, N_STATE) for n in lengths]
    tokens = torch.randn(3, 5, N_STATE)
    xa = torch.randn(3, 9, N_STATE)
    mask = causal_mask(64)
    want = decode_rows_alone(made, prompts, tokens, xa, mask, kind)
    with torch.no_grad():
        cache = make_cache(kind)
        block(made, padded_batch(prompts), mask, cache, xa)
        cache.crop(lengths)
        first = [block(made, tokens[:, i : i + 1], mask, cache, xa) for i in range(2)]
        cache.reorder([2, 0])  # row 1 finished
        rest = [block(made, tokens[[2, 0], i : i + 1], mask, cache, xa[[2, 0]]) for i in range(2, 5)]
    torch.testing.assert_close(torch.cat(first, 1), want[:, 1:3], **FP32_TOL)
    torch.testing.assert_close(torch.cat(rest, 1), want[[2, 0], 3:], **FP32_TOL)
    assert cache.row_lengths(made[0]).tolist() == [11, 9]


def test_crop_checks_before_changing_anything():
    (layer,) = layers()
    cache = rotary_attention.KVCache()
    with torch.no_grad():
        layer(torch.randn(2, 4, N_STATE), kv_cache=cache)
    refused = [
        ([5, 1], r"a value in \[0, its cached steps\]"),
        ([1, 2, 3], "each of the 2 rows"),
        ([-1, 0], r"hold \[4, 4\]"),
        (torch.tensor([1.0, 2.0]), "must be an int or 1-D integers"),
    ]
    for bad, message in refused:
        with pytest.raises(ValueError, match=message):
            cache.crop(bad)
        assert cache.row_lengths(layer).tolist() == [4, 4]
    cache.crop(3)
    assert cache.row_lengths(layer).tolist() == [3, 3] and cache.length(layer) == 3


def test_a_full_row_of_a_static_cache_is_a_clear_error():
    (layer,) = layers()
    cache = rotary_attention.KVCache(6, static=True)
    with torch.no_grad():
        layer(torch.randn(2, 6, N_STATE), kv_cache=cache)
        cache.crop([2, 6])
        with pytest.raises(RuntimeError, match="capacity of 6 steps is full"):
            layer(torch.randn(2, 1, N_STATE), kv_cache=cache)


def test_compiled_static_step_calls_decode_attention_and_compiles_once():
    (layer,) = layers()
    cache = rotary_attention.KVCache(32, static=True)
    x = torch.randn(2, 10, N_STATE)
    mask = causal_mask(32)

    def step(token):
        return layer(token, mask=mask, kv_cache=cache)[0]

    torch._dynamo.reset()
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled = torch.compile(step, fullgraph=True)
    with torch.no_grad():
        full = layer(x, mask=mask)[0]
        outs = [step(x[:, :3]), compiled(x[:, 3:4])]
        n = calls_of("rotary_attention::decode_attention", lambda: outs.append(compiled(x[:, 4:5])))
        outs += [compiled(x[:, i : i + 1]) for i in range(5, 10)]
    assert n == 1  # the compiled graph calls the library's kernel
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] <= graphs_before + 1
    torch.testing.assert_close(torch.cat(outs, 1), full, **FP32_TOL)
