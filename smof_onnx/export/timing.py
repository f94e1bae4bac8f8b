"""Latency of runners on any runtime, measured the way :func:`smof_onnx.verify.compare_latency`
measures ONNX Runtime sessions: a warm-up, then the runners in a rotated order every iteration
(so none always runs first on a warm cache) within one time budget, at least 5 timed runs each,
medians in milliseconds."""
from __future__ import annotations

import statistics
import time
from typing import Mapping

import numpy as np

from .base import Runner


def time_runners(runners: list[Runner], feeds: list[Mapping[str, np.ndarray]], budget_s: float,
                 warmup: int = 3) -> list[float]:
    """Median ms of each ``runners[i](feeds[i])``."""
    for _ in range(max(warmup, 1)):
        for r, f in zip(runners, feeds):
            r(f)
    times: list[list[float]] = [[] for _ in runners]
    k, it, start = len(runners), 0, time.perf_counter()
    while it < 5 or time.perf_counter() - start < budget_s:
        for j in range(k):
            i = (it + j) % k
            t0 = time.perf_counter()
            runners[i](feeds[i])
            times[i].append((time.perf_counter() - t0) * 1e3)
        it += 1
    return [statistics.median(t) for t in times]
