"""The CUDA kernel: parity with the CPU operator and the original, opcheck,
gradcheck, a non-default stream, and the C++ MultiHeadAttention on the GPU.
Skips (with the reason) where there is no GPU or the kernel was not built."""

import pytest
import torch

import rotary_attention
from rotary_attention import reference
from conftest import causal_mask, make_pair, original_sdpa

rotary = torch.ops.rotary_attention.rotary
pytestmark = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
    pytest.mark.skipif(not rotary_attention.built_with_cuda(), reason="the CUDA kernel was not built (no nvcc or CPU-only torch)"),
]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def inv_freq(dim, dtype=torch.float32, device="cuda"):
    return reference.RotaryEmbedding(dim).inv_freq.to(device=device, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "kwargs",
    [{}, {"offset": 5}, {"positions": "bt"}, {"positions": "t"}, {"layout": "half"}, {"layout": "interleaved", "rotary_dim": 8}],
    ids=["default", "offset", "positions_bt", "positions_t", "half", "interleaved_partial"],
)
@pytest.mark.parametrize("view", ["contiguous", "permuted", "sliced"])
def test_matches_the_cpu_operator(dtype, kwargs, view):
    torch.manual_seed(0)
    B, T, H, D = 3, 37, 4, 16
    if view == "permuted":
        x = torch.randn(B, H, T, D, dtype=dtype).transpose(1, 2)
    elif view == "sliced":
        x = torch.randn(B, T, H, 2 * D, dtype=dtype)[..., 1::2]
    else:
        x = torch.randn(B, T, H, D, dtype=dtype)
    kw = dict(kwargs)
    if kw.get("positions") == "bt":
        kw["positions"] = torch.randint(0, 1000, (B, T))
    elif kw.get("positions") == "t":
        kw["positions"] = torch.randint(0, 1000, (T,))
    f = inv_freq(kw.get("rotary_dim", D), torch.float64 if dtype == torch.float64 else torch.float32, "cpu")
    want = rotary(x, f, **kw)
    kw_cuda = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    got = rotary(x.cuda(), f.cuda(), **kw_cuda)
    assert got.dtype == dtype and got.is_cuda
    tol = {torch.float32: 2e-6, torch.float64: 1e-12, torch.float16: 1e-3, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(got.cpu(), want, rtol=tol, atol=tol)


def test_matches_the_original_on_the_gpu():
    x = torch.randn(2, 300, 8, 64, device="cuda")
    emb = reference.RotaryEmbedding(64).cuda()
    torch.testing.assert_close(rotary(x, emb.inv_freq), emb.rotate_queries_or_keys(x), rtol=2e-6, atol=2e-6)


def test_opcheck_on_cuda():
    f = inv_freq(8)
    samples = [
        ((torch.randn(2, 5, 3, 8, device="cuda"), f), {}),
        ((torch.randn(2, 3, 5, 8, device="cuda").transpose(1, 2), f), {}),
        ((torch.randn(2, 5, 3, 8, device="cuda", requires_grad=True), f), {"positions": torch.randint(0, 9, (2, 5), device="cuda")}),
        ((torch.randn(1, 4, 2, 8, device="cuda", dtype=torch.float64, requires_grad=True), inv_freq(8, torch.float64)), {}),
    ]
    for args, kwargs in samples:
        torch.library.opcheck(rotary, args, kwargs)


def test_gradcheck_on_cuda():
    x = torch.randn(2, 3, 2, 6, dtype=torch.float64, device="cuda", requires_grad=True)
    f = inv_freq(6, torch.float64)
    assert torch.autograd.gradcheck(lambda t: rotary(t, f, offset=2), (x,))
    assert torch.autograd.gradgradcheck(lambda t: rotary(t, f, layout="half"), (x,))


def test_runs_on_the_current_stream():
    x = torch.randn(4, 512, 8, 64, device="cuda")
    f = inv_freq(64)
    want = rotary(x, f)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        got = rotary(x, f)
        got2 = rotary(got, f, layout="half")
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got2, rotary(want, f, layout="half"), rtol=0, atol=0)


def test_mismatched_devices_are_a_clear_error():
    with pytest.raises(RuntimeError, match="device"):
        rotary(torch.randn(1, 2, 1, 8, device="cuda"), inv_freq(8, device="cpu"))


@pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])
def test_cpp_multi_head_attention_on_cuda(sdpa):
    ref, port = make_pair(64, 4, sdpa=sdpa, seed=4)
    ref.cuda()
    port.cuda()
    x = torch.randn(2, 9, 64, device="cuda")
    mask = causal_mask(12).cuda()
    with original_sdpa(sdpa), torch.no_grad():
        want, want_qk = ref(x, mask=mask)
        got, got_qk = port(x, mask=mask)
        cache = rotary_attention.KVCache()
        steps = [port(x[:, i : i + 1], mask=mask, kv_cache=cache)[0] for i in range(3)]
    assert got.is_cuda
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if not sdpa:
        torch.testing.assert_close(got_qk, want_qk, rtol=1e-5, atol=1e-5)
    assert cache.length(port) == 3 and all(s.is_cuda for s in steps)


@pytest.mark.parametrize("layout", ["seed", "interleaved", "half"])
def test_in_place_and_qk_on_cuda(layout):
    x = torch.randn(2, 3, 7, 16, device="cuda").transpose(1, 2)
    f = inv_freq(16)
    want = rotary(x, f, offset=4, layout=layout)
    y = x.clone()
    rotary_attention.rotary_(y, f, offset=4, layout=layout)
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    q, k = torch.randn(2, 7, 4, 16, device="cuda"), torch.randn(2, 7, 1, 16, device="cuda")
    rq, rk = rotary_attention.rotary_qk(q, k, f, layout=layout)
    torch.testing.assert_close(rq, rotary(q, f, layout=layout), rtol=0, atol=0)
    torch.testing.assert_close(rk, rotary(k, f, layout=layout), rtol=0, atol=0)


def test_absolute_positions_decoding_on_cuda():
    ref, _ = make_pair(64, 4, sdpa=True, seed=9)
    model = rotary_attention.MultiHeadAttention(64, 4, absolute_positions=True)
    model.load_state_dict(ref.state_dict())
    model.cuda().eval()
    x = torch.randn(1, 6, 64, device="cuda")
    mask = causal_mask(8).cuda()
    with torch.no_grad():
        full, _ = model(x, mask=mask)
        cache = rotary_attention.KVCache()
        steps = torch.cat([model(x[:, i : i + 1], mask=mask, kv_cache=cache)[0] for i in range(6)], 1)
    torch.testing.assert_close(steps, full, rtol=1e-4, atol=1e-4)
