"""Diagnostic only: ``twist`` under ``tracemalloc``; SIGUSR2 takes a snapshot.

``python bench/twist_tracemalloc.py OUT gatewayd --config FILE``. The first
SIGUSR2 keeps a baseline snapshot; every later one appends to ``OUT`` the 25
source lines whose live allocations grew most since the baseline.
``bench/faults.py soak --tracemalloc`` sends them (after warm-up, and at the
end) to find what a gateway's RSS growth is made of. Slows the process down.
"""

from __future__ import annotations

import signal
import sys
import time
import tracemalloc
from typing import Any

_baseline: list[tracemalloc.Snapshot] = []


def _snapshot(out: str) -> None:
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    if not _baseline:
        _baseline.append(snapshot)
        return
    stats = snapshot.compare_to(_baseline[0], "lineno")
    with open(out, "a") as f:
        f.write(f"--- {time.strftime('%H:%M:%S')}: growth since the baseline, by source line\n")
        for stat in stats[:25]:
            f.write(f"{stat}\n")


if __name__ == "__main__":
    out = sys.argv.pop(1)
    tracemalloc.start(1)

    def on_signal(signum: int, frame: Any) -> None:
        _snapshot(out)

    signal.signal(signal.SIGUSR2, on_signal)
    from twisted.application.twist._twist import Twist

    sys.argv[0] = "twist"
    Twist.main()
