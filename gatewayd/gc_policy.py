"""The cyclic garbage collector's settings for a long-running gateway process.

CPython's cyclic collector runs a young collection every ``threshold0``
allocations of container objects and, now and then, a full one that walks
*every* tracked object in the process, in one go: the modules and tables built
at start (about 60,000 objects, ~40 ms on the benchmark machine) and everything
each open connection and stream holds. With 100,000 open event streams one full
pass is hundreds of milliseconds in a single reactor turn. gatewayd makes few
reference cycles on its hot paths (a finished call is unlinked so reference
counting frees it, http2/core.py), so the collector mostly walks live objects.

``apply`` runs once start-up is done (service.py) and promises:

- ``freeze``: one collection, then ``gc.freeze()``: what start-up built moves to
  the permanent generation, which no later collection walks (it is never freed,
  and was never going to be);
- ``thresholds``: ``gc.set_threshold(*thresholds)``; fewer young collections
  mean fewer short-lived objects promoted to the old generation, so fewer full
  passes. The garbage cycles waiting for a collection are bounded by threshold0.
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
