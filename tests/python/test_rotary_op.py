"""torch.ops.rotary_attention.rotary with its defaults (the original's
rotation): against the original on every device, opcheck, gradcheck,
torch.compile, torch.export, the CUDA kernel against the CPU one, and bad input."""

import random

import pytest
import torch

import rotary_attention
from conftest import DEVICES, DTYPES, NEEDS_CUDA, inv_freq
from conftest import original_rotate as original

rotary = torch.ops.rotary_attention.rotary


def random_view(shape, dtype, rng):
    """A (B, T, H, D) tensor that is contiguous, permuted or sliced."""
    kind = rng.choice(["contiguous", "permuted", "sliced", "expanded"])
    B, T, H, D = shape
    if kind == "permuted":
        return torch.randn(B, H, T, D, dtype=dtype).transpose(1, 2)
    if kind == "sliced":
        return torch.randn(B, T, H + 1, 2 * D, dtype=dtype)[:, :, 1:, ::2]
    if kind == "expanded":
        return torch.randn(1, T, H, D, dtype=dtype).expand(B, T, H, D)
    return torch.randn(shape, dtype=dtype)


def expected(x, f):
    """What the port promises: the original's math in fp32 (fp64 for fp64), result in x's dtype."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return original(x.float(), f).to(x.dtype)
    return original(x, f.to(x.dtype) if x.dtype == torch.float64 else f)


def test_defaults_equal_the_original_on_120_random_cases():
    rng = random.Random(0)
    torch.manual_seed(0)
    shapes = [(1, 1, 1, 2), (2, 1, 3, 8), (1, 8192, 1, 4), (1, 8192, 2, 64)]
    for _ in range(116):
        shapes.append((rng.randint(1, 3), rng.choice([1, 2, 5, 17, 100]), rng.randint(1, 4), 2 * rng.randint(1, 40)))
    for i, shape in enumerate(shapes):
        dtype = DTYPES[i % len(DTYPES)]
        x = random_view(shape, dtype, rng)
        f = inv_freq(shape[-1], torch.float64 if dtype == torch.float64 else torch.float32)
        got = rotary(x, f)
        assert got.dtype == x.dtype and got.shape == x.shape
        want = expected(x, f)
        if dtype == torch.float32:
            tol = dict(rtol=1e-6, atol=1e-5 if shape[1] > 1000 else 1e-6)
        elif dtype == torch.float64:
            tol = dict(rtol=1e-12, atol=1e-12)
        else:  # one rounding to the half type at the end; the reference rounds the same value
            tol = dict(rtol=0, atol=0)
        torch.testing.assert_close(got, want, **tol, msg=f"case {i}: {shape} {dtype}")


def test_fp32_defaults_are_bitwise_the_original():
    torch.manual_seed(1)
    x = torch.randn(2, 300, 4, 64)
    f = inv_freq(64)
    assert torch.equal(rotary(x, f), original(x, f))


@pytest.mark.parametrize("device", DEVICES)
def test_matches_the_original_on_device(device):
    x = torch.randn(2, 300, 8, 64, device=device)
    f = inv_freq(64, device=device)
    torch.testing.assert_close(rotary(x, f), original(x, f), rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"offset": 5},
        {"positions": "bt"},
        {"positions": "t"},
        {"layout": "half"},
        {"layout": "interleaved", "rotary_dim": 8},
    ],
    ids=["default", "offset", "positions_bt", "positions_t", "half", "interleaved_partial"],
)
@pytest.mark.parametrize("view", ["contiguous", "permuted", "sliced"])
@pytest.mark.parametrize("device", [pytest.param("cuda", marks=NEEDS_CUDA)])
def test_cuda_kernel_matches_the_cpu_kernel(device, dtype, kwargs, view):
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
    f = inv_freq(kw.get("rotary_dim", D), torch.float64 if dtype == torch.float64 else torch.float32)
    want = rotary(x, f, **kw)
    kw_cuda = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    got = rotary(x.to(device), f.to(device), **kw_cuda)
    assert got.dtype == dtype and got.device.type == device
    tol = {torch.float32: 2e-6, torch.float64: 1e-12, torch.float16: 1e-3, torch.bfloat16: 1e-2}[dtype]
    torch.testing.assert_close(got.cpu(), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=NEEDS_CUDA)])
def test_runs_on_the_current_stream(device):
    """A side stream sleeps, then overwrites x, then rotates it. A kernel
    launched on any other stream than the current one would run at once and
    read x before the overwrite (zeros), so this test can fail."""
    f = inv_freq(64, device=device)
    x = torch.zeros(4, 512, 8, 64, device=device)
    new = torch.randn_like(x)
    want = rotary(new, f)
    want_half = rotary(want, f, layout="half")
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        torch.cuda._sleep(100_000_000)  # tens of milliseconds of GPU time on this stream
        x.copy_(new)
        got = rotary(x, f)
        got_half = rotary(got, f, layout="half")
    stream.synchronize()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got_half, want_half, rtol=0, atol=0)


@pytest.mark.parametrize("device", [pytest.param("cuda", marks=NEEDS_CUDA)])
def test_mismatched_devices_are_a_clear_error(device):
    with pytest.raises(RuntimeError, match="device"):
        rotary(torch.randn(1, 2, 1, 8, device=device), inv_freq(8))


def test_module_and_operator_agree():
    emb = rotary_attention.RotaryEmbedding(16)
    x = torch.randn(2, 5, 3, 16)
    assert torch.equal(emb.rotate_queries_or_keys(x), rotary(x, emb.inv_freq))


def _samples(device):
    f = inv_freq(8, device=device)
    fd = inv_freq(8, torch.float64, device)
    t = dict(device=device)
    return [
        ((torch.randn(2, 5, 3, 8, **t), f), {}),
        ((torch.randn(2, 3, 5, 8, **t).transpose(1, 2), f), {}),
        ((torch.randn(2, 5, 3, 8, **t, requires_grad=True), f), {}),
        ((torch.randn(1, 4, 2, 8, **t, dtype=torch.float64, requires_grad=True), fd), {}),
        (
            (torch.randn(2, 4, 2, 8, **t, requires_grad=True), f),
            {"positions": torch.randint(0, 50, (2, 4), **t), "offset": 3},
        ),
        ((torch.randn(2, 4, 2, 12, **t, requires_grad=True), f), {"layout": "half", "rotary_dim": 8}),
        ((torch.randn(1, 4, 2, 8, **t, dtype=torch.bfloat16), f), {"layout": "interleaved"}),
    ]


@pytest.mark.parametrize("i", range(7))
@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device, i):
    args, kwargs = _samples(device)[i]
    torch.library.opcheck(rotary, args, kwargs)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_backward_op(device):
    g = torch.randn(2, 5, 3, 8, requires_grad=True, device=device)
    torch.library.opcheck(torch.ops.rotary_attention.rotary_backward, (g, inv_freq(8, device=device)))


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"positions": [[3, 1, 4], [1, 5, 9]]}, {"layout": "half", "rotary_dim": 4, "offset": 7}],
    ids=["default", "positions", "half_partial_offset"],
)
@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_and_gradgradcheck(device, kwargs):
    kwargs = {k: torch.tensor(v, device=device) if k == "positions" else v for k, v in kwargs.items()}
    x = torch.randn(2, 3, 2, 6, dtype=torch.float64, requires_grad=True, device=device)
    f = inv_freq(kwargs.get("rotary_dim", 6), torch.float64, device)
    fn = lambda t: rotary(t, f, **kwargs)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_backward_matches_the_original_autograd():
    x = torch.randn(3, 7, 2, 16, dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    f = inv_freq(16, torch.float64)
    g = torch.randn_like(x)
    rotary(x, f).backward(g)
    original(x_ref, f).backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-12, atol=1e-12)


def test_torch_compile_fullgraph_has_no_graph_break():
    f = inv_freq(16)

    def fn(x):
        return rotary(x * 2, f).sum(-1)

    compiled = torch.compile(fn, fullgraph=True)
    x = torch.randn(2, 5, 3, 16, requires_grad=True)
    torch.testing.assert_close(compiled(x), fn(x))
    w = torch.randn(2, 5, 3)
    (compiled(x) * w).sum().backward()
    assert x.grad is not None
    # The backward against autograd through the original's formula.
    x_ref = x.detach().clone().requires_grad_()
    (original(x_ref * 2, f).sum(-1) * w).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)


def test_torch_export_keeps_the_operator():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("inv_freq", inv_freq(8))

        def forward(self, x):
            return rotary(x, self.inv_freq)

    x = torch.randn(2, 5, 3, 8)
    ep = torch.export.export(M(), (x,))
    assert "rotary_attention.rotary" in str(ep.graph)
    torch.testing.assert_close(ep.module()(x), M()(x))


def test_bad_input_gives_clear_errors():
    f = inv_freq(8)
    with pytest.raises(RuntimeError, match=r"\(B, T, H, D\)"):
        rotary(torch.randn(2, 3, 8), f)
    with pytest.raises(RuntimeError, match="even"):
        rotary(torch.randn(1, 2, 1, 7), inv_freq(6)[:3])
    with pytest.raises(RuntimeError, match="inv_freq must have"):
        rotary(torch.randn(1, 2, 1, 8), inv_freq(4))
    with pytest.raises(RuntimeError, match="float32, float64, float16 or bfloat16"):
        rotary(torch.ones(1, 2, 1, 8, dtype=torch.int64), f)
    with pytest.raises(RuntimeError, match="positions must be int64 or int32"):
        rotary(torch.randn(1, 2, 1, 8), f, positions=torch.zeros(2))
    with pytest.raises(RuntimeError, match="layout"):
        rotary(torch.randn(1, 2, 1, 8), f, layout="neox")
    with pytest.raises(RuntimeError, match="device"):
        rotary(torch.randn(1, 2, 1, 8), f.to("meta"))
    empty = rotary(torch.randn(0, 3, 2, 8), f)
    assert empty.shape == (0, 3, 2, 8)
    assert rotary(torch.randn(2, 0, 2, 8), f).shape == (2, 0, 2, 8)


def test_layouts_against_independent_formulas():
    torch.manual_seed(3)
    x = torch.randn(2, 6, 3, 10, dtype=torch.float64)
    f = inv_freq(10, torch.float64)
    ang = torch.arange(6, dtype=torch.float64)[:, None] * f[None]
    cos, sin = ang.cos()[None, :, None], ang.sin()[None, :, None]
    # NeoX / HF rotate_half
    cos_h, sin_h = torch.cat([cos, cos], -1), torch.cat([sin, sin], -1)
    x1, x2 = x.chunk(2, -1)
    rotate_half = torch.cat([-x2, x1], -1)
    torch.testing.assert_close(rotary(x, f, layout="half"), x * cos_h + rotate_half * sin_h)
    # GPT-J interleaved
    xe, xo = x[..., ::2], x[..., 1::2]
    gptj = torch.stack([xe * cos - xo * sin, xe * sin + xo * cos], -1).flatten(-2)
    torch.testing.assert_close(rotary(x, f, layout="interleaved"), gptj)


def test_built_with_cuda_says_whether_a_cuda_kernel_is_registered():
    has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key("rotary_attention::rotary", "CUDA")
    assert rotary_attention.built_with_cuda() is has_kernel
    if torch.version.cuda is None:
        assert not rotary_attention.built_with_cuda()  # a CPU-only torch gets no CUDA kernel
