"""Timing that is fair to every contender: one call of each task per round, medians over rounds, and on CUDA
device events around a synchronised call."""
import statistics
import time
from typing import Callable, Dict, List

import torch


def timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    """A function that runs ``fn`` once and returns its duration in seconds."""
    if device.type == 'cuda':
        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end) / 1e3
    else:
        def run(fn):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
    return run


def interleaved(tasks: Dict[str, Callable[[], object]], rounds: int, warmup: int, device: torch.device
                ) -> Dict[str, float]:
    """Median seconds per call of each task, timing one call of every task per round."""
    run = timer(device)
    for _ in range(warmup):
        for fn in tasks.values():
            run(fn)
    times: Dict[str, List[float]] = {name: [] for name in tasks}
    for _ in range(rounds):
        for name, fn in tasks.items():
            times[name].append(run(fn))
    return {name: statistics.median(t) for name, t in times.items()}
