"""Wall-clock timing of a repeated call: median and spread after warm-up.

Shared by the exporter's latency measurement and the benchmark, so both report the same
statistic the same way.

>>> t = timings(lambda: sum(range(1000)), repeats=5)
>>> sorted(t), t["n"]
(['median', 'min', 'n', 'p10', 'p90'], 5)
>>> both = round_robin_timings({"a": lambda: sum(range(10)), "b": lambda: sum(range(100))}, repeats=3)
>>> sorted(both), both["b"]["n"]
(['a', 'b'], 3)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["timings", "round_robin_timings"]


def timings(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median, p10, p90 and min of `repeats` timed calls of `fn` after `warmup` untimed ones, in seconds.

    The one timing loop of the project: export latency (`keras_mgc.export.verify`), its
    SavedModel child (`keras_mgc.export.latency_worker`) and the benchmark (`keras_mgc.bench`).
    """
    return round_robin_timings({"fn": fn}, repeats, warmup)["fn"]


def round_robin_timings(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, dict[str, float]]:
    """:func:`timings` of several calls interleaved: each round times every call once, so a change
    in the machine's load hits all of them alike (same-run comparisons in `keras_mgc.bench`)."""
    for _ in range(warmup):  # allocation, tracing, XNNPACK weight packing
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: _summary(np.asarray(t)) for name, t in times.items()}


def _summary(t: np.ndarray) -> dict[str, float]:
    return {"median": float(np.median(t)), "p10": float(np.percentile(t, 10)), "p90": float(np.percentile(t, 90)),
            "min": float(t.min()), "n": int(t.size)}
