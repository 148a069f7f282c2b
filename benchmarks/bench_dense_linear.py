"""The Whisper model's many-rows products and its encoder's attention, each way
this library can run them, interleaved in one process (benchmarks/common.py):
at::linear (MKL's SGEMM in torch's x86 builds) against oneDNN's matmul
(`dense_linear`, backend "onednn") on Whisper base's encoder shapes, in GFLOP/s;
and torch's SDPA (its CPU flash attention) against `dense_attention` (oneDNN's
products, 512 queries of a head at a time) over one window's 1500 frames, 8 heads.
The choice the library makes on this machine is printed last.

    python benchmarks/bench_dense_linear.py [--reps 15]
"""

import argparse

import torch

from common import machine_line, median_seconds_interleaved
from rotary_attention import _C

# (rows, in, out): an encoder window's projections, MLP and cross keys/values.
SHAPES = [(1500, 512, 512), (1500, 512, 2048), (1500, 2048, 512), (3000, 512, 512)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    print(machine_line())
    g = torch.Generator().manual_seed(0)
    print(f"{'rows x in x out':<20} {'at::linear':>16} {'oneDNN':>16} {'oneDNN vs at::linear':>22}")
    for rows, k, n in SHAPES:
        x, w, b = torch.randn(rows, k, generator=g), torch.randn(n, k, generator=g), torch.randn(n, generator=g)
        aten, onednn = median_seconds_interleaved(
            [
                lambda x=x, w=w, b=b, backend=backend: _C._dense_linear(x, w, b, backend)
                for backend in ("aten", "onednn")
            ],
            reps=args.reps,
        )
        flop = 2 * rows * k * n
        print(f"{f'{rows} x {k} x {n}':<20} {flop / aten / 1e9:>10.0f} GFLOP/s {flop / onednn / 1e9:>10.0f} GFLOP/s"
              f" {aten / onednn:>21.2f}x")  # fmt: skip
    q, k, v = (torch.randn(1, 1500, 512, generator=g) for _ in range(3))

    def sdpa():
        heads = lambda t: t.view(1, 1500, 8, 64).transpose(1, 2)  # noqa: E731
        return torch.nn.functional.scaled_dot_product_attention(heads(q), heads(k), heads(v))

    flash, blocks = median_seconds_interleaved([sdpa, lambda: _C._dense_attention(q, k, v, 8)], reps=args.reps)
    print(f"encoder self-attention (1500 frames, 8 heads): SDPA {flash * 1e3:.1f} ms, "
          f"dense_attention {blocks * 1e3:.1f} ms ({flash / blocks:.2f}x)")  # fmt: skip
    print(f"this machine's backend: {_C._dense_linear_backend()}")


if __name__ == "__main__":
    main()
