"""The operations of one decode step (torch.profiler), before and after the in-place cache.

"before": the cache as it was until the buffered KVCache, a concatenation per step (the
operator's cached_key/cached_value path, which Whisper's hooks also take); "after": the
default KVCache, keys and values written in place into buffers. n_state 512, 8 heads,
absolute positions, one token per step with 400 steps cached; 50 profiled steps.

    python benchmarks/profile_decode_step.py [--cached 400] [--steps 50]
"""

import argparse
import collections
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rotary_attention  # noqa: E402
from common import machine_line  # noqa: E402

N_STATE, N_HEAD = 512, 8


def concatenating_step(layer, cache):
    """One step of the previous cache: the operator's cached_key/cached_value path."""

    def step(token):
        key, value = cache.get("kv", (None, None))
        out, _, key, value = layer._attention(token, None, None, key, value, 0 if key is None else key.shape[1])
        cache["kv"] = (key, value)
        return out

    return step


def buffered_step(layer, cache):
    return lambda token: layer(token, kv_cache=cache)[0]


def profile_steps(step, tokens, cached, n_steps):
    step(tokens[:, :cached])
    for i in range(cached, cached + 10):  # warm-up
        step(tokens[:, i : i + 1])
    start = cached + 10
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(start, start + n_steps):
            step(tokens[:, i : i + 1])
    rows = collections.OrderedDict()
    for event in sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total):
        if event.key.startswith(("aten::", "rotary_attention::")):
            rows[event.key] = (event.count / n_steps, event.self_cpu_time_total / n_steps)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cached", type=int, default=400)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    layer = rotary_attention.MultiHeadAttention(N_STATE, N_HEAD, absolute_positions=True).eval()
    tokens = torch.randn(1, args.cached + args.steps + 20, N_STATE)
    with torch.no_grad():
        before = profile_steps(concatenating_step(layer, {}), tokens, args.cached, args.steps)
        after = profile_steps(buffered_step(layer, rotary_attention.KVCache()), tokens, args.cached, args.steps)
    print(machine_line())
    print(f"one decode step with {args.cached} cached steps, per step (mean of {args.steps} profiled steps)")
    print(f"{'operator':52} {'before: calls':>13} {'self us':>8} {'after: calls':>13} {'self us':>8}")
    for name in list(dict.fromkeys(list(before) + list(after))):
        b, a = before.get(name, (0, 0.0)), after.get(name, (0, 0.0))
        if max(b[1], a[1]) < 1.0 and b[0] == a[0]:
            continue  # below 1 us a step and unchanged
        print(f"{name:52} {b[0]:13.0f} {b[1]:8.1f} {a[0]:13.0f} {a[1]:8.1f}")
    total_b = sum(v[1] for v in before.values())
    total_a = sum(v[1] for v in after.values())
    calls_b = sum(v[0] for v in before.values())
    calls_a = sum(v[0] for v in after.values())
    print(f"{'all operators':52} {calls_b:13.0f} {total_b:8.1f} {calls_a:13.0f} {total_a:8.1f}")


if __name__ == "__main__":
    main()
