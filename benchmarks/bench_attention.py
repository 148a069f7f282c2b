"""MultiHeadAttention benchmark: the C++-backed port against the original
PyTorch layer, forward only, in one process on the same weights and inputs.

    python benchmarks/bench_attention.py [--reps 7]

- decode: B=1, one new token per step on top of 100 cached tokens (the
  original driven by Whisper's kv-cache hooks, the port by KVCache);
- encoder: B=4, T=1500, n_state=512, 8 heads, no mask.
Prints medians (ms) and the speed-up of the port.
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rotary_attention  # noqa: E402
from common import machine_line, median_seconds_interleaved  # noqa: E402
from rotary_attention import reference  # noqa: E402

N_STATE, N_HEAD, N_TEXT_CTX = 512, 8, 448


def pair(sdpa):
    ref = reference.randomize_weights_(reference.MultiHeadAttention(N_STATE, N_HEAD), seed=0).eval()
    port = rotary_attention.MultiHeadAttention(N_STATE, N_HEAD, sdpa=sdpa).eval()
    port.load_state_dict(ref.state_dict())
    return ref, port


def decode_step_seconds(step_fn, new_cache, prompt, tokens, reps):
    """Median over reps of the mean time of one decode step, each rep starting
    from a fresh cache holding the prompt's keys and values."""
    samples = []
    for _ in range(reps):
        cache = new_cache()
        step_fn(prompt, cache)
        start = time.perf_counter()
        for i in range(tokens.shape[1]):
            step_fn(tokens[:, i : i + 1], cache)
        samples.append((time.perf_counter() - start) / tokens.shape[1])
    return statistics.median(samples)


def bench_decode(sdpa, reps):
    ref, port = pair(sdpa)
    mask = torch.empty(N_TEXT_CTX, N_TEXT_CTX).fill_(float("-inf")).triu_(1)
    prompt = torch.randn(1, 100, N_STATE)
    tokens = torch.randn(1, 20, N_STATE)
    hooks = []

    def ref_cache():
        for h in hooks:
            h.remove()
        hooks.clear()
        cache, new_hooks = reference.install_kv_cache_hooks(ref, n_text_ctx=N_TEXT_CTX)
        hooks.extend(new_hooks)
        return cache

    def ref_step(x, cache):
        return ref(x, mask=mask, kv_cache=cache)

    def port_step(x, cache):
        return port(x, mask=mask, kv_cache=cache)

    ref_times, port_times = [], []
    with reference_sdpa(sdpa), torch.no_grad():
        for _ in range(reps):  # alternate, so drift affects both alike
            ref_times.append(decode_step_seconds(ref_step, ref_cache, prompt, tokens, 1))
            port_times.append(decode_step_seconds(port_step, rotary_attention.KVCache, prompt, tokens, 1))
    t_ref, t_port = statistics.median(ref_times), statistics.median(port_times)
    for h in hooks:
        h.remove()
    return t_ref, t_port


def bench_encoder(sdpa, reps):
    ref, port = pair(sdpa)
    x = torch.randn(4, 1500, N_STATE)
    with reference_sdpa(sdpa), torch.no_grad():
        t_ref, t_port = median_seconds_interleaved([lambda: ref(x), lambda: port(x)], reps=reps)
    return t_ref, t_port


class reference_sdpa:
    """The original reads the class attribute MultiHeadAttention.sdpa."""

    def __init__(self, enabled):
        self.enabled = enabled

    def __enter__(self):
        self.saved = reference.MultiHeadAttention.sdpa
        reference.MultiHeadAttention.sdpa = self.enabled

    def __exit__(self, *exc):
        reference.MultiHeadAttention.sdpa = self.saved


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    print(machine_line())
    print(f"{'case':44} {'original ms':>12} {'port ms':>10} {'speed-up':>9}")
    cases = [
        ("decode step, 100 cached tokens, sdpa", lambda: bench_decode(True, args.reps)),
        ("decode step, 100 cached tokens, explicit", lambda: bench_decode(False, args.reps)),
        ("encoder B=4 T=1500, sdpa", lambda: bench_encoder(True, args.reps)),
        ("encoder B=4 T=1500, explicit", lambda: bench_encoder(False, args.reps)),
    ]
    for name, fn in cases:
        t_ref, t_port = fn()
        print(f"{name:44} {t_ref * 1e3:12.3f} {t_port * 1e3:10.3f} {t_ref / t_port:8.2f}x", flush=True)


if __name__ == "__main__":
    main()
