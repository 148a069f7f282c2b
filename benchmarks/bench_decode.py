"""Incremental decoding benchmark: 200 decode steps of one token at n_state 512,
8 heads, in one process: the original driven by Whisper's kv-cache hooks, the
port with the original's semantics, and the port with absolute_positions.

    python benchmarks/bench_decode.py [--steps 200] [--reps 5]

Each repetition decodes the whole sequence from an empty cache; contenders
take turns, and the medians over repetitions are reported.
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rotary_attention  # noqa: E402
from common import machine_line  # noqa: E402
from rotary_attention import reference  # noqa: E402

N_STATE, N_HEAD = 512, 8


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--sdpa", type=int, default=1, help="1: SDPA path, 0: explicit path")
    args = parser.parse_args()
    sdpa = bool(args.sdpa)
    n_ctx = args.steps

    ref = reference.randomize_weights_(reference.MultiHeadAttention(N_STATE, N_HEAD), seed=0).eval()
    reference.MultiHeadAttention.sdpa = sdpa
    port = rotary_attention.MultiHeadAttention(N_STATE, N_HEAD, sdpa=sdpa).eval()
    absolute = rotary_attention.MultiHeadAttention(N_STATE, N_HEAD, sdpa=sdpa, absolute_positions=True).eval()
    port.load_state_dict(ref.state_dict())
    absolute.load_state_dict(ref.state_dict())
    tokens = torch.randn(1, args.steps, N_STATE)
    mask = torch.empty(n_ctx, n_ctx).fill_(float("-inf")).triu_(1)

    def decode_original():
        cache, hooks = reference.install_kv_cache_hooks(ref, n_text_ctx=n_ctx)
        for i in range(args.steps):
            ref(tokens[:, i : i + 1], mask=mask, kv_cache=cache)
        for h in hooks:
            h.remove()

    def decode_port(model):
        cache = rotary_attention.KVCache()
        for i in range(args.steps):
            model(tokens[:, i : i + 1], mask=mask, kv_cache=cache)

    contenders = {
        "original + Whisper hooks": decode_original,
        "port (original semantics)": lambda: decode_port(port),
        "port, absolute_positions": lambda: decode_port(absolute),
    }
    times = {name: [] for name in contenders}
    with torch.no_grad():
        for fn in contenders.values():
            fn()  # warm-up
        for _ in range(args.reps):
            for name, fn in contenders.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)

    print(machine_line())
    print(
        f"{args.steps} decode steps, n_state {N_STATE}, {N_HEAD} heads, {'sdpa' if sdpa else 'explicit'} path, "
        f"median of {args.reps}"
    )
    base = statistics.median(times["original + Whisper hooks"])
    print(f"{'contender':28} {'total ms':>10} {'ms/step':>9} {'vs original':>12}")
    for name, t in times.items():
        m = statistics.median(t)
        print(f"{name:28} {m * 1e3:10.1f} {m * 1e3 / args.steps:9.3f} {base / m:11.2f}x")


if __name__ == "__main__":
    main()
