"""Timing helpers shared by the benchmarks: medians of repeated runs, side by side in one process."""

import statistics
import time

import torch


def sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn, device="cpu", reps=7, min_time=0.05):
    """Median over `reps` repetitions of the mean time of one call; each
    repetition runs enough calls to last about `min_time` seconds."""
    fn()
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    once = max(time.perf_counter() - start, 1e-7)
    inner = max(1, int(min_time / once))
    samples = []
    for _ in range(reps):
        sync(device)
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        sync(device)
        samples.append((time.perf_counter() - start) / inner)
    return statistics.median(samples)


def machine_line(device="cpu"):
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    line = f"torch {torch.__version__}, {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    if torch.device(device).type == "cuda":
        line += f", {torch.cuda.get_device_name()}"
    return line


def median_seconds_interleaved(fns, device="cpu", reps=7):
    """Medians of one call of each fn, timed in turn (A, B, C, then B, C, A,
    then C, A, B, ...), so that drift on a shared machine, and whatever one
    contender leaves behind for the next, affect every contender alike."""
    for fn in fns:
        fn()
    samples = [[] for _ in fns]
    for rep in range(reps):
        for k in range(len(fns)):
            i = (rep + k) % len(fns)
            sync(device)
            start = time.perf_counter()
            fns[i]()
            sync(device)
            samples[i].append(time.perf_counter() - start)
    return [statistics.median(s) for s in samples]
