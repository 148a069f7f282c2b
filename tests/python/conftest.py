"""Helpers shared by the tests: the original layers paired with the port,
masks, rotary references written independently of the kernels, and the
`device` parameter (CUDA cases skip, with the reason, where there is no GPU)."""

import contextlib
import os
import subprocess
import sys

import pytest
import torch

import rotary_attention
from rotary_attention import reference

# Under pytest-xdist (scripts/test.sh runs `-n auto`) the workers share the
# cores: each takes its share of torch's threads, as OpenMP threads waiting
# beside another busy process spin and slow everything down. The programs the
# tests start (the command, a process per CPU build) get the same share.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    torch.set_num_threads(_share)
    os.environ.setdefault("OMP_NUM_THREADS", str(_share))

randomize = reference.randomize_weights_
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LAYOUTS = ["interleaved_to_half", "interleaved", "half"]

NEEDS_CUDA = [
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
    pytest.mark.skipif(
        not rotary_attention.built_with_cuda(), reason="the CUDA kernel was not built (no nvcc or CPU-only torch)"
    ),
]
# Parametrize a test with `@pytest.mark.parametrize("device", DEVICES)`.
DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=NEEDS_CUDA)]

# The two faces of the layers: the torch.nn.Modules and the bound C++ modules
# (`@pytest.mark.parametrize("impl", IMPLS)`); both run the same C++ math.
IMPLEMENTATIONS = {"module": rotary_attention, "cpp": rotary_attention.cpp}
IMPLS = list(IMPLEMENTATIONS)


@contextlib.contextmanager
def original_sdpa(enabled: bool):
    """The original reads the class attribute MultiHeadAttention.sdpa."""
    saved = reference.MultiHeadAttention.sdpa
    reference.MultiHeadAttention.sdpa = enabled
    try:
        yield
    finally:
        reference.MultiHeadAttention.sdpa = saved


def make_pair(
    n_state, n_head, *, sdpa=True, group_norm=False, dtype=torch.float32, seed=0, dropout_rate=0.01, impl="module"
):
    """The original layer with random weights and the port (`impl`: the
    nn.Module or the C++ module) loaded from its state dict."""
    ref = reference.MultiHeadAttention(n_state, n_head, dropout_rate=dropout_rate, group_norm=group_norm)
    randomize(ref, seed)
    port = IMPLEMENTATIONS[impl].MultiHeadAttention(
        n_state, n_head, dropout_rate=dropout_rate, group_norm=group_norm, sdpa=sdpa
    )
    port.load_state_dict(ref.state_dict())
    ref.to(dtype).eval()
    port.to(dtype).eval()
    return ref, port


def causal_mask(n, dtype=torch.float32):
    return torch.empty(n, n).fill_(float("-inf")).triu_(1).to(dtype)


def path_tolerance(dtype, sdpa=True):
    """assert_close tolerances for two computations of attention in `dtype` that
    sum in different orders, from the precision the path computes in, not from
    the dtype alone: the explicit path rounds its logits and softmax weights to
    fp32 as the original does (`qk.float()`), so fp64 there is fp32-level."""
    if dtype == torch.float64 and sdpa:
        return dict(rtol=1e-10, atol=1e-10)
    if dtype == torch.float64:
        return dict(rtol=2e-6, atol=2e-6)  # fp32 weights, averaged in fp64
    if dtype == torch.float32:
        return dict(rtol=2e-5, atol=2e-5)
    return dict(rtol=2e-2, atol=2e-2)  # bf16 / fp16


def grad_tolerances(sdpa):
    """Backward (fp64): the rotary backward is one fused inverse rotation where
    the original's autograd sums slice gradients, so they agree to rounding;
    the explicit path's fp32 softmax limits it to fp32 level."""
    tol = path_tolerance(torch.float64, sdpa)
    return tol["rtol"], tol["atol"]


def inv_freq(dim, dtype=torch.float32, device="cpu"):
    """The original's frequencies for `dim` rotated features."""
    return reference.RotaryEmbedding(dim).inv_freq.to(device=device, dtype=dtype)


def original_rotate(x, inv_freq):
    """The original rotate_queries_or_keys, with a given inv_freq."""
    emb = reference.RotaryEmbedding(2 * inv_freq.numel()).to(x.device)
    emb.inv_freq = inv_freq
    return emb.rotate_queries_or_keys(x)


