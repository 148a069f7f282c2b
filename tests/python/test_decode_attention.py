"""rotary_attention.decode_attention: a few queries over a KV cache with a length per row.

Every case is compared with SDPA in fp64 over each row's own keys (sliced, no mask), within
a bound derived from the kernel's arithmetic (see `error_bound`); lengths 0, 1, odd, at and
around the loop's chunk (32) and block (256) boundaries; heads 1..16, head_dim 32..256; fp32,
bf16 and fp16 caches; every CPU build of the loop; one and several threads."""

import pytest
import torch

import rotary_attention
from conftest import DEVICES, outputs_of_each_cpu_build

decode_attention = rotary_attention.decode_attention
U = {torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float64: 2.0**-53}


def make_case(batch, steps, capacity, n_head, head_dim, dtype, seed, lengths, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    n_state = n_head * head_dim
    q = torch.randn(batch, steps, n_state, generator=g)
    keys = torch.randn(batch, capacity, n_state, generator=g)
    values = torch.randn(batch, capacity, n_state, generator=g)
    lengths = torch.tensor(lengths, dtype=torch.long)
    return tuple(t.to(device) for t in (q.to(dtype), keys.to(dtype), values.to(dtype), lengths))


def visible(lengths, steps, causal):
    """Keys query t of row b sees: the first visible[b][t]."""
    return [[max(int(n) - (steps - 1 - t), 0) if causal else int(n) for t in range(steps)] for n in lengths]


def reference(q, keys, values, lengths, n_head, causal, scale=None):
    """SDPA in fp64 over each row's and query's own keys; zeros where a query sees none."""
    batch, steps, n_state = q.shape
    d = n_state // n_head
    out = torch.zeros(batch, steps, n_state, dtype=torch.float64)
    for b, seen in enumerate(visible(lengths, steps, causal)):
        for t, n in enumerate(seen):
            if n == 0:
                continue
            qh = q[b, t].double().cpu().view(n_head, 1, d)
            kh = keys[b, :n].double().cpu().view(n, n_head, d).transpose(0, 1)
            vh = values[b, :n].double().cpu().view(n, n_head, d).transpose(0, 1)
            out[b, t] = torch.nn.functional.scaled_dot_product_attention(qh, kh, vh, scale=scale).reshape(n_state)
    return out


def error_bound(q, keys, values, lengths, n_head, causal, out_dtype, scale=None):
    """Per-element bound on |kernel - exact|, from the kernel's fp32 arithmetic:
    - a logit s_j = (q * scale) . k_j over D features is off by at most
      delta_j = (D + 2) u scale sum_d |q_d k_jd| (the scaling's and the dot product's roundings);
    - each weight exp(s_j - m) is then off by a relative (delta_j + delta_max) + (20 + |s_j - m|) u
      (exp_u20's 20 ulp and the subtraction), at most eps_p for the query;
    - the sums over L keys (and the blocks' merge) add (L + 16) u relative;
    so |o - o*| <= (2 eps_p + (L + 16) u) max_j |v_j| (a weighted mean moves by at most twice the
    weights' relative error times the values' range), plus the output's rounding to its dtype."""
    u = U[torch.float32]
    batch, steps, n_state = q.shape
    d = n_state // n_head
    scale = d**-0.5 if scale is None else scale
    bound = torch.zeros(batch, steps, n_state, dtype=torch.float64)
    for b, seen in enumerate(visible(lengths, steps, causal)):
        for t, n in enumerate(seen):
            if n == 0:
                continue
            qh = q[b, t].double().cpu().view(n_head, d)
            kh = keys[b, :n].double().cpu().view(n, n_head, d)
            vh = values[b, :n].double().cpu().view(n, n_head, d)
            s = torch.einsum("hd,nhd->hn", qh, kh) * scale
            delta = (d + 2) * u * scale * torch.einsum("hd,nhd->hn", qh.abs(), kh.abs())
            spread = (s - s.max(-1, keepdim=True).values).abs()
            eps_p = (delta + delta.max(-1, keepdim=True).values + (20 + spread) * u).max(-1).values
            vmax = vh.abs().amax(0)  # (heads, d)
            bound[b, t] = ((2 * eps_p + (n + 16) * u).unsqueeze(-1) * vmax).reshape(n_state)
    return bound


def assert_within_bound(got, q, keys, values, lengths, n_head, causal, scale=None):
    want = reference(q, keys, values, lengths, n_head, causal, scale)
    bound = error_bound(q, keys, values, lengths, n_head, causal, got.dtype, scale)
    # The result's rounding to its dtype (half an ulp, relative), and fp32's own.
    bound += (U[got.dtype] if got.dtype != torch.float32 else U[torch.float32]) * want.abs()
    err = (got.double().cpu() - want).abs()
    worst = (err - bound).max()
    assert worst <= 0, f"error exceeds the bound by {worst:.3g} (max error {err.max():.3g})"
    return err, bound


SHAPES = [  # (n_head, head_dim)
    (1, 32),
    (3, 48),
    (8, 64),
    (5, 80),
    (16, 32),
    (2, 128),
    (1, 256),
]
LENGTH_SETS = [  # rows of one batch: empty, one, odd, the chunk (32) and block (256) boundaries
    [0, 1, 7, 31],
    [32, 33, 255, 256],
    [257, 511, 1, 600],
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize(("n_head", "head_dim"), SHAPES, ids=[f"h{h}d{d}" for h, d in SHAPES])
@pytest.mark.parametrize("steps", [1, 3], ids=["T1", "T3"])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_within_the_derived_bound_of_sdpa_over_each_rows_keys(dtype, n_head, head_dim, steps, causal):
    for i, lengths in enumerate(LENGTH_SETS):
        q, k, v, n = make_case(4, steps, 640, n_head, head_dim, dtype, seed=i, lengths=lengths)
        with torch.no_grad():
            got = decode_attention(q, k, v, n, n_head, causal)
        assert got.dtype == dtype and got.shape == q.shape
        assert_within_bound(got, q, k, v, n, n_head, causal)


def test_the_bound_is_tight_enough_to_see_one_key_too_many_or_too_few():
    """The checks above can fail: the result over one key more or less is outside the bound."""
    q, k, v, n = make_case(2, 1, 300, 4, 64, torch.float32, seed=3, lengths=[100, 257])
    with torch.no_grad():
        exact = decode_attention(q, k, v, n, 4)
        for wrong in (n + 1, n - 1):
            off = decode_attention(q, k, v, wrong, 4)
            with pytest.raises(AssertionError, match="exceeds the bound"):
                assert_within_bound(off, q, k, v, n, 4, False)
    assert_within_bound(exact, q, k, v, n, 4, False)


@pytest.mark.parametrize("steps", [1, 2, 16])
def test_many_blocks_and_a_custom_scale(steps):
    """Long rows are split into blocks whose softmax partials are merged."""
    q, k, v, n = make_case(1, steps, 5000, 8, 64, torch.float32, seed=7, lengths=[4999])
    with torch.no_grad():
        got = decode_attention(q, k, v, n, 8, True, scale=0.3)
    assert_within_bound(got, q, k, v, n, 8, True, scale=0.3)


def test_thread_counts_agree_within_the_bound():
    q, k, v, n = make_case(3, 2, 3000, 4, 64, torch.float32, seed=8, lengths=[2999, 1000, 17])
    saved = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            with torch.no_grad():
                got = decode_attention(q, k, v, n, 4, True)
            assert_within_bound(got, q, k, v, n, 4, True)
    finally:
        torch.set_num_threads(saved)


def test_queries_that_see_no_key_get_zeros():
    q, k, v, _ = make_case(2, 4, 16, 2, 32, torch.float32, seed=9, lengths=[0, 0])
    n = torch.tensor([0, 2])
    with torch.no_grad():
        got = decode_attention(q, k, v, n, 2, True)  # row 1: queries 0 and 1 sit before key 0
    assert torch.equal(got[0], torch.zeros_like(got[0]))
    assert torch.equal(got[1, :2], torch.zeros_like(got[1, :2]))
    assert got[1, 2:].abs().sum() > 0
    assert not torch.isnan(got).any()


def test_nothing_past_a_rows_length_is_read():
    """NaN and inf past each row's length change nothing."""
    q, k, v, n = make_case(3, 2, 100, 4, 32, torch.float32, seed=10, lengths=[5, 64, 99])
    with torch.no_grad():
        want = decode_attention(q, k, v, n, 4, True)
        for b, length in enumerate(n.tolist()):
            k[b, length:] = float("nan")
            v[b, length:] = float("inf")
        assert torch.equal(decode_attention(q, k, v, n, 4, True), want)


def test_strided_caches_int32_lengths_and_a_batch_of_views():
    """A cache that is a view (batch-major slice, steps strided) and int32 lengths."""
    q, k, v, n = make_case(2, 1, 64, 4, 32, torch.float32, seed=11, lengths=[10, 40])
    big_k = torch.zeros(2, 128, 128)
    big_v = torch.zeros(2, 128, 128)
    big_k[:, ::2] = k
    big_v[:, ::2] = v
    with torch.no_grad():
        got = decode_attention(q, big_k[:, ::2], big_v[:, ::2], n.int(), 4)
        want = decode_attention(q, k, v, n, 4)
    assert torch.equal(got, want)


def test_fp64_runs_sdpa_with_the_lengths_as_a_mask():
    q, k, v, n = make_case(3, 3, 50, 2, 32, torch.float64, seed=12, lengths=[0, 5, 50])
    with torch.no_grad():
        got = decode_attention(q, k, v, n, 2, True)
    torch.testing.assert_close(got, reference(q, k, v, n, 2, True), rtol=1e-12, atol=1e-12)


REFUSED = [
    ("q of rank 2", lambda q, k, v, n: (q[0], k, v, n, 4), "q must be a floating tensor of shape"),
    ("integer q", lambda q, k, v, n: (q.long(), k, v, n, 4), "q must be a floating tensor"),
    ("heads", lambda q, k, v, n: (q, k, v, n, 3), "must be divisible by n_head"),
    ("key batch", lambda q, k, v, n: (q, k[:1], v, n, 4), "key_cache must have shape"),
    ("value features", lambda q, k, v, n: (q, k, v[..., :64], n, 4), "value_cache must have shape"),
    ("key dtype", lambda q, k, v, n: (q, k.double(), v, n, 4), "key_cache must have q's dtype"),
    ("capacities", lambda q, k, v, n: (q, k, v[:, :10], n, 4), "the same capacity"),
    ("lengths shape", lambda q, k, v, n: (q, k, v, n[:1], 4), "lengths must be an int64 or int32 tensor"),
    ("float lengths", lambda q, k, v, n: (q, k, v, n.float(), 4), "lengths must be an int64 or int32"),
    ("negative length", lambda q, k, v, n: (q, k, v, torch.tensor([-1, 3]), 4), r"lengths must lie in \[0"),
    ("length past capacity", lambda q, k, v, n: (q, k, v, torch.tensor([3, 21]), 4), "capacity=20"),
]


@pytest.mark.parametrize(("what", "args", "message"), REFUSED, ids=[r[0] for r in REFUSED])
def test_bad_arguments_are_clear_errors(what, args, message):
    q, k, v, n = make_case(2, 1, 20, 4, 32, torch.float32, seed=13, lengths=[3, 4])
    with pytest.raises(RuntimeError, match=message), torch.no_grad():
        decode_attention(*args(q, k, v, n))


def test_inputs_that_require_grad_are_refused():
    q, k, v, n = make_case(1, 1, 8, 2, 32, torch.float32, seed=14, lengths=[4])
    with pytest.raises(RuntimeError, match="for inference and has no backward"):
        decode_attention(q.requires_grad_(), k, v, n, 2)
    with torch.no_grad():
        decode_attention(q, k, v, n, 2)  # fine without grad mode


def test_opcheck():
    q, k, v, n = make_case(2, 2, 40, 4, 32, torch.float32, seed=15, lengths=[0, 33])
    op = torch.ops.rotary_attention.decode_attention.default
    torch.library.opcheck(op, (q, k, v, n, 4, True))
    torch.library.opcheck(op, (q.bfloat16(), k.bfloat16(), v.bfloat16(), n, 4, False, 0.5))


def test_compiles_and_exports_as_one_node():
    q, k, v, n = make_case(2, 1, 40, 4, 32, torch.float32, seed=16, lengths=[7, 33])

    class Step(torch.nn.Module):
        def forward(self, q, k, v, n):
            return decode_attention(q, k, v, n, 4, True)

    with torch.no_grad():
        want = Step()(q, k, v, n)
        torch.testing.assert_close(torch.compile(Step(), fullgraph=True)(q, k, v, n), want, rtol=0, atol=0)
        program = torch.export.export(Step(), (q, k, v, n))
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert targets == ["rotary_attention.decode_attention.default"]
    torch.testing.assert_close(program.module()(q, k, v, n), want, rtol=0, atol=0)


BUILDS_SCRIPT = """
import sys, torch, rotary_attention
from test_decode_attention import make_case, LENGTH_SETS
outs = {}
with torch.no_grad():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for i, lengths in enumerate(LENGTH_SETS):
            q, k, v, n = make_case(4, 2, 640, 5, 80, dtype, seed=i, lengths=lengths)
            outs[(str(dtype), i)] = rotary_attention.decode_attention(q, k, v, n, 5, True)
torch.save(outs, sys.argv[1])
print(rotary_attention.cpu_kernel_capability())
"""


def test_every_cpu_build_of_the_loop_is_within_the_bound(tmp_path):
    """Each build (forced with ROTARY_ATTENTION_CPU_CAPABILITY in its own process) sums in
    its own vector width, so results differ in the last bits: each is held to the bound.
    A build this CPU cannot run is reported as the best one it can, and the set of builds
    seen names what ran."""
    results = outputs_of_each_cpu_build(BUILDS_SCRIPT, tmp_path)
    for outs in results.values():
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for i, lengths in enumerate(LENGTH_SETS):
                q, k, v, n = make_case(4, 2, 640, 5, 80, dtype, seed=i, lengths=lengths)
                assert_within_bound(outs[(str(dtype), i)], q, k, v, n, 5, True)
    assert "DEFAULT" in results and rotary_attention.cpu_kernel_capability() in results


@pytest.mark.parametrize("device", DEVICES)
def test_on_each_device(device):
    q, k, v, n = make_case(2, 2, 64, 4, 32, torch.float32, seed=17, lengths=[0, 50], device=device)
    with torch.no_grad():
        got = decode_attention(q, k, v, n, 4, True)
    assert got.device == q.device
    assert_within_bound(got, q, k, v, n, 4, True)
