"""The operator's options beyond the original: position ids, offsets, the three
pair layouts, partial rotary, the in-place variant and rotary_qk, against
independent formulations (a gathered cos/sin table) on every device, plus
property tests over random shapes, strides, dtypes and positions, and the CPU
loop's instruction-set builds against each other."""

import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rotary_attention
from conftest import DEVICES, DTYPES, LAYOUTS, assert_rotation_close, inv_freq, table_reference

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
    (rq.sum() + rk.sum()).backward()
    assert q.grad is not None and k.grad is not None
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
def test_every_pair_of_input_and_frequency_dtypes(x_dtype, f_dtype):
    """Angles in the frequencies' dtype (fp32 for 16-bit ones); output in x's
    dtype. Positions near 300000 make the angle dtype visible: there an fp32
    angle is off from the fp64 one by up to 300000 * 2^-24 ~ 0.02 rad, far
    outside the error bound of every output dtype."""
    torch.manual_seed(1)
    x = torch.randn(2, 50, 3, 8).to(x_dtype)
    f = inv_freq(8, f_dtype)
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
    here = os.path.dirname(os.path.abspath(__file__))
    results = {}
    for cap in ["default", "avx2", "avx512", "avx512_bf16"]:
        path = tmp_path / f"{cap}.pt"
        env = dict(os.environ, ROTARY_ATTENTION_CPU_CAPABILITY=cap, PYTHONPATH=here)
        run = subprocess.run([sys.executable, "-c", BUILDS_SCRIPT, str(path)], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        results[run.stdout.strip()] = torch.load(path)
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