def table_reference(x, f, positions=None, offset=0, layout="interleaved_to_half", rotary_dim=-1):
    """The cos/sin rows a table indexed by position holds (position * f, for
    the positions used only: positions run to 30000 here), then the layout's
    formula; written independently of the kernels. Angles are rounded to f's
    dtype, as the operator (and the original) computes them; everything else
    is fp64. Runs on x's device; returns fp64."""
    B, T, H, D = x.shape
    rd = D if rotary_dim < 0 else rotary_dim
    half = rd // 2
    if positions is None:
        idx = torch.arange(T, device=x.device).expand(B, T) + offset
    else:
        idx = (positions if positions.dim() == 2 else positions.expand(B, T)).long() + offset
    angles = (idx.to(f.device).to(f.dtype)[..., None] * f).double()  # (B, T, half)
    cos = angles.cos()[:, :, None, :].to(x.device)  # (B, T, 1, half)
    sin = angles.sin()[:, :, None, :].to(x.device)
    xd = x.double()
    rot, tail = xd[..., :rd], xd[..., rd:]
    if layout in ("interleaved_to_half", "interleaved"):
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
    else:
        x1, x2 = rot[..., :half], rot[..., half:]
    o1, o2 = x1 * cos - x2 * sin, x1 * sin + x2 * cos
    if layout == "interleaved":
        out = torch.stack([o1, o2], -1).flatten(-2)
    else:
        out = torch.cat([o1, o2], -1)
    return torch.cat([out, tail], -1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


def rotation_error_bound(want, x, f, dtype):
    """How far a correct rotary result of dtype `dtype` may lie from the fp64
    reference `want` (same shape as x), elementwise, for frequencies f. Where
    the numbers come from: cos/sin are computed in f's dtype (fp32 for 16-bit
    f), within 1 ulp; the math is fp32 (fp64 for fp64 x, or fp32 x with fp64
    f): two products and a sum, each rounded once. So before the last rounding
    the error is within 4 ulps of the coarser of the two dtypes times
    |x1| + |x2| <= 2 max|x|, i.e. 8 ulps of max|x|; then the result is rounded
    once to `dtype`: half an ulp of the result. A kernel doing its arithmetic in
    16 bits, or computing angles in a narrower dtype, falls outside this bound
    (tests check that such variants fail it)."""
    math = (
        torch.float64
        if dtype == torch.float64 or (dtype == torch.float32 and f.dtype == torch.float64)
        else torch.float32
    )
    trig = torch.float64 if f.dtype == torch.float64 else torch.float32
    coarse_eps = max(torch.finfo(math).eps, torch.finfo(trig).eps)
    w = want.double()
    _, exponent = torch.frexp(w)  # |w| in [2^(e-1), 2^e)
    eps, tiny = torch.finfo(dtype).eps, torch.finfo(dtype).tiny
    half_ulp = 0.5 * eps * torch.ldexp(torch.ones_like(w), exponent - 1).clamp(min=tiny)
    return half_ulp + 8 * coarse_eps * x.double().abs().max()


def assert_rotation_close(got, want, x, f):
    """got (any dtype) against the fp64 reference want, within rotation_error_bound."""
    err = (got.double() - want.double()).abs()
    bound = rotation_error_bound(want, x, f, got.dtype)
    worst = (err / bound).max().item() if err.numel() else 0.0
    assert worst <= 1.0, f"error {worst:.2f}x the bound for {got.dtype} (max error {err.max().item():.3g})"


CPU_BUILDS = ["default", "avx2", "avx512", "avx512_bf16"]


def run_as_cpu_build(cap, script, *args):
    """Runs `script` in its own process with ROTARY_ATTENTION_CPU_CAPABILITY=cap;
    returns its standard output."""
    here = os.path.dirname(os.path.abspath(__file__))
    pythonpath = os.pathsep.join(p for p in (here, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, ROTARY_ATTENTION_CPU_CAPABILITY=cap, PYTHONPATH=pythonpath)
    run = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def outputs_of_each_cpu_build(script, tmp_path):
    """Runs `script` (which saves its outputs with torch.save to sys.argv[1] and prints
    rotary_attention.cpu_kernel_capability()) once per CPU build of the loops that this
    CPU can run, each forced with ROTARY_ATTENTION_CPU_CAPABILITY in its own process
    (the builds above the best one would run it again: test_a_build_this_cpu_lacks_...
    checks that). Returns {the build that ran: its outputs}."""
    best = rotary_attention.cpu_kernel_capability().lower()
    results = {}
    for cap in CPU_BUILDS[: CPU_BUILDS.index(best) + 1]:
        path = tmp_path / f"{cap}.pt"
        ran = run_as_cpu_build(cap, script, path)
        results[ran] = torch.load(path)
    return results
