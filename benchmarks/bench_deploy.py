"""The AOTInductor package against the eager C++ module and the Python nn.Module, at
encoder size and per decode step, n_state 512, 8 heads, in one process.

- encoder: B=4, T=1500, no mask, SDPA path; the package is exported with these shapes.
- decode step: B=1, one token, absolute positions, 100 steps cached then 32 timed steps;
  the package is rotary_attention.StaticDecodeStep with its cache passed in (capacity 160,
  which fits the sequence, and 512), the eager contenders use the default KVCache.

    python benchmarks/bench_deploy.py [--reps 7] [--out DIR]

The package runs in AOTInductor's C++ runner (torch._inductor.aoti_load_package, the
runner torch::inductor::AOTIModelPackageLoader uses), the C++ module is
rotary_attention.cpp.MultiHeadAttention; both are called from Python here, so the two
pay the same few microseconds of binding per call. Contenders take turns in rotating
order; medians over repetitions.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rotary_attention  # noqa: E402
from common import machine_line  # noqa: E402

N_STATE, N_HEAD = 512, 8


def median_call(fn, reps_inner):
    times = []
    for _ in range(reps_inner):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rotating(contenders, reps, measure):
    samples = {name: [] for name in contenders}
    names = list(contenders)
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            samples[name].append(measure(contenders[name]))
    return {name: statistics.median(s) for name, s in samples.items()}


def encoder(module, cpp_module, out_dir, reps):
    x = torch.randn(4, 1500, N_STATE)
    path = rotary_attention.export_aoti_package(module, (x,), os.path.join(out_dir, "encoder.pt2"))
    package = torch._inductor.aoti_load_package(path)
    with torch.no_grad():
        torch.testing.assert_close(package(x)[0], module(x)[0], rtol=1e-4, atol=1e-4)
        contenders = {
            "AOTInductor package": lambda: package(x),
            "C++ module (eager)": lambda: cpp_module(x),
            "nn.Module (eager)": lambda: module(x),
        }
        for fn in contenders.values():
            fn()
        return rotating(contenders, reps, lambda fn: median_call(fn, 3))


class Decoding:
    """A contender's decoder: start() fills its cache with the prompt, step(token) decodes one."""

    def __init__(self, start, step):
        self.start, self.step = start, step


def decode_step(layer, cpp_layer, out_dir, reps, cached=100, timed=32, capacities=(160, 512)):
    tokens = torch.randn(1, cached + timed, N_STATE)
    state = {}
    contenders = {}
    for capacity in capacities:
        # A static cache attends over its whole capacity (the unwritten steps masked):
        # one capacity that fits this sequence, one four times larger.
        step_module = rotary_attention.StaticDecodeStep([layer]).eval()
        path = rotary_attention.export_aoti_package(
            step_module,
            (torch.randn(1, 1, N_STATE), *step_module.empty_cache(1, capacity)),
            os.path.join(out_dir, f"decode_step_{capacity}.pt2"),
        )
        package = torch._inductor.aoti_load_package(path)

        def package_start(step_module=step_module, package=package, capacity=capacity):
            state["cache"] = step_module.empty_cache(1, capacity)
            for i in range(cached):  # the package decodes the prompt token by token
                package(tokens[:, i : i + 1].contiguous(), *state["cache"])

        contenders[f"package, capacity {capacity}"] = Decoding(
            package_start, lambda t, package=package: package(t, *state["cache"])
        )

    def eager_start(model, make_cache):
        def start():
            state["cache"] = make_cache()
            model(tokens[:, :cached], kv_cache=state["cache"])

        return start

    contenders |= {
        "C++ module (eager)": Decoding(
            eager_start(cpp_layer, rotary_attention.cpp.KVCache), lambda t: cpp_layer(t, kv_cache=state["cache"])
        ),
        "nn.Module (eager)": Decoding(
            eager_start(layer, rotary_attention.KVCache), lambda t: layer(t, kv_cache=state["cache"])
        ),
    }

    def measure(decoding):
        decoding.start()
        times = []
        for i in range(cached, cached + timed):
            token = tokens[:, i : i + 1].contiguous()
            start = time.perf_counter()
            decoding.step(token)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    with torch.no_grad():
        for d in contenders.values():
            measure(d)
        return rotating(contenders, reps, measure)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--out", help="where the packages go (default: a temporary folder)")
    args = parser.parse_args()
    torch.manual_seed(0)
    layer = rotary_attention.MultiHeadAttention(N_STATE, N_HEAD, absolute_positions=True).eval()
    cpp_layer = rotary_attention.cpp.MultiHeadAttention(N_STATE, N_HEAD, absolute_positions=True).eval()
    cpp_layer.load_state_dict(layer.state_dict())
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or tmp
        os.makedirs(out, exist_ok=True)
        enc = encoder(layer, cpp_layer, out, args.reps)
        dec = decode_step(layer, cpp_layer, out, args.reps)
    print(machine_line())
    print(f"n_state {N_STATE}, {N_HEAD} heads; medians of {args.reps} repetitions")
    for title, results, unit, scale in (
        ("encoder B=4 T=1500", enc, "ms", 1e3),
        ("decode step, 100 cached", dec, "us", 1e6),
    ):
        base = results["C++ module (eager)"]
        print(f"\n{title:30} {unit:>9} {'vs C++ module':>14}")
        for name, t in results.items():
            print(f"{name:30} {t * scale:9.1f} {base / t:13.2f}x")


if __name__ == "__main__":
    main()
