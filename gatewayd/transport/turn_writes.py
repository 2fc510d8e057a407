"""Writes held to the end of the reactor turn, so one turn's bytes leave together.

Whatever a turn produces for one peer (an HTTP/2 connection's frames, the backend
requests of every call the turn started) is written once the turn's events are
handled: one delayed call for all of them, not a timer each. A peer on the same
core (a backend beside the gateway) then wakes once for the turn's requests and
serves them together, instead of waking, and taking the core from the gateway,
for each one.
"""

from __future__ import annotations

from typing import Protocol
from weakref import WeakKeyDictionary

from twisted.internet.interfaces import IDelayedCall, IReactorTime


class Flushing(Protocol):
    def flush(self) -> None:
        """Write what was held for this turn."""


class TurnWrites:
    """The writers of one clock that have bytes to write this turn, flushed by one delayed call,
    in the order they asked. ``for_clock`` gives everything on a clock (the reactor) the same one."""

    __slots__ = ("__weakref__", "_call", "_clock", "_pending")

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock
        self._pending: list[Flushing] = []
        self._call: IDelayedCall | None = None

    @classmethod
    def for_clock(cls, clock: IReactorTime) -> TurnWrites:
        writes = _TURN_WRITES.get(clock)
        if writes is None:
            writes = _TURN_WRITES[clock] = cls(clock)
        return writes

    def add(self, writer: Flushing) -> None:
        """Have ``writer.flush()`` run once this reactor turn is done."""
        self._pending.append(writer)
        if self._call is None:
            self._call = self._clock.callLater(0, self._write)

    def _write(self) -> None:
        self._call = None
        pending, self._pending = self._pending, []
        for writer in pending:
            writer.flush()


_TURN_WRITES: WeakKeyDictionary[IReactorTime, TurnWrites] = WeakKeyDictionary()
