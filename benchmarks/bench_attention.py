"""MultiHeadAttention benchmark: the original PyTorch layer, the port as a
torch.nn.Module (rotary_attention.MultiHeadAttention) and the C++ module
object (rotary_attention.cpp.MultiHeadAttention), forward only, in one process
on the same weights and inputs, contenders taking turns.

    python benchmarks/bench_attention.py [--reps 7]

- decode: B=1, one new token per step on top of 100 cached tokens (the
  original driven by Whisper's kv-cache hooks, the ports by their KVCache);
- encoder: B=4, T=1500, n_state=512, 8 heads, no mask.
Prints medians (ms) and each port's speed-up over the original.
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


# The two faces of the port: (layer class, its KVCache).
PORTS = {
    "nn.Module": (rotary_attention.MultiHeadAttention, rotary_attention.KVCache),
    "C++ object": (rotary_attention.cpp.MultiHeadAttention, rotary_attention.cpp.KVCache),
}


def contenders(sdpa):
    """The original and each port, with the same weights."""
    ref = reference.randomize_weights_(reference.MultiHeadAttention(N_STATE, N_HEAD), seed=0).eval()
    ports = {}
    for name, (cls, _) in PORTS.items():
        ports[name] = cls(N_STATE, N_HEAD, sdpa=sdpa).eval()
        ports[name].load_state_dict(ref.state_dict())
    return ref, ports


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
    ref, ports = contenders(sdpa)
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

    runs = [("original", lambda x, cache: ref(x, mask=mask, kv_cache=cache), ref_cache)]
    for name, port in ports.items():
        runs.append((name, lambda x, cache, port=port: port(x, mask=mask, kv_cache=cache), PORTS[name][1]))
    times = {name: [] for name, _, _ in runs}
    with reference_sdpa(sdpa), torch.no_grad():
        for rep in range(reps):  # take turns, starting with each in turn, so drift affects all alike
            for k in range(len(runs)):
                name, step, new_cache = runs[(rep + k) % len(runs)]
                times[name].append(decode_step_seconds(step, new_cache, prompt, tokens, 1))
    for h in hooks:
        h.remove()
    return {name: statistics.median(t) for name, t in times.items()}


def bench_encoder(sdpa, reps):
    ref, ports = contenders(sdpa)
    x = torch.randn(4, 1500, N_STATE)
    fns = {"original": lambda: ref(x)}
    fns.update({name: (lambda port=port: port(x)) for name, port in ports.items()})
    with reference_sdpa(sdpa), torch.no_grad():
        medians = median_seconds_interleaved(list(fns.values()), reps=reps)
    return dict(zip(fns, medians, strict=True))


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
    print(f"{'case':42} {'original ms':>12} {'nn.Module ms':>13} {'C++ object ms':>14} {'speed-ups':>16}")
    cases = [
        ("decode step, 100 cached tokens, sdpa", lambda: bench_decode(True, args.reps)),
        ("decode step, 100 cached tokens, explicit", lambda: bench_decode(False, args.reps)),
        ("encoder B=4 T=1500, sdpa", lambda: bench_encoder(True, args.reps)),
        ("encoder B=4 T=1500, explicit", lambda: bench_encoder(False, args.reps)),
    ]
    for name, fn in cases:
        t = fn()
        o, m, c = t["original"], t["nn.Module"], t["C++ object"]
        print(
            f"{name:42} {o * 1e3:12.3f} {m * 1e3:13.3f} {c * 1e3:14.3f} {o / m:7.2f}x {o / c:7.2f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()
