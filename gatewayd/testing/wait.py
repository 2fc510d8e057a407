"""Waiting without sleeping: bounded polling and bounded Deferreds on the real reactor.

``until`` polls; ``Waitable`` is for protocols that record state and can say
when it changed (``_check_waiters``), so waiters fire at once, without polling.
Tests that drive real sockets and processes cannot use a ``Clock``; they wait for
state to change on the reactor instead, always with a bound, so a regression
fails in seconds with a message saying what never happened.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from twisted.internet import defer, task

WAIT_S = 5.0
T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition a test waited for did not hold within its bound."""


def _reactor(reactor: Any) -> Any:
    if reactor is None:
        from twisted.internet import reactor
    return reactor


async def until(
    predicate: Callable[[], bool | Awaitable[bool]],
    what: str | Callable[[], str] = "condition",
    timeout: float = WAIT_S,
    *,
    interval: float = 0.005,
    reactor: Any = None,
) -> float:
    """Wait until ``predicate()`` is true, checking every ``interval`` s on the reactor.

    ``predicate`` may return a bool or an awaitable of one (a Redis ping, say).
    Returns the seconds it took; raises ``WaitTimeout`` naming ``what`` (a string,
    or a callable describing the state at the time) after ``timeout`` seconds.
    """
    reactor = _reactor(reactor)
    start = reactor.seconds()
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return float(reactor.seconds() - start)
        if reactor.seconds() - start > timeout:
            description = what() if callable(what) else what
            raise WaitTimeout(f"still not true after {timeout} s: {description}")
        await task.deferLater(reactor, interval, lambda: None)


def bounded(d: defer.Deferred[T], timeout: float = WAIT_S, reactor: Any = None) -> defer.Deferred[T]:
    """``d``, cancelled (failing with ``defer.TimeoutError``) if it has not fired within ``timeout`` s."""
    return d.addTimeout(timeout, _reactor(reactor))


class Waitable:
    """Deferreds that fire once a predicate over the recorded state holds (bounded)."""

    def __init__(self, reactor: Any = None) -> None:
        self._reactor = _reactor(reactor)
        self._waiters: list[tuple[Callable[[], bool], defer.Deferred[None], Any]] = []

    def wait(
        self, predicate: Callable[[], bool], what: str = "condition", timeout: float = WAIT_S
    ) -> defer.Deferred[None]:
        """Fires once ``predicate()`` holds; fails with ``WaitTimeout`` after ``timeout`` s."""
        if predicate():
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        timer = self._reactor.callLater(timeout, self._expire, d, what)
        self._waiters.append((predicate, d, timer))
        return d

    def _expire(self, d: defer.Deferred[None], what: str) -> None:
        self._waiters = [w for w in self._waiters if w[1] is not d]
        d.errback(WaitTimeout(f"timed out waiting for {what}; state: {self.describe()}"))

    def describe(self) -> str:
        """The recorded state, for the timeout message."""
        return ""

    def _check_waiters(self) -> None:
        """Fire the waiters whose predicate now holds; call after every change of state."""
        for waiter in list(self._waiters):
            predicate, d, timer = waiter
            if waiter in self._waiters and predicate():
                self._waiters.remove(waiter)
                timer.cancel()
                d.callback(None)


__all__ = ["WAIT_S", "WaitTimeout", "Waitable", "bounded", "until"]
