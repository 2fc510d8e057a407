"""How long a test waits for a dev gateway: in-process, in memory, or ``twist gatewayd --dev`` in a child.

The choice behind ``gatewayd_dev`` (docs/testing.md). Each way is started ``--repeats``
times, from the call until the gateway answers (in-process: ``DevGateway.start`` fired,
its push call open; child: ``GET /readyz`` is 200), and stopped again. Every wait is bounded.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from bench._common import TWIST, free_port

READY_TIMEOUT_S = 30.0


def in_process(repeats: int) -> list[float]:
    from twisted.internet import defer, reactor

    from gatewayd.testing.dev import DevGateway

    times: list[float] = []

    async def measure() -> None:
        for _ in range(repeats):
            began = time.perf_counter()
            dev = await DevGateway.start()
            times.append(time.perf_counter() - began)
            await dev.stop()

    def run() -> None:
        d = defer.ensureDeferred(measure())
        d.addErrback(lambda failure: failure.printTraceback())
        d.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]

    reactor.callWhenRunning(run)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]
    return times


def in_memory(repeats: int) -> list[float]:
    from gatewayd.testing.dev import InMemoryGateway

    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        gateway = InMemoryGateway.open()
        times.append(time.perf_counter() - began)
        gateway.close()
    return times


def child_process(repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        port = free_port()
        with tempfile.TemporaryDirectory() as state:
            began = time.perf_counter()
            child = subprocess.Popen([TWIST, "gatewayd", "--dev", "--listen", f"tcp:{port}:interface=127.0.0.1",
                                      "--state-dir", state], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                _wait_ready(f"http://127.0.0.1:{port}/readyz", child)
                times.append(time.perf_counter() - began)
            finally:
                child.terminate()
                child.wait(READY_TIMEOUT_S)
    return times


def _wait_ready(url: str, child: subprocess.Popen[Any]) -> None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RuntimeError(f"twist gatewayd --dev exited with {child.returncode}")
        try:
            if opener.open(url, timeout=1).status == 200:
                return
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{url} not ready within {READY_TIMEOUT_S} s")


WAYS: dict[str, Callable[[int], list[float]]] = {
    "in-process (DevGateway.start)": in_process,
    "in memory (InMemoryGateway.open)": in_memory,
    "child process (twist gatewayd --dev, until /readyz)": child_process,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print("| way | first start ms | later starts: median ms (min..max) |")
    print("| --- | --- | --- |")
    for name, way in WAYS.items():
        times = [t * 1000 for t in way(args.repeats)]
        later = times[1:] or times
        print(f"| {name} | {times[0]:.0f} | {statistics.median(later):.0f} ({min(later):.0f}..{max(later):.0f}) |")


if __name__ == "__main__":
    main()
