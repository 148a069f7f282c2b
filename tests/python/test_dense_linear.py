"""The many-rows product of the Whisper model (its encoder, the audio's keys and
values): oneDNN's matmul on x86 CPUs that are not Intel's (MKL's SGEMM runs its
AVX2 code there), at::linear elsewhere; either is F.linear within fp32 rounding."""

import os
import platform
import subprocess
import sys

import pytest
import torch

from rotary_attention import _C

SHAPES = [((1500, 512), 2048, True), ((2, 1500, 512), 512, False), ((3, 7, 64), 96, True), ((17, 80), 33, True)]


@pytest.mark.parametrize("backend", ["onednn", "aten"])
@pytest.mark.parametrize("shape,out,bias", SHAPES)
def test_dense_linear_is_f_linear(backend, shape, out, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    w = torch.randn(out, shape[-1], generator=g) / shape[-1] ** 0.5
    b = torch.randn(out, generator=g) if bias else None
    want = torch.nn.functional.linear(x.double(), w.double(), None if b is None else b.double())
    got = _C._dense_linear(x, w, b, backend)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    # A transposed (non-contiguous) input gives the same.
    xt = x.transpose(-1, -2).contiguous().transpose(-1, -2)
    torch.testing.assert_close(_C._dense_linear(xt, w, b, backend), got, rtol=0, atol=0)


@pytest.mark.parametrize("batch,queries,keys,heads", [(1, 1500, 1500, 8), (2, 700, 513, 4), (1, 1, 9, 2)])
def test_dense_attention_is_sdpa(batch, queries, keys, heads):
    """An encoder's attention in blocks of 512 queries a head, through the products
    of dense_linear: SDPA's to fp32 rounding (blocks of every size, keys of any count)."""
    g = torch.Generator().manual_seed(1)
    n = 64 * heads
    q, k, v = (torch.randn(batch, t, n, generator=g) for t in (queries, keys, keys))
    split = lambda x: x.view(batch, x.shape[1], heads, 64).transpose(1, 2).double()  # noqa: E731
    want = torch.nn.functional.scaled_dot_product_attention(split(q), split(k), split(v))
    got = _C._dense_attention(q, k, v, heads)
    assert got.shape == (batch, queries, n)
    torch.testing.assert_close(got.double(), want.transpose(1, 2).reshape(batch, queries, n), rtol=1e-5, atol=1e-5)


def test_a_gradient_or_another_dtype_takes_at_linear():
    x = torch.randn(40, 64, requires_grad=True)
    w = torch.randn(32, 64)
    y = _C._dense_linear(x, w, None, "onednn")
    assert torch.equal(y, torch.nn.functional.linear(x, w))
    y.sum().backward()
    torch.testing.assert_close(x.grad, w.sum(0).expand(40, 64))
    xd, wd = x.detach().double(), w.double()
    assert torch.equal(_C._dense_linear(xd, wd, None, "onednn"), torch.nn.functional.linear(xd, wd))
    with pytest.raises(RuntimeError, match="backend must be onednn or aten"):
        _C._dense_linear(x, w, None, "mkl")


def cpu_vendor():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("vendor_id"):
                return line.split(":")[1].strip()
    return None


def backend_in_a_new_process(**environment):
    env = {k: v for k, v in os.environ.items() if k != "RA_DENSE_LINEAR"} | environment
    code = "from rotary_attention import _C; print(_C._dense_linear_backend())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the choice is made on x86 CPUs only")
def test_backend_is_onednn_on_other_vendors_than_intel():
    want = "aten" if cpu_vendor() == "GenuineIntel" else "onednn"
    if "RA_DENSE_LINEAR" in os.environ:  # (this process's choice was overridden)
        assert backend_in_a_new_process().stdout.strip() == want
    else:
        assert _C._dense_linear_backend() == want
    other = "onednn" if want == "aten" else "aten"
    assert backend_in_a_new_process(RA_DENSE_LINEAR=other).stdout.strip() == other
    refused = backend_in_a_new_process(RA_DENSE_LINEAR="mkl")
    assert refused.returncode != 0 and "RA_DENSE_LINEAR: expected onednn or aten" in refused.stderr
