"""Incremental decoding at n_state 512, 8 heads, one token per step, in one process.

1. Per-step time against cache length (50, 400, 1000, 2000 cached steps): the original
   driven by Whisper's kv-cache hooks (a concatenation per step), and the nn.Module at
   absolute positions with the default cache (buffers written in place), the static cache
   (eager) and the static cache with the step compiled (torch.compile, compiled once); the
   C++ object with its default cache; the nn.Module with the original's semantics (bitwise
   the original's results: it rotates the whole cache again at every step).
2. A 448-token decode from a 4-token prompt (Whisper's text context), each contender
   from an empty cache, with the ratios to the original.
3. Against the memory floor: the time to read K and V of n steps once (a sum over each,
   ATen's vectorized, threaded reduction, the same bytes) beside
   - what 1950 more cached steps add to a decode step (default cache, 50 -> 2000);
   - rotary_attention.decode_attention alone (one query, batch 1) at 2000 and 8000 cached
     steps, in GB/s of K and V read;
   - the static cache's compiled step at 100 cached steps with capacity 256 and 4096.

    python benchmarks/bench_decode.py [--reps 5] [--plot docs/decode_step_time.png]

Contenders take turns within each repetition (rotating order); medians over repetitions.
The static cache holds 2048 + steps positions at every length (one capacity, as a user sets
it); decode_attention reads only the steps written. --plot draws the curve (needs
matplotlib, an optional dependency).
"""

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rotary_attention  # noqa: E402
from common import machine_line, median_seconds  # noqa: E402
from rotary_attention import reference  # noqa: E402

N_STATE, N_HEAD = 512, 8
LENGTHS = [50, 400, 1000, 2000]
TIMED_STEPS = 32  # single-token steps timed after each prefill


class Contender:
    """Fills a cache with `length` steps (untimed), then decodes tokens one by one."""

    def __init__(self, name, start, step):
        self.name, self.start, self.step = name, start, step


def make_contenders(ref, module, same_semantics, cpp_module, capacity, mask, n_ctx):
    def original_start(prompt):
        cache, hooks = reference.install_kv_cache_hooks(ref, n_text_ctx=n_ctx)
        original_start.hooks = hooks  # registered while this contender decodes
        ref(prompt, mask=mask, kv_cache=cache)
        return cache

    def original_step(cache, token):
        ref(token, mask=mask, kv_cache=cache)

    def module_start(make_cache, layer=module):
        def start(prompt):
            cache = make_cache()
            layer(prompt, mask=mask, kv_cache=cache)
            return cache

        return start

    def stepper(layer):
        def step(cache, token):
            layer(token, mask=mask, kv_cache=cache)

        return step

    module_step = stepper(module)

    compiled = torch.compile(module_step, fullgraph=True)
    return [
        Contender("original + Whisper hooks", original_start, original_step),
        Contender("nn.Module, default cache", module_start(rotary_attention.KVCache), module_step),
        Contender(
            "nn.Module, static cache",
            module_start(lambda: rotary_attention.KVCache(capacity, static=True)),
            module_step,
        ),
        Contender(
            "nn.Module, static, compiled",
            module_start(lambda: rotary_attention.KVCache(capacity, static=True)),
            compiled,
        ),
        Contender(
            "C++ object, default cache", module_start(rotary_attention.cpp.KVCache, cpp_module), stepper(cpp_module)
        ),
        Contender(
            "nn.Module, original semantics",
            module_start(rotary_attention.KVCache, same_semantics),
            stepper(same_semantics),
        ),
    ], original_start


def remove_hooks(original_start):
    for h in getattr(original_start, "hooks", []):
        h.remove()
    original_start.hooks = []


def per_step_seconds(contender, prompt, tokens, original_start):
    cache = contender.start(prompt)
    times = []
    for i in range(tokens.shape[1]):
        start = time.perf_counter()
        contender.step(cache, tokens[:, i : i + 1])
        times.append(time.perf_counter() - start)
    remove_hooks(original_start)
    return statistics.median(times)


