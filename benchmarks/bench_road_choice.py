"""What choosing the road costs the fast road: the nn.Module's forward inspects its
children on every call (types, hooks, global hooks) before one operator call.

Contenders, interleaved, on plain children (so both take the fast road):
- `forward` as it is;
- `forward` with the inspection skipped (`_children_are_plain` replaced by a
  function returning True: the operator call the forward made before the faithful
  road existed).
Workloads at n_state 512, 8 heads, fp32: a decode step (one token over 100 cached
steps, default KVCache) and a 64-token prompt without a cache. Also the inspection
alone, and the faithful road (a no-op forward hook on `value`) on the same work.

    python benchmarks/bench_road_choice.py [--reps 15]
"""

import argparse
import os
import sys
import timeit

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rotary_attention  # noqa: E402
from common import machine_line, median_seconds_interleaved  # noqa: E402

N_STATE, N_HEAD, CACHED = 512, 8, 100


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    torch.manual_seed(0)
    layer = rotary_attention.MultiHeadAttention(N_STATE, N_HEAD).eval()
    skipped = rotary_attention.MultiHeadAttention(N_STATE, N_HEAD).eval()
    skipped.load_state_dict(layer.state_dict())
    skipped._children_are_plain = lambda: True
    hooked = rotary_attention.MultiHeadAttention(N_STATE, N_HEAD).eval()
    hooked.load_state_dict(layer.state_dict())
    hooked.value.register_forward_hook(lambda module, args, out: None)
    mask = torch.empty(448, 448).fill_(float("-inf")).triu_(1)
    prompt = torch.randn(1, 64, N_STATE)
    token = torch.randn(1, 1, N_STATE)

    def decode_step(m):
        cache = rotary_attention.KVCache(CACHED + 64)
        with torch.no_grad():
            m(torch.randn(1, CACHED, N_STATE), mask=mask, kv_cache=cache)

        def step():
            with torch.no_grad():
                m(token, mask=mask, kv_cache=cache)
            cache._entry(m).length = CACHED  # the same cached length at every call

        return step

    def prompt_pass(m):
        def run():
            with torch.no_grad():
                m(prompt, mask=mask)

        return run

    print(f"# {machine_line()}")
    print(f"# n_state {N_STATE}, {N_HEAD} heads, fp32, medians of {args.reps} (contenders interleaved)")
    for name, make in (("decode step (100 cached)", decode_step), ("64-token prompt", prompt_pass)):
        # Each timed call repeats the work 20 times, so that a sample lasts long enough.
        fns = []
        for m in (layer, skipped, hooked):
            fn = make(m)
            fns.append(lambda fn=fn: [fn() for _ in range(20)])
        t_forward, t_skipped, t_hooked = (t / 20 for t in median_seconds_interleaved(fns, reps=args.reps))
        print(
            f"{name:26s} forward {t_forward * 1e6:8.1f} us   inspection skipped {t_skipped * 1e6:8.1f} us"
            f"   ratio {t_forward / t_skipped:5.3f}   faithful road (hooked value) {t_hooked * 1e6:8.1f} us"
        )
    n = 20000
    inspect = timeit.timeit(layer._children_are_plain, number=n) / n
    print(f"the inspection alone: {inspect * 1e6:.2f} us per call")


if __name__ == "__main__":
    main()
