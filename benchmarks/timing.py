"""Wall time of a callable on CPU or CUDA, and the CUDA memory one call needs."""

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float


def time_runs(
    run: Callable[[], None], reset: Callable[[], None], device: torch.device, warmup: int, repeats: int
) -> Timing:
    """Median and 20%/80% quantiles of `repeats` timed calls of `run`, after `warmup` untimed ones.

    `reset` runs before every call, outside the timed span. On CUDA each call is timed with CUDA
    events, so the figure is GPU time including any gaps the host leaves between kernels.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be at least 1, got {repeats}")
    for _ in range(warmup):
        reset()
        run()
    if device.type == "cuda":
        times = _time_cuda(run, reset, repeats)
    else:
        times = []
        for _ in range(repeats):
            reset()
            start = time.perf_counter()
            run()
            times.append((time.perf_counter() - start) * 1e3)
    quantiles = torch.tensor(times, dtype=torch.float64).quantile(torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64))
    return Timing(*quantiles.tolist())


def _time_cuda(run, reset, repeats):
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    torch.cuda.synchronize()
    for start, end in events:
        reset()
        start.record()
        run()
        end.record()
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in events]


def peak_memory_mb(run: Callable[[], None], reset: Callable[[], None], device: torch.device) -> float | None:
    """MiB that one call of `run` allocates at its peak beyond what was allocated before it; None off CUDA."""
    if device.type != "cuda":
        return None
    reset()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    run()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated(device) - before) / 2**20


def time_interleaved(
    calls: dict, warmup: int, repeats: int, resets: dict | None = None, settle: int = 0
) -> dict[str, Timing]:
    """Each call's median and 20%/80% quantiles over `repeats` rounds after `warmup` ones; every round calls each
    once, so load from other processes on a shared machine falls on all contenders alike. `resets[name]`, where
    given, runs before each call of `name`, outside the timed span. `settle` untimed calls of the same contender
    precede each timed one: a call right after a very different one (a long loop of small ops) can take twice its
    time (measured: torch.nn's bfloat16 LSTM training step at B=1 T=32 H=64 after fused_rnn's reference)."""
    names = list(calls)
    times = {name: [] for name in names}
    resets = resets or {}
    order = random.Random(0)
    for turn in range(warmup + repeats):
        # Each round in its own order, so that no call always runs right after the same other one: a call after a
        # long Python loop finds the caches cold (rotating a fixed order keeps each one's predecessor).
        for name in order.sample(names, len(names)):
            for _ in range(settle):
                if name in resets:
                    resets[name]()
                calls[name]()
            if name in resets:
                resets[name]()
            start = time.perf_counter()
            calls[name]()
            if turn >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    quantiles = torch.tensor([0.5, 0.2, 0.8], dtype=torch.float64)
    return {
        name: Timing(*torch.tensor(t, dtype=torch.float64).quantile(quantiles).tolist()) for name, t in times.items()
    }