def decode_seconds(contender, prompt, tokens, original_start):
    start = time.perf_counter()
    cache = contender.start(prompt)
    for i in range(tokens.shape[1]):
        contender.step(cache, tokens[:, i : i + 1])
    elapsed = time.perf_counter() - start
    remove_hooks(original_start)
    return elapsed


def plot(curves, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, values in curves.items():
        ax.plot(LENGTHS, [v * 1e3 for v in values], marker="o", label=name)
    ax.set_xlabel("cached steps")
    ax.set_ylabel("ms per decode step (median)")
    ax.set_title(f"One-token decode step, n_state {N_STATE}, {N_HEAD} heads, CPU")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def floor_section(module, curves, reps):
    """Section 3: the targets measured against reading K and V once, in this run."""
    default = curves["nn.Module, default cache"]

    def cache_of(steps):
        return torch.randn(1, steps, N_STATE), torch.randn(1, steps, N_STATE)

    def read_once(k, v):
        return lambda: (k.sum(), v.sum())

    k, v = cache_of(LENGTHS[-1] - LENGTHS[0])
    floor = median_seconds(read_once(k, v), reps=reps)
    # The same read from memory rather than the last-level cache: a 64 MB write first
    # evicts K and V (its own time, measured alone, is subtracted).
    evict = torch.zeros(16 * 1024 * 1024)
    evicting = median_seconds(lambda: evict.add_(1), reps=reps)
    cold = median_seconds(lambda: (evict.add_(1), k.sum(), v.sum()), reps=reps) - evicting
    added = default[-1] - default[0]
    print(f"\nagainst the memory floor ({2 * k.numel() * 4 / 1e6:.1f} MB of K and V for "
          f"{LENGTHS[-1] - LENGTHS[0]} steps)")  # fmt: skip
    print(f"  per-step growth {LENGTHS[0]} -> {LENGTHS[-1]} cached (default cache): "
          f"{default[-1] / default[0]:.2f}x (target <= 2x)")  # fmt: skip
    print(f"  {LENGTHS[-1] - LENGTHS[0]} more cached steps add {added * 1e6:.0f} us to a step; reading their K and V "
          f"once takes {floor * 1e6:.0f} us from the last-level cache: {added / floor:.2f}x (target <= 1.5x), "
          f"{cold * 1e6:.0f} us from memory: {added / cold:.2f}x")  # fmt: skip

    print("  decode_attention alone (batch 1, one query, 8 heads) against reading K and V once:")
    print(f"  {'cached':>8} {'kernel us':>10} {'GB/s':>7} {'floor us':>9} {'GB/s':>7} {'kernel/floor':>13}")
    for steps in (LENGTHS[-1], 8000):
        k, v = cache_of(steps)
        q = torch.randn(1, 1, N_STATE)
        lengths = torch.tensor([steps])
        timings = {}
        contenders = {
            "kernel": lambda q=q, k=k, v=v, lengths=lengths: rotary_attention.decode_attention(
                q, k, v, lengths, N_HEAD
            ),
            "floor": read_once(k, v),
        }
        for rep in range(reps):  # interleaved
            for name in list(contenders)[rep % 2 :] + list(contenders)[: rep % 2]:
                timings.setdefault(name, []).append(median_seconds(contenders[name], reps=3, min_time=0.02))
        kernel, read = (statistics.median(timings[n]) for n in ("kernel", "floor"))
        gbytes = 2 * k.numel() * 4 / 1e9
        print(f"  {steps:8d} {kernel * 1e6:10.1f} {gbytes / kernel:7.1f} {read * 1e6:9.1f} {gbytes / read:7.1f} "
              f"{read / kernel:12.2f}x (target >= 0.67x)")  # fmt: skip

    # The compiled static step at 100 cached steps, at two capacities.
    tokens = torch.randn(1, 132, N_STATE)
    steps_at = {}
    for capacity in (256, 4096):
        cache = rotary_attention.KVCache(capacity, static=True)

        def step(token, cache=cache):
            return module(token, kv_cache=cache)[0]

        steps_at[capacity] = (cache, torch.compile(step, fullgraph=True))
    samples = {c: [] for c in steps_at}
    for rep in range(reps):
        for capacity in (256, 4096) if rep % 2 == 0 else (4096, 256):
            cache, compiled = steps_at[capacity]
            cache.clear()
            module(tokens[:, :100], kv_cache=cache)
            times = []
            for i in range(100, 132):
                start = time.perf_counter()
                compiled(tokens[:, i : i + 1])
                times.append(time.perf_counter() - start)
            samples[capacity].append(statistics.median(times))
    small, large = (statistics.median(samples[c]) for c in (256, 4096))
    print(f"  compiled static step at 100 cached: capacity 256 {small * 1e6:.0f} us, capacity 4096 "
          f"{large * 1e6:.0f} us: {large / small:.2f}x (target <= 1.2x)")  # fmt: skip


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--plot", help="write the per-step curve as a PNG here (needs matplotlib)")
    args = parser.parse_args()

    n_ctx = max(LENGTHS) + TIMED_STEPS + 448
    capacity = max(LENGTHS) + TIMED_STEPS
    ref = reference.randomize_weights_(reference.MultiHeadAttention(N_STATE, N_HEAD), seed=0).eval()
    module = rotary_attention.MultiHeadAttention(N_STATE, N_HEAD, absolute_positions=True).eval()
    module.load_state_dict(ref.state_dict())
    same_semantics = rotary_attention.MultiHeadAttention(N_STATE, N_HEAD).eval()  # bitwise the original's
    same_semantics.load_state_dict(ref.state_dict())
    cpp_module = rotary_attention.cpp.MultiHeadAttention(N_STATE, N_HEAD, absolute_positions=True).eval()
    cpp_module.load_state_dict(ref.state_dict())
    mask = torch.empty(n_ctx, n_ctx).fill_(float("-inf")).triu_(1)
    tokens = torch.randn(1, n_ctx, N_STATE)
    contenders, original_start = make_contenders(ref, module, same_semantics, cpp_module, capacity, mask, n_ctx)

    print(machine_line())
    print(f"n_state {N_STATE}, {N_HEAD} heads, SDPA path, one token per step; medians of {args.reps} repetitions")
    curves = {c.name: [] for c in contenders}
    with torch.no_grad():
        for c in contenders:  # warm-up, and the compiled step's one compilation
            per_step_seconds(c, tokens[:, :50], tokens[:, 50:52], original_start)
        for length in LENGTHS:
            prompt, steps = tokens[:, :length], tokens[:, length : length + TIMED_STEPS]
            samples = {c.name: [] for c in contenders}
            for rep in range(args.reps):
                order = contenders[rep % len(contenders) :] + contenders[: rep % len(contenders)]
                for c in order:
                    samples[c.name].append(per_step_seconds(c, prompt, steps, original_start))
            for name, s in samples.items():
                curves[name].append(statistics.median(s))

        print("\nper-step time (ms) against cached steps")
        print(f"{'contender':30}" + "".join(f"{n:>9}" for n in LENGTHS) + f"{'2000/50':>9}")
        for name, values in curves.items():
            print(f"{name:30}" + "".join(f"{v * 1e3:9.3f}" for v in values) + f"{values[-1] / values[0]:8.2f}x")

        prompt, steps = tokens[:, :4], tokens[:, 4:448]
        totals = {c.name: [] for c in contenders}
        for rep in range(args.reps):
            order = contenders[rep % len(contenders) :] + contenders[: rep % len(contenders)]
            for c in order:
                totals[c.name].append(decode_seconds(c, prompt, steps, original_start))
    base = statistics.median(totals[contenders[0].name])
    print("\n448-token decode from a 4-token prompt")
    print(f"{'contender':30} {'total ms':>9} {'vs original':>12}")
    print(f"(compilations of the static step: {torch._dynamo.utils.counters['stats']['unique_graphs']})")
    for name, t in totals.items():
        m = statistics.median(t)
        print(f"{name:30} {m * 1e3:9.1f} {base / m:11.2f}x")
    with torch.no_grad():
        floor_section(module, curves, args.reps)
    if args.plot:
        plot(curves, args.plot)


if __name__ == "__main__":
    main()
