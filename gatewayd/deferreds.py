"""Handing a result on to Deferreds that a caller may already have cancelled."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure


def settle(d: Deferred[Any], result: Any) -> None:
    """Fire ``d`` with ``result`` (errback for a Failure) unless it already fired (was cancelled)."""
    if d.called:
        return
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(result)


def settle_each(waiters: Iterable[Deferred[Any]], result: Any) -> None:
    """``settle`` every waiter of one shared operation with its ``result``."""
    for waiter in waiters:
        settle(waiter, result)
