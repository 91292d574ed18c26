"""Wall-clock timing of a repeated call: median and spread after warm-up.

Shared by the exporter's latency measurement and the benchmark, so both report the same
statistic the same way.

>>> t = timings(lambda: sum(range(1000)), repeats=5)
>>> sorted(t), t["n"]
(['median', 'min', 'n', 'p10', 'p90'], 5)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["timings"]


def timings(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median, p10, p90 and min of `repeats` timed calls of `fn` after `warmup` untimed ones, in seconds.

    The one timing loop of the project: export latency (`keras_mgc.export.verify`), its
    SavedModel child (`keras_mgc.export.latency_worker`) and the benchmark (`keras_mgc.bench`).
    """
    for _ in range(warmup):  # allocation, tracing, XNNPACK weight packing
        fn()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    t = np.asarray(times)
    return {"median": float(np.median(t)), "p10": float(np.percentile(t, 10)), "p90": float(np.percentile(t, 90)),
            "min": float(t.min()), "n": int(t.size)}
