"""The operator's options beyond the original: position ids, offsets, the three
pair layouts, partial rotary, the in-place variant and rotary_qk, against
independent formulations (a gathered cos/sin table) on every device, plus
property tests over random shapes, strides, dtypes and positions, and the CPU
loop's instruction-set builds against each other."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rotary_attention
from conftest import (
    CPU_BUILDS,
    DEVICES,
    DTYPES,
    LAYOUTS,
    assert_rotation_close,
    inv_freq,
    outputs_of_each_cpu_build,
    run_as_cpu_build,
    table_reference,
)

rotary = torch.ops.rotary_attention.rotary


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("positions", [None, "t", "bt"])
@pytest.mark.parametrize("device", DEVICES)
def test_position_ids_against_gathering_from_a_table(device, layout, positions):
    torch.manual_seed(0)
    x = torch.randn(3, 7, 2, 12, dtype=torch.float64, device=device)
    f = inv_freq(8, torch.float64, device)
    pos = {None: None, "t": torch.randint(0, 5000, (7,)), "bt": torch.randint(0, 5000, (3, 7))}[positions]
    pos = None if pos is None else pos.to(device)
    got = rotary(x, f, positions=pos, offset=11, layout=layout, rotary_dim=8)
    want = table_reference(x, f, pos, 11, layout, 8)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@st.composite
def cases(draw):
    B = draw(st.integers(1, 3))
    T = draw(st.integers(1, 40))
    H = draw(st.integers(1, 4))
    D = 2 * draw(st.integers(1, 24))
    rd = 2 * draw(st.integers(1, D // 2))
    dtype = draw(st.sampled_from(DTYPES))
    layout = draw(st.sampled_from(LAYOUTS))
    view = draw(st.sampled_from(["contiguous", "permuted", "sliced", "transposed_bt"]))
    positions = draw(st.sampled_from([None, "t", "bt"]))
    offset = draw(st.integers(0, 3000))
    seed = draw(st.integers(0, 2**31 - 1))
    return B, T, H, D, rd, dtype, layout, view, positions, offset, seed


def make_view(B, T, H, D, dtype, view, g):
    if view == "permuted":
        return torch.randn(B, H, T, D, generator=g).to(dtype).transpose(1, 2)
    if view == "sliced":
        return torch.randn(B, T, H + 1, 2 * D, generator=g).to(dtype)[:, :, 1:, ::2]
    if view == "transposed_bt":
        return torch.randn(T, B, H, D, generator=g).to(dtype).transpose(0, 1)
    return torch.randn(B, T, H, D, generator=g).to(dtype)


@settings(max_examples=150, deadline=None)
@given(cases())
def test_property_random_shapes_strides_dtypes_positions(case):
    B, T, H, D, rd, dtype, layout, view, positions, offset, seed = case
    g = torch.Generator().manual_seed(seed)
    x = make_view(B, T, H, D, dtype, view, g)
    f = inv_freq(rd, torch.float64 if dtype == torch.float64 else torch.float32)
    pos = {
        None: None,
        "t": torch.randint(0, 5000, (T,), generator=g),
        "bt": torch.randint(0, 5000, (B, T), generator=g),
    }[positions]
    got = rotary(x, f, positions=pos, offset=offset, layout=layout, rotary_dim=rd)
    assert got.dtype == dtype and got.shape == x.shape and got.is_contiguous()
    want = table_reference(x, f, pos, offset, layout, rd)
    assert_rotation_close(got, want, x, f)
    # The backward op inverts it: the forward's rounding (half an ulp of the
    # largest |x|, turned by the inverse rotation) plus the backward's own.
    back = torch.ops.rotary_attention.rotary_backward(
        got, f, positions=pos, offset=offset, layout=layout, rotary_dim=rd
    )
    scale = x.double().abs().max().item() if x.numel() else 0.0
    bound = 2 * torch.finfo(dtype).eps * scale + 16 * torch.finfo(torch.float32).eps * scale
    torch.testing.assert_close(back.double(), x.double(), rtol=0, atol=bound)
    # In place gives the same values and keeps x's strides.
    y = x.clone()
    strides = y.stride()
    out = rotary_attention.rotary_(y, f, positions=pos, offset=offset, layout=layout, rotary_dim=rd)
    assert out.data_ptr() == y.data_ptr() and y.stride() == strides
    torch.testing.assert_close(y, got, rtol=0, atol=0)


def test_in_place_is_for_inference():
    x = torch.randn(2, 3, 2, 8, requires_grad=True)
    f = inv_freq(8)
    with pytest.raises(RuntimeError, match="for inference"):
        rotary_attention.rotary_(x, f)
    y = x.detach().clone()
    version = y._version
    rotary_attention.rotary_(y, f)
    assert y._version > version
    with torch.no_grad():
        z = x.clone()
        rotary_attention.rotary_(z, f)
    torch.testing.assert_close(z, rotary(x.detach(), f), rtol=0, atol=0)
    with torch.inference_mode():
        w = torch.randn(2, 3, 2, 8)
        rotary_attention.rotary_(w, f)
    with pytest.raises(RuntimeError, match="overlapping"):
        rotary_attention.rotary_(torch.randn(1, 3, 2, 8).expand(2, 3, 2, 8), f)


def test_rotary_qk_rotates_both_at_the_same_positions():
    q = torch.randn(2, 5, 8, 16, requires_grad=True)
    k = torch.randn(2, 5, 2, 16, requires_grad=True)  # fewer key heads (GQA)
    f = inv_freq(16)
    pos = torch.randint(0, 100, (2, 5))
    rq, rk = rotary_attention.rotary_qk(q, k, f, positions=pos, layout="half")
    torch.testing.assert_close(rq, rotary(q, f, positions=pos, layout="half"), rtol=0, atol=0)
    torch.testing.assert_close(rk, rotary(k, f, positions=pos, layout="half"), rtol=0, atol=0)
    f64 = f.double()
    assert_rotation_close(rq, table_reference(q, f, pos, layout="half"), q, f)
    assert_rotation_close(rk, table_reference(k, f, pos, layout="half"), k, f)
    wq, wk = torch.randn_like(rq), torch.randn_like(rk)
    ((rq * wq).sum() + (rk * wk).sum()).backward()
    # Gradients against autograd through the fp64 table formula.
    q64 = q.detach().double().requires_grad_()
    k64 = k.detach().double().requires_grad_()
    want = (table_reference(q64, f64, pos, layout="half") * wq).sum() + (
        table_reference(k64, f64, pos, layout="half") * wk
    ).sum()
    want.backward()
    torch.testing.assert_close(q.grad.double(), q64.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k.grad.double(), k64.grad, rtol=1e-5, atol=1e-5)
    with pytest.raises(RuntimeError, match="same B, T and D"):
        rotary_attention.rotary_qk(q, torch.randn(2, 4, 2, 16), f)
    torch.library.opcheck(torch.ops.rotary_attention.rotary_qk, (q, k, f), {"offset": 3})


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("device", DEVICES)
def test_in_place_and_qk_on_device(device, layout):
    x = torch.randn(2, 3, 7, 16, device=device).transpose(1, 2)
    f = inv_freq(16, device=device)
    want = rotary(x, f, offset=4, layout=layout)
    torch.testing.assert_close(want.double(), table_reference(x, f, offset=4, layout=layout), rtol=2e-6, atol=2e-6)
    y = x.clone()
    rotary_attention.rotary_(y, f, offset=4, layout=layout)
    torch.testing.assert_close(y, want, rtol=0, atol=0)
    q, k = torch.randn(2, 7, 4, 16, device=device), torch.randn(2, 7, 1, 16, device=device)
    rq, rk = rotary_attention.rotary_qk(q, k, f, layout=layout)
    torch.testing.assert_close(rq, rotary(q, f, layout=layout), rtol=0, atol=0)
    torch.testing.assert_close(rk, rotary(k, f, layout=layout), rtol=0, atol=0)


def test_opcheck_in_place():
    f = inv_freq(8)
    torch.library.opcheck(torch.ops.rotary_attention.rotary_, (torch.randn(2, 5, 3, 8), f), {"layout": "interleaved"})
    torch.library.opcheck(torch.ops.rotary_attention.rotary_, (torch.randn(2, 3, 5, 8).transpose(1, 2), f))


@pytest.mark.parametrize("x_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("f_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("device", DEVICES)
def test_every_pair_of_input_and_frequency_dtypes(device, x_dtype, f_dtype):
    """Angles in the frequencies' dtype (fp32 for 16-bit ones); output in x's
    dtype. Positions near 300000 make the angle dtype visible: there an fp32
    angle is off from the fp64 one by up to 300000 * 2^-24 ~ 0.02 rad, far
    outside the error bound of every output dtype."""
    torch.manual_seed(1)
    x = torch.randn(2, 50, 3, 8, device=device).to(x_dtype)
    f = inv_freq(8, f_dtype, device)
    got = rotary(x, f, offset=300000)
    assert got.dtype == x_dtype
    angle_f = f.double() if f_dtype == torch.float64 else f.float()
    assert_rotation_close(got, table_reference(x, angle_f, None, 300000), x, f)
    if f_dtype == torch.float64 and x_dtype != torch.float64:
        # The same frequencies with angles rounded to fp32 are measurably different.
        wrong = table_reference(x, angle_f.float(), None, 300000)
        with pytest.raises(AssertionError):
            assert_rotation_close(got, wrong, x, f)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_16_bit_fast_path_equals_fp32_math_rounded_once(dtype, layout):
    """Contiguous 16-bit rows are converted in registers; strided ones go
    through fp32 row buffers. Both must equal the fp32 result rounded once."""
    torch.manual_seed(2)
    x = torch.randn(3, 50, 4, 64).to(dtype)
    strided = torch.empty(3, 50, 4, 128, dtype=dtype)[..., ::2]
    strided.copy_(x)
    f = inv_freq(64)
    want = rotary(x.float(), f, layout=layout).to(dtype)
    assert torch.equal(rotary(x, f, layout=layout), want)
    assert torch.equal(rotary(strided, f, layout=layout), want)
    back = torch.ops.rotary_attention.rotary_backward
    assert torch.equal(back(x, f, layout=layout), back(strided, f, layout=layout))


BUILDS_SCRIPT = r"""
import sys
import torch
import rotary_attention
from conftest import DTYPES, LAYOUTS, inv_freq


