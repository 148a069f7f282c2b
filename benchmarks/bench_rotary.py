"""Rotary kernel benchmark: the operator against the original's eager code,
torch.compile of that code, and a same-size copy_ (the memory-bound limit),
forward and backward, in one process on the same tensors.

    python benchmarks/bench_rotary.py [--device cuda] [--reps 9] [--layouts ...]

Contenders are timed in turn (A, B, C, A, B, C, ...) so that drift on a shared
machine touches them alike; each timing is the mean of enough calls to last
~20 ms, and the medians over repetitions are printed with GB/s (one read and
one write of x, which is also what copy_ moves) and ratios. The large shape is
measured for every layout; the original only has its own layout, so the eager
and compiled contenders appear once per shape.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rotary_attention  # noqa: E402,F401  (registers the operator)
from common import machine_line, median_seconds_interleaved  # noqa: E402
from rotary_attention import reference  # noqa: E402

LAYOUTS = ["interleaved_to_half", "interleaved", "half"]


def original_rotate(x, inv_freq):
    """The original RotaryEmbedding.rotate_queries_or_keys, as a function."""
    sinusoid_inp = torch.einsum("i , j -> i j", torch.arange(x.shape[1], device=x.device), inv_freq)
    sin = sinusoid_inp.sin()[None, :, None, :]
    cos = sinusoid_inp.cos()[None, :, None, :]
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


op_rotate = torch.ops.rotary_attention.rotary  # resolved once, as a user would
op_backward = torch.ops.rotary_attention.rotary_backward


def batched(fn, min_time, device):
    """fn repeated so that one call of the result lasts about min_time."""
    median_seconds_interleaved([fn], device, reps=1)
    once = max(median_seconds_interleaved([fn], device, reps=3)[0], 1e-7)
    inner = max(1, int(min_time / once))

    def run():
        for _ in range(inner):
            fn()

    return run, inner


def run(shape, dtype, device, reps, layouts):
    x = torch.randn(shape, device=device, dtype=dtype)
    inv_freq = reference.RotaryEmbedding(shape[-1]).inv_freq.to(device)
    compiled = torch.compile(original_rotate)
    dst = torch.empty_like(x)
    moved = 2 * x.numel() * x.element_size()

    xg = x.clone().requires_grad_()
    y_eager = original_rotate(xg, inv_freq)
    y_compiled = compiled(xg, inv_freq)
    # The original returns fp32 for 16-bit x (its angles are fp32); the
    # operator returns x's dtype: each gets a gradient of its own output's dtype.
    g = torch.randn_like(x)
    g_original = g.to(y_eager.dtype)
    contenders = {("forward", "copy_ (limit)"): lambda: dst.copy_(x)}
    for layout in layouts:
        contenders[("forward", f"operator {layout}")] = lambda layout=layout: op_rotate(x, inv_freq, layout=layout)
    contenders[("forward", "original eager")] = lambda: original_rotate(x, inv_freq)
    contenders[("forward", "torch.compile(original)")] = lambda: compiled(x, inv_freq)
    for layout in layouts:
        y = op_rotate(xg, inv_freq, layout=layout)
        contenders[("backward", f"operator {layout}")] = lambda y=y: torch.autograd.grad(y, xg, g, retain_graph=True)
        contenders[("backward", f"rotary_backward {layout}")] = lambda layout=layout: op_backward(
            g, inv_freq, layout=layout
        )
    contenders[("backward", "original eager")] = lambda: torch.autograd.grad(y_eager, xg, g_original, retain_graph=True)
    contenders[("backward", "torch.compile(original)")] = lambda: torch.autograd.grad(
        y_compiled, xg, g_original, retain_graph=True
    )

    timed = {}
    with torch.no_grad():
        forward = {k: batched(fn, 0.02, device) for k, fn in contenders.items() if k[0] == "forward"}
    backward = {k: batched(fn, 0.02, device) for k, fn in contenders.items() if k[0] == "backward"}
    for group, grad in ((forward, False), (backward, True)):
        keys = list(group)
        with torch.set_grad_enabled(grad):
            medians = median_seconds_interleaved([group[k][0] for k in keys], device, reps)
        for k, m in zip(keys, medians, strict=True):
            timed[k] = m / group[k][1]

    copy = timed[("forward", "copy_ (limit)")]
    print(f"\nshape {tuple(shape)} {str(dtype).replace('torch.', '')} on {device}: {moved / 1e6:.1f} MB moved per call")
    print(f"{'':9} {'contender':36} {'median ms':>10} {'GB/s':>8} {'of copy_':>9}")
    for (pass_, name), sec in timed.items():
        print(f"{pass_:9} {name:36} {sec * 1e3:10.4f} {moved / sec / 1e9:8.1f} {copy / sec:8.0%}")
    eager, comp = timed[("forward", "original eager")], timed[("forward", "torch.compile(original)")]
    op = timed[("forward", f"operator {layouts[0]}")]
    print(f"forward {layouts[0]}: {eager / op:.1f}x faster than eager, {comp / op:.1f}x faster than torch.compile")
    return timed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--layouts", nargs="+", default=LAYOUTS)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to benchmark on cuda")
        return
    print(machine_line(args.device))
    large = (8, 4096, 32, 128) if args.device == "cuda" else (8, 1500, 8, 64)
    for dtype in args.dtypes:
        run(large, getattr(torch, dtype), args.device, args.reps, args.layouts)
    run((1, 1, 8, 64), torch.float32, args.device, args.reps, args.layouts[:1])


if __name__ == "__main__":
    main()
