"""Bench only: the cyclic GC's collections and pauses in a process (``gc.callbacks``).

``install(path)`` (called by ``bench/twist_observe.py`` when ``BENCH_GC_STATS=FILE``
is set) times every collection and, at shutdown, writes one JSON object to ``path``:
per generation the number of collections, their summed and longest pause (ms)
and the objects they freed; every pause of ``SLOW_MS`` or more with its
``time.perf_counter()`` start (comparable with the bench's other processes),
generation and length; the thresholds and frozen-object count at exit.
``summarize(stats, since, until)`` counts the pauses inside a time window.

The callbacks cost about a microsecond per collection (a young collection comes
every 700 allocations by default): on for diagnosis, not for the CPU figures.
"""

from __future__ import annotations

import atexit
import gc
import json
import time
from collections.abc import Callable
from typing import Any

SLOW_MS = 1.0

_now = time.perf_counter


class GcStats:
    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.total_ms = [0.0, 0.0, 0.0]
        self.max_ms = [0.0, 0.0, 0.0]
        self.collected = [0, 0, 0]
        self.slow: list[tuple[float, int, float]] = []  # (start, generation, ms)
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = _now()
            return
        ms = (_now() - self._started) * 1000
        gen = info["generation"]
        self.count[gen] += 1
        self.total_ms[gen] += ms
        self.collected[gen] += info["collected"]
        if ms > self.max_ms[gen]:
            self.max_ms[gen] = ms
        if ms >= SLOW_MS:
            self.slow.append((self._started, gen, ms))

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "total_ms": self.total_ms, "max_ms": self.max_ms,
                "collected": self.collected, "slow": self.slow, "threshold": list(gc.get_threshold()),
                "frozen": gc.get_freeze_count()}


def install(path: str) -> Callable[[], None]:
    """Start recording; returns the function that writes the file (also run at exit)."""
    stats = GcStats()
    gc.callbacks.append(stats)

    def write() -> None:
        with open(path, "w") as f:
            json.dump(stats.as_dict(), f)

    atexit.register(write)
    return write


def summarize(stats: dict[str, Any], since: float = float("-inf"), until: float = float("inf")) -> dict[str, Any]:
    """The whole run's counts, plus the slow pauses (≥ ``SLOW_MS``) that started inside [since, until)."""
    slow = [(t, g, ms) for t, g, ms in stats["slow"] if since <= t < until]
    per_gen = [[ms for _, g, ms in slow if g == gen] for gen in range(3)]
    return {"count": stats["count"], "total_ms": [round(x, 1) for x in stats["total_ms"]],
            "max_ms": [round(x, 1) for x in stats["max_ms"]], "threshold": stats["threshold"],
            "frozen": stats["frozen"], "slow_in_window": [len(p) for p in per_gen],
            "slow_ms_in_window": [round(sum(p), 1) for p in per_gen],
            "max_ms_in_window": [round(max(p, default=0.0), 1) for p in per_gen]}
