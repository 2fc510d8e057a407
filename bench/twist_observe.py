"""Bench only: ``twist`` with a fan-out observer in the gateway process (``BENCH_OBSERVE=FILE``).

``python bench/twist_observe.py gatewayd --config FILE`` with ``BENCH_OBSERVE`` set
appends one JSON line per backend ``ClientEvent`` the gateway receives:

- ``gateway_ms``: from the event's arrival (the push consumer hands it to
  ``gatewayd.push.dispatcher.Dispatcher``) to the end of the last socket send
  (``tcp.Connection.writeSomeData``) on an accepted connection, i.e. the last
  stream's bytes handed to the kernel; ``first_ms``: to the end of the first one;
- ``max_turn_ms``: the longest stretch the reactor spent between two epoll
  waits while the event was open, i.e. the longest time anything else (another
  call, a timer) had to wait;
- ``writes``, ``bytes``: socket sends to accepted connections in the window;
- ``cpu_ms``: the process's CPU time (``time.process_time``) from the arrival to
  the reactor's first wait after the last socket send, i.e. what the fan-out
  cost, without the idle time around it that the bench's whole-run CPU figure
  also counts. (Read once per reactor turn that wrote, not per send: the clock
  is a system call of a few µs, which a thousand sends an event would feel.)

An event stays open until the next one arrives, or until a reactor wake-up
finds nothing written for ``BENCH_OBSERVE_WINDOW_S`` (default 1 s) since its
last write, or shutdown.
With ``BENCH_GC_STATS=FILE`` it also records the cyclic GC's collections (bench/gc_stats.py).
Only accepted connections (clients) count: the gateway's own connections to
the backend (push consumer, REST pool) are ``tcp.Client``s. Nothing in
gatewayd is edited: this patches the classes in this process before ``twist``
starts. Timestamps are ``time.perf_counter()`` (CLOCK_MONOTONIC, comparable
with the bench's other processes on this machine).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from twisted.internet import epollreactor, tcp

_now = time.perf_counter


class Observer:
    def __init__(self, path: str, window_s: float) -> None:
        self.path = path
        self.window_s = window_s
        self.current: dict[str, Any] | None = None
        self.woke: float | None = None  # when the reactor last returned from epoll

    def arrived(self, kind: str) -> None:
        self.close()
        self.current = {"arrival": _now(), "kind": kind, "first_write": None, "last_write": None, "writes": 0,
                        "bytes": 0, "max_turn_ms": 0.0, "cpu0": time.process_time(), "last_cpu": None,
                        "wrote_this_turn": False}

    def wrote(self, sent: int, ended: float) -> None:
        cur = self.current
        if cur is None or sent <= 0:
            return
        if cur["first_write"] is None:
            cur["first_write"] = ended
        cur["last_write"] = ended
        cur["wrote_this_turn"] = True
        cur["writes"] += 1
        cur["bytes"] += sent

    def before_wait(self) -> None:
        now = _now()
        cur = self.current
        if cur is not None and self.woke is not None and now > cur["arrival"]:
            cur["max_turn_ms"] = max(cur["max_turn_ms"], (now - self.woke) * 1000)
        if cur is not None and cur["wrote_this_turn"]:
            cur["wrote_this_turn"] = False
            cur["last_cpu"] = time.process_time()

    def after_wait(self) -> None:
        self.woke = _now()
        cur = self.current
        # Closed only after something was written: the fan-out itself may hold the reactor longer than the window.
        if cur is not None and cur["last_write"] is not None and self.woke - cur["last_write"] > self.window_s:
            self.close()

    def close(self) -> None:
        cur, self.current = self.current, None
        if cur is None:
            return
        if cur["wrote_this_turn"]:
            cur["last_cpu"] = time.process_time()
        t0 = cur["arrival"]
        line = {"arrival": t0, "kind": cur["kind"], "writes": cur["writes"], "bytes": cur["bytes"],
                "first_ms": None if cur["first_write"] is None else (cur["first_write"] - t0) * 1000,
                "gateway_ms": None if cur["last_write"] is None else (cur["last_write"] - t0) * 1000,
                "max_turn_ms": cur["max_turn_ms"],
                "cpu_ms": None if cur["last_cpu"] is None else (cur["last_cpu"] - cur["cpu0"]) * 1000}
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")


class _TimedPoller:
    """Wraps the reactor's epoll object: ``poll`` tells the observer when waiting starts and ends."""

    def __init__(self, poller: Any, observer: Observer) -> None:
        self._poller = poller
        self._observer = observer

    def poll(self, *args: Any, **kwargs: Any) -> Any:
        self._observer.before_wait()
        try:
            return self._poller.poll(*args, **kwargs)
        finally:
            self._observer.after_wait()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._poller, name)


def install(observer: Observer) -> None:
    from gatewayd.push.dispatcher import Dispatcher

    dispatch = Dispatcher.__call__

    def observed_dispatch(self: Dispatcher, event: Any) -> None:
        kind = event.WhichOneof("kind")
        if kind == "client_event":
            observer.arrived(kind)
        dispatch(self, event)

    Dispatcher.__call__ = observed_dispatch  # type: ignore[method-assign]

    write = tcp.Connection.writeSomeData

    def observed_write(self: tcp.Connection, data: Any) -> Any:
        sent = write(self, data)
        if isinstance(self, tcp.Server) and isinstance(sent, int):
            observer.wrote(sent, _now())
        return sent

    tcp.Connection.writeSomeData = observed_write  # type: ignore[method-assign]

    init = epollreactor.EPollReactor.__init__

    def observed_init(self: epollreactor.EPollReactor) -> None:
        init(self)
        self._poller = _TimedPoller(self._poller, observer)  # type: ignore[assignment]
        self.addSystemEventTrigger("before", "shutdown", observer.close)

    epollreactor.EPollReactor.__init__ = observed_init  # type: ignore[method-assign]


if __name__ == "__main__":
    path = os.environ.get("BENCH_OBSERVE")
    if path:
        install(Observer(path, float(os.environ.get("BENCH_OBSERVE_WINDOW_S", "1.0"))))
    if os.environ.get("BENCH_GC_STATS"):
        # The cyclic GC's collections and pauses (bench/gc_stats.py), written on SIGUSR2 and at exit.
        from bench.gc_stats import install as record_gc

        record_gc(os.environ["BENCH_GC_STATS"])
    from twisted.application.twist._twist import Twist

    sys.argv[0] = "twist"
    Twist.main()