def with_special_values(dtype):
    # randn plus NaN, infinities, denormals of the dtype, and tiny normals whose
    # rotated values become fp32 denormals (hardware bf16 rounding flushes those).
    x = torch.randn(3, 50, 4, 64, generator=torch.Generator().manual_seed(0)).to(dtype)
    tiny = torch.finfo(dtype).tiny
    flat = x.view(-1)
    flat[::97] = float("nan")
    flat[5::101] = float("inf")
    flat[7::103] = -float("inf")
    flat[11::13] = tiny * 0.25
    flat[3::17] = -tiny * 3
    flat[1::19] = 1e-39 if dtype != torch.float16 else 1e-6
    return x


outs = {}
for dtype in DTYPES:
    x = with_special_values(dtype)
    strided = torch.empty(3, 50, 4, 128, dtype=dtype)[..., ::2].copy_(x)
    f = inv_freq(64, torch.float64 if dtype == torch.float64 else torch.float32)
    for layout in LAYOUTS:
        for view, t in (("contiguous", x), ("strided", strided)):
            outs[(str(dtype), layout, view, "forward")] = torch.ops.rotary_attention.rotary(t, f, layout=layout)
            outs[(str(dtype), layout, view, "backward")] = torch.ops.rotary_attention.rotary_backward(
                t, f, layout=layout
            )
