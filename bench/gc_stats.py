"""Bench only: the cyclic GC's collections and pauses in a process (``gc.callbacks``).

``install(path)`` (called by ``bench/twist_observe.py`` when ``BENCH_GC_STATS=FILE``
is set) times every collection and, on SIGUSR2 (``snapshot``) and at exit, writes one JSON
object to ``path``: per generation the number of collections, their summed and longest CPU
time (ms; the wall time of a pause also counts the time a busy shared core ran
something else) and the objects they freed; every collection with its
``time.perf_counter()`` start (comparable with the bench's other processes),
generation, wall and CPU ms; the thresholds, the frozen objects and the objects the
collector tracks (frozen ones aside) at that moment, and the most common of their types.
``summarize(stats, since, until)`` sums the collections inside a time window.

The callbacks cost about a microsecond per collection (a young collection comes
every 700 allocations by default): on for diagnosis, not for the CPU figures.
"""

from __future__ import annotations

import atexit
import gc
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

_now = time.perf_counter
_cpu = time.thread_time


class GcStats:
    def __init__(self) -> None:
        self.count = [0, 0, 0]
        self.cpu_ms = [0.0, 0.0, 0.0]  # the collecting thread's CPU time: what the collection itself cost
        self.max_cpu_ms = [0.0, 0.0, 0.0]
        self.max_ms = [0.0, 0.0, 0.0]  # wall time: on a shared core, also the time the process was not running
        self.collected = [0, 0, 0]
        self.each: list[tuple[float, int, float, float]] = []  # (start, generation, wall ms, CPU ms)
        self._started = 0.0
        self._started_cpu = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = _now()
            self._started_cpu = _cpu()
            return
        cpu = (_cpu() - self._started_cpu) * 1000
        ms = (_now() - self._started) * 1000
        gen = info["generation"]
        self.count[gen] += 1
        self.cpu_ms[gen] += cpu
        self.collected[gen] += info["collected"]
        self.max_cpu_ms[gen] = max(self.max_cpu_ms[gen], cpu)
        self.max_ms[gen] = max(self.max_ms[gen], ms)
        self.each.append((self._started, gen, ms, cpu))

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "cpu_ms": self.cpu_ms, "max_cpu_ms": self.max_cpu_ms, "max_ms": self.max_ms,
                "collected": self.collected, "each": self.each, "threshold": list(gc.get_threshold()),
                "frozen": gc.get_freeze_count()}


def install(path: str) -> Callable[[], None]:
    """Start recording; returns the function that writes the file, which also runs on SIGUSR2
    (``snapshot``: a busy gateway may be killed before its shutdown gets that far) and at exit."""
    stats = GcStats()
    gc.callbacks.append(stats)

    def write() -> None:
        part = f"{path}.part"
        tracked = gc.get_objects()
        types = Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in tracked).most_common(60)
        with open(part, "w") as f:
            json.dump({**stats.as_dict(), "tracked": len(tracked), "types": types}, f)
        del tracked
        os.replace(part, path)

    signal.signal(signal.SIGUSR2, lambda signum, frame: write())
    atexit.register(write)
    return write


def snapshot(pid: int, path: Path, timeout_s: float = 60.0) -> dict[str, Any] | None:
    """Ask the process ``pid`` recording into ``path`` for its numbers so far (SIGUSR2); ``None`` if
    none came within ``timeout_s``."""
    path.unlink(missing_ok=True)
    os.kill(pid, signal.SIGUSR2)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            return dict(json.loads(path.read_text()))
        time.sleep(0.2)
    return None


def summarize(stats: dict[str, Any], since: float = float("-inf"), until: float = float("inf")) -> dict[str, Any]:
    """Per generation, the collections that started inside [since, until): how many, their CPU ms
    summed, the longest one's CPU and wall ms; and the thresholds and frozen objects."""
    window = [(g, ms, cpu) for t, g, ms, cpu in stats["each"] if since <= t < until]
    per_gen = [[(ms, cpu) for g, ms, cpu in window if g == gen] for gen in range(3)]
    return {"count": [len(p) for p in per_gen], "cpu_ms": [round(sum(c for _, c in p), 1) for p in per_gen],
            "max_cpu_ms": [round(max((c for _, c in p), default=0.0), 1) for p in per_gen],
            "max_wall_ms": [round(max((m for m, _ in p), default=0.0), 1) for p in per_gen],
            "threshold": stats["threshold"], "frozen": stats["frozen"]}
