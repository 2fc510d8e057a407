"""The cyclic garbage collector's settings for a long-running gateway process.

CPython's cyclic collector runs a young collection every ``threshold0``
allocations of container objects and, now and then, a full one that walks
*every* tracked object in the process, in one go: the modules and tables built
at start (about 70,000 objects, ~40 ms on the benchmark machine) and everything
each open connection and stream holds (~35 per event stream, ~80 per HTTP/2
connection). With 100,000 open event streams one full pass is 1.5-2.5 s of CPU in
a single reactor turn (bench/README.md). gatewayd makes few
reference cycles on its hot paths (a finished call is unlinked so reference
counting frees it, http2/core.py), so the collector mostly walks live objects.

``apply`` runs once start-up is done (service.py) and promises:

- ``freeze``: one collection, then ``gc.freeze()``: what start-up built moves to
  the permanent generation, which no later collection walks (it is never freed,
  and was never going to be);
- ``thresholds``: ``gc.set_threshold(*thresholds)``. The default (700, 10, 100)
  keeps Python's young collections (short pauses) and allows a full pass only
  every 100 middle ones (~700,000 net new objects) instead of every 10: the
  garbage cycles that reached the old generation wait that long (or until it
  grew by a quarter, CPython's own rule on large heaps) to be freed.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass


@dataclass(frozen=True)
class GcPolicy:
    """``thresholds``: the three generations' thresholds (``gc.set_threshold``); ``freeze``: see the module.

    Raises ValueError when the thresholds are not three positive integers.
    """

    thresholds: tuple[int, ...]
    freeze: bool

    def __post_init__(self) -> None:
        problem = check_thresholds(self.thresholds)
        if problem is not None:
            raise ValueError(problem)


def check_thresholds(values: tuple[int, ...]) -> str | None:
    """What is wrong with ``values`` as ``gc.set_threshold`` arguments, or ``None`` when they are fine.

    Three positive integers: a threshold0 of 0 would turn the collector off, and
    CPython would never free garbage cycles again.
    """
    if len(values) != 3:
        return f"expected 3 thresholds (young, middle, old), got {len(values)}"
    if any(v < 1 for v in values):
        return "every threshold must be at least 1 (0 would turn the collector off)"
    return None


def apply(policy: GcPolicy) -> str:
    """Set the collector as ``policy`` says; returns a line for the start-up log saying what was set."""
    frozen = ""
    if policy.freeze:
        gc.collect()
        gc.freeze()
        frozen = f", {gc.get_freeze_count()} start-up objects frozen"
    gc.set_threshold(*policy.thresholds)
    t0, t1, t2 = gc.get_threshold()
    return f"thresholds {t0}/{t1}/{t2}{frozen}"
