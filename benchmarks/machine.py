"""What the benchmarks print about the machine they ran on, so figures from two runs compare.

Latency targets are absolute milliseconds, and the development machines are shared virtual ones
whose speed changes from one session to the next: the same commit's in-process ``/score`` read
14 ms at p50 in one session and 40 ms in another, every stage about three times slower, pandas 2
or 3 alike. ``describe()`` therefore adds to the load average a fixed CPU-bound reference (pure
Python and NumPy), measured in the same run, so a reader can tell a slower machine from slower
code. The slow session read Python 50 ms and NumPy 36 ms here; ratios measured side by side in one
run hold on either kind of machine, millisecond targets only on the faster one.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def best_of(run: Callable[[], T], repeat: int) -> tuple[float, T]:
    """(the fastest of ``repeat`` timed calls of ``run`` in seconds: the least disturbed by
    neighbours, the last call's result)."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = run()
        times.append(time.perf_counter() - t0)
    return min(times), value


def reference_ms() -> tuple[float, float]:
    """(pure Python: sum of a million ints, NumPy: sort of a million floats), each the best of 5 in ms."""
    values = np.random.default_rng(0).random(1_000_000)
    python_s, _ = best_of(lambda: sum(range(1_000_000)), 5)
    numpy_s, _ = best_of(lambda: np.sort(values), 5)
    return python_s * 1000, numpy_s * 1000


def load() -> str:
    """The load average and the CPU count (the load generator and the servers share the CPUs)."""
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" ({os.cpu_count()} CPUs)"


def describe() -> str:
    """The load and the CPU reference (sum of a million ints; sort of a million floats)."""
    python_ms, numpy_ms = reference_ms()
    return f"{load()}; CPU reference: Python {python_ms:.1f} ms, NumPy {numpy_ms:.1f} ms"
