"""The HTTP/1.1 exchanges' side of the socket's backpressure."""

from __future__ import annotations

from collections.abc import Callable


class PausableExchange:
    """A push producer for the connection: while the socket is full (paused), body bytes
    written are counted in ``buffered_bytes``; when it drains (resumed) the count is
    cleared and the drain callback runs. Subclasses count with ``_count_if_paused``."""

    __slots__ = ("_buffered", "_drain", "_paused")

    def __init__(self) -> None:
        self._paused = False
        self._buffered = 0
        self._drain: Callable[[], None] | None = None

    @property
    def buffered_bytes(self) -> int:
        return self._buffered

    def on_drain(self, callback: Callable[[], None] | None) -> None:
        self._drain = callback

    # IPushProducer, driven by the connection.
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._buffered = 0
        if self._drain is not None:
            self._drain()

    def stopProducing(self) -> None:
        self._paused = True
