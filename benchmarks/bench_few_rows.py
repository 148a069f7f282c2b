"""The C++ decoder's few-rows product (src/whisper/few_rows_linear.cpp) in GB/s,
for each CPU build of its kernels, against F.linear (MKL) on the same inputs.

    python benchmarks/bench_few_rows.py [--reps 9] [--rounds 3]

One decode step's weights of a Whisper-base-sized decoder (512 state, 6 layers:
the attention projections, the MLP and the 51865 x 512 embedding for the
logits, 194 MB in fp32), multiplied by 1 row (greedy) and 5 rows (beam 5), fp32
and int8 weights (int8: the product reads a quarter of the bytes). Each CPU
build (ROTARY_ATTENTION_CPU_CAPABILITY: avx512, avx2, default) runs in a process
of its own, the builds in turn for --rounds rounds (each round starting one
build later); in each process the product and F.linear over the same fp32
weights are timed in turn, medians of --reps; printed: the medians over rounds.
GB/s is the weight bytes read over the time: the weights outgrow the caches, so
the read bandwidth is the limit. A build this CPU cannot run falls back to the
best it can, and the line says which ran.
"""

import argparse
import os
import statistics
import subprocess
import sys

CHILD = r"""
import sys, torch, rotary_attention
sys.path.insert(0, sys.argv[1])
from common import median_seconds_interleaved
torch.set_num_threads(2)
reps = int(sys.argv[2])
g = torch.Generator().manual_seed(0)
shapes = [(51865, 512)] + [(2048, 512)] * 6 + [(512, 2048)] * 6 + [(512, 512)] * 36
weights = [torch.randn(shape, generator=g) for shape in shapes]
quantized = [rotary_attention._C._quantize_rows_int8(w) for w in weights]
fp32_bytes = sum(w.numel() * 4 for w in weights)
few_rows = rotary_attention._C._few_rows_linear
for rows in (1, 5):
    xs = {k: torch.randn(rows, k, generator=g) for k in (512, 2048)}
    contenders = [
        lambda: [few_rows(xs[w.shape[1]], w) for w in weights],
        lambda: [few_rows(xs[q.shape[1]], q, None, s) for q, s in quantized],
        lambda: [torch.nn.functional.linear(xs[w.shape[1]], w) for w in weights],
    ]
    fp32, int8, mkl = median_seconds_interleaved(contenders, reps=reps)
    print(rotary_attention.cpu_kernel_capability(), rows, fp32_bytes / fp32 / 1e9,
          fp32_bytes / 4 / int8 / 1e9, fp32_bytes / mkl / 1e9)
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, here)
    from bench_vs_ctranslate2 import cpu_name

    print(f"# {cpu_name()}, 2 threads; load average {os.getloadavg()[0]:.2f}")
    print(f"# GB/s of weights read: medians of {args.reps} in a process, then over {args.rounds} rounds")
    builds = ["avx512", "avx2", "default"]
    samples = {}  # (build that ran, rows): [(fp32, int8, MKL) GB/s per round]
    for round_ in range(args.rounds):
        for build in builds[round_ % 3 :] + builds[: round_ % 3]:
            env = dict(os.environ, ROTARY_ATTENTION_CPU_CAPABILITY=build)
            run = subprocess.run([sys.executable, "-c", CHILD, here, str(args.reps)], env=env, check=True,
                                 capture_output=True, text=True)  # fmt: skip
            for line in run.stdout.splitlines():
                ran, rows, *rates = line.split()
                samples.setdefault((ran, int(rows)), []).append([float(r) for r in rates])
    print(f"{'build':>11} {'rows':>4} {'fp32 GB/s':>10} {'int8 GB/s':>10} {'MKL fp32 GB/s':>12}")
    for (ran, rows), rounds in samples.items():
        fp32, int8, mkl = (statistics.median(column) for column in zip(*rounds, strict=True))
        print(f"{ran:>11} {rows:>4} {fp32:10.1f} {int8:10.1f} {mkl:12.1f}")


if __name__ == "__main__":
    main()
