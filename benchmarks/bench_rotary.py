"""Rotary kernel benchmark: the operator against the original's eager code,
torch.compile of that code, and a same-size copy_ (the memory-bound limit),
forward and backward, in one process on the same tensors.

    python benchmarks/bench_rotary.py [--device cuda] [--reps 7]

Prints medians (ms), GB/s (one read and one write of x for the kernels,
which is also what copy_ moves) and ratios.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine_line, median_seconds  # noqa: E402

import rotary_attention  # noqa: E402,F401  (registers the operator)
from rotary_attention import reference  # noqa: E402


def original_rotate(x, inv_freq):
    """The original RotaryEmbedding.rotate_queries_or_keys, as a function."""
    sinusoid_inp = torch.einsum("i , j -> i j", torch.arange(x.shape[1], device=x.device), inv_freq)
    sin = sinusoid_inp.sin()[None, :, None, :]
    cos = sinusoid_inp.cos()[None, :, None, :]
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


op_rotate = torch.ops.rotary_attention.rotary  # resolved once, as a user would


def run(shape, dtype, device, reps):
    x = torch.randn(shape, device=device, dtype=dtype)
    inv_freq = reference.RotaryEmbedding(shape[-1]).inv_freq.to(device)
    compiled = torch.compile(original_rotate)
    dst = torch.empty_like(x)
    moved = 2 * x.numel() * x.element_size()
    rows = {}
    fwd = {
        "operator": lambda: op_rotate(x, inv_freq),
        "original eager": lambda: original_rotate(x, inv_freq),
        "torch.compile(original)": lambda: compiled(x, inv_freq),
        "copy_ (limit)": lambda: dst.copy_(x),
    }
    with torch.no_grad():
        for name, fn in fwd.items():
            rows[("forward", name)] = median_seconds(fn, device, reps)

    xg = x.clone().requires_grad_()
    grads = {}
    for name, fn in [("operator", op_rotate), ("original eager", original_rotate), ("torch.compile(original)", compiled)]:
        y = fn(xg, inv_freq)
        g = torch.randn_like(y)
        grads[name] = (y, g)
        rows[("backward", name)] = median_seconds(
            lambda y=y, g=g: torch.autograd.grad(y, xg, g, retain_graph=True), device, reps
        )
    rows[("backward", "copy_ (limit)")] = rows[("forward", "copy_ (limit)")]

    print(f"\nshape {tuple(shape)} {str(dtype).replace('torch.', '')} on {device}: {moved / 1e6:.1f} MB moved per call")
    print(f"{'':9} {'contender':24} {'median ms':>10} {'GB/s':>8} {'op speed-up':>12}")
    for (pass_, name), sec in rows.items():
        op = rows[(pass_, "operator")]
        print(f"{pass_:9} {name:24} {sec * 1e3:10.4f} {moved / sec / 1e9:8.1f} {sec / op:11.2f}x")
    copy = rows[("forward", "copy_ (limit)")]
    print(f"operator forward at {copy / rows[('forward', 'operator')]:.0%} of copy_'s bandwidth, "
          f"backward at {copy / rows[('backward', 'operator')]:.0%}")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to benchmark on cuda")
        return
    print(machine_line(args.device))
    if args.device == "cuda":
        cases = [((8, 4096, 32, 128), torch.bfloat16), ((8, 4096, 32, 128), torch.float32), ((1, 1, 8, 64), torch.float32)]
    else:
        cases = [((8, 1500, 8, 64), torch.float32), ((8, 1500, 8, 64), torch.bfloat16), ((1, 1, 8, 64), torch.float32)]
    for shape, dtype in cases:
        run(shape, dtype, args.device, args.reps)


if __name__ == "__main__":
    main()