torch.save(outs, sys.argv[1])
print(rotary_attention.cpu_kernel_capability())
"""


def test_every_cpu_build_of_the_loop_gives_the_same_results(tmp_path):
    """The loop is compiled per instruction set; each build, forced with
    ROTARY_ATTENTION_CPU_CAPABILITY in its own process, must give the same
    values (NaN where NaN, denormals kept) as every other."""
    results = outputs_of_each_cpu_build(BUILDS_SCRIPT, tmp_path)
    assert "DEFAULT" in results
    assert rotary_attention.cpu_kernel_capability() in results
    with open("/proc/cpuinfo") as f:
        has_bf16 = "avx512_bf16" in f.read()
    if torch.backends.cpu.get_cpu_capability() == "AVX512" and has_bf16:
        assert rotary_attention.cpu_kernel_capability() == "AVX512_BF16"
        assert set(results) == {"DEFAULT", "AVX2", "AVX512", "AVX512_BF16"}
    want = results["DEFAULT"]
    for name, got in results.items():
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0, equal_nan=True, msg=f"{name} {key}")


def test_a_build_this_cpu_lacks_gives_the_best_it_has():
    """ROTARY_ATTENTION_CPU_CAPABILITY caps the build: one above what the CPU
    runs gives the best it runs."""
    best = rotary_attention.cpu_kernel_capability()
    lacking = CPU_BUILDS[CPU_BUILDS.index(best.lower()) + 1 :]
    if not lacking:
        pytest.skip(f"this CPU runs every build of the loop ({best})")
    script = "import rotary_attention; print(rotary_attention.cpu_kernel_capability())"
    assert run_as_cpu_build(lacking[-1], script) == best


@pytest.mark.parametrize("device", DEVICES)
def test_int32_positions_equal_int64(device):
    x = torch.randn(2, 9, 3, 16, device=device)
    f = inv_freq(16, device=device)
    pos = torch.randint(0, 40000, (2, 9), device=device)
    got = rotary(x, f, positions=pos.int(), offset=3)
    assert torch.equal(got, rotary(x, f, positions=pos, offset=3))
    assert_rotation_close(got, table_reference(x, f, pos, 3), x, f)


def test_in_place_under_torch_compile():
    f = inv_freq(16)

    def fn(x):
        y = x * 2
        rotary_attention.rotary_(y, f, offset=5, layout="interleaved")
        return y + 1

    x = torch.randn(2, 7, 3, 16)
    with torch.no_grad():
        got = torch.compile(fn, fullgraph=True)(x)
    assert_rotation_close(got - 1, table_reference(x * 2, f, None, 5, "interleaved"), x * 2, f)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_the_error_bound_rejects_16_bit_arithmetic(dtype):
    """The 16-bit tolerance is tight enough to matter: the same rotation with
    every product and sum rounded to the 16-bit type falls outside it, while
    the kernel (fp32 math, one rounding) is inside."""
    torch.manual_seed(4)
    x = torch.randn(3, 50, 4, 64).to(dtype)
    f = inv_freq(64)
    want = table_reference(x, f)
    assert_rotation_close(rotary(x, f), want, x, f)
    angle = (torch.arange(50).float()[:, None] * f[None])[None, :, None, :]
    c, s = angle.cos().to(dtype), angle.sin().to(dtype)
    x1, x2 = x[..., ::2], x[..., 1::2]
    in_16_bits = torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], -1)  # every op rounds to dtype
    with pytest.raises(AssertionError):
        assert_rotation_close(in_16_bits, want, x, f)


def device_views(device, dtype, B, T, H, D):
    """(name, view) pairs built on the device itself (moving a non-dense CPU
    view to CUDA would give a contiguous copy), so each kernel takes its
    strided, unaligned and vector paths: contiguous, permuted (B, H, T, D),
    every other feature (stride 2), a storage offset of one element (pairs not
    aligned to their size), and odd head strides."""
    n = B * T * H * D
    buf = torch.randn(2 * n + B * T * H + 3, device=device).to(dtype)
    yield "contiguous", buf[:n].view(B, T, H, D)
    yield "permuted", torch.randn(B, H, T, D, device=device).to(dtype).transpose(1, 2)
    yield "every_other", buf[: 2 * n].view(B, T, H, 2 * D)[..., ::2]
    yield "unaligned", buf[1 : 1 + n].view(B, T, H, D)
    yield "odd_strides", buf.as_strided((B, T, H, D), (T * H * (D + 1), H * (D + 1), D + 1, 1), 1)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("D,rotary_dim", [(16, 12), (512, -1)], ids=["D16_partial", "D512"])
@pytest.mark.parametrize("device", DEVICES)
def test_every_kernel_path_against_the_table(device, D, rotary_dim, layout, dtype):
    """Every stride pattern and alignment, partial rotary in every layout,
    D = 512 (more pairs than a CUDA block has threads), int32 (B, T) positions;
    forward, in place and the gradient, against the fp64 table formula."""
    torch.manual_seed(5)
    B, T, H = 2, 5, 3
    rd = D if rotary_dim < 0 else rotary_dim
    f = inv_freq(rd, torch.float64 if dtype == torch.float64 else torch.float32, device)
    pos = torch.randint(0, 30000, (B, T), device=device, dtype=torch.int32)
    for name, x in device_views(device, dtype, B, T, H, D):
        want = table_reference(x, f, pos, 7, layout, rotary_dim)
        got = rotary(x, f, positions=pos, offset=7, layout=layout, rotary_dim=rotary_dim)
        assert got.shape == x.shape and got.dtype == dtype and got.device == x.device, name
        assert_rotation_close(got, want, x, f)
        # The gradient: autograd through the fp64 formula, in x's dtype.
        xg = x.detach().clone().requires_grad_()
        w = torch.randn_like(want).to(dtype).double()  # the gradient arriving in x's dtype
        (rotary(xg, f, positions=pos, offset=7, layout=layout, rotary_dim=rotary_dim).double() * w).sum().backward()
        x64 = x.detach().double().requires_grad_()
        (
            table_reference(x64, f.double() if dtype == torch.float64 else f, pos, 7, layout, rotary_dim) * w
        ).sum().backward()
        assert_rotation_close(xg.grad, x64.grad, w, f)
        # In place on the view itself: same values, same strides.
        strides = x.stride()
        with torch.no_grad():
            rotary_attention.rotary_(x, f, positions=pos, offset=7, layout=layout, rotary_dim=rotary_dim)
        assert x.stride() == strides
        torch.testing.assert_close(x, got, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_tensors_and_no_rotated_features(device):
    f = inv_freq(8, device=device)
    for shape in [(0, 3, 2, 8), (2, 0, 2, 8), (2, 3, 0, 8)]:
        x = torch.randn(shape, device=device)
        assert rotary(x, f).shape == shape
        assert torch.ops.rotary_attention.rotary_backward(x, f).shape == shape
    # rotary_dim = 0: nothing rotates, every feature is copied.
    x = torch.randn(2, 3, 2, 8, device=device)
    none = torch.empty(0, device=device)
    for layout in LAYOUTS:
        assert torch.equal(rotary(x, none, layout=layout, rotary_dim=0), x)


def test_reused_cos_sin_tables_follow_the_frequencies_dtypes_and_positions():
    """The CPU kernel keeps the tables of recent calls with default positions;
    a repeated call must still see frequencies changed in place, another
    offset, another T and another math dtype."""
    torch.manual_seed(6)
    f = inv_freq(16).clone()
    x = torch.randn(2, 9, 3, 16)
    first = rotary(x, f)
    assert torch.equal(rotary(x, f), first)  # a repeat: the same bits
    f.mul_(1.5)  # in place: same tensor, new values
    assert_rotation_close(rotary(x, f), table_reference(x, f), x, f)
    assert_rotation_close(rotary(x, f, offset=4), table_reference(x, f, None, 4), x, f)
    assert_rotation_close(rotary(x[:, :5], f), table_reference(x[:, :5], f), x[:, :5], f)
    xd = x.double()
    fd = f.double()
    assert_rotation_close(rotary(xd, fd), table_reference(xd, fd), xd, fd)
    assert_rotation_close(rotary(x, fd), table_reference(x, fd), x, fd)  # fp64 math for fp32 x
