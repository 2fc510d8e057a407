"""The send timeout of an HTTP/2 connection: sends that make no progress end.

A stream whose response bytes wait in its queue while the peer's flow-control
window takes none of them (a zero window, a client that stopped reading, or a
stream already ended RESOURCE_EXHAUSTED whose queue and trailers wait) is reset
once it has made no progress for ``send_timeout_s``; a connection whose socket
did not drain for as long (the transport paused our sending the whole time) is
aborted. Nothing else counts: a long-lived event stream with nothing queued,
however idle, is never touched (only stalled sends are; docs/operations.md).

One timer per connection, armed while it has streams or its sending is paused,
fires every half ``send_timeout_s`` and compares where each queue stands with
the previous check: no per-frame bookkeeping and no timer per stream. A stall
thus ends after between ``send_timeout_s`` and one and a half times it.

The reset is RST_STREAM(CANCEL), not FLOW_CONTROL_ERROR: a receiver may hold
its window shut as long as it likes (RFC 9113 section 5.2), so it broke no rule;
the server merely gives up on a stream it no longer wants to hold (gRPC clients
report CANCELLED rather than INTERNAL). The call, if still running, is cancelled
and the stream's queue dropped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import h2.errors
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from gatewayd.http2.stream import H2Stream, SendMark

if TYPE_CHECKING:
    from gatewayd.http2.core import ServerConnectionCore

log = Logger()

# A stall ends after this many checks in a row without progress (checks are send_timeout_s / CHECKS apart).
CHECKS = 2


class SendTimeout:
    """Watches one connection's queued sends; a no-op when ``timeout_s`` is 0."""

    __slots__ = ("_call", "_clock", "_core", "_interval", "_marks", "_paused_checks", "_resumes", "_seen_resumes")

    def __init__(self, core: ServerConnectionCore, clock: IReactorTime, timeout_s: float) -> None:
        self._core = core
        self._clock = clock
        self._interval = timeout_s / CHECKS
        self._call: IDelayedCall | None = None
        # Per stalled stream: its queue's mark when first seen stalled, and checks since without progress.
        self._marks: dict[int, tuple[H2Stream, SendMark, int]] = {}
        self._resumes = 0  # times the socket took bytes again (our sending resumed)
        self._seen_resumes = 0
        self._paused_checks = 0  # checks in a row that found sending paused, with no resume between

    def watch(self) -> None:
        """Make sure the periodic check runs (a stream opened, or sending paused)."""
        if self._call is None and self._interval > 0:
            self._call = self._clock.callLater(self._interval, self._check)

    def paused(self) -> None:
        self.watch()

    def resumed(self) -> None:
        self._resumes += 1

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._marks.clear()

    def _check(self) -> None:
        self._call = None
        core = self._core
        if core.lost:
            self._marks.clear()
            return
        if self._socket_stalled():
            log.info("dropping HTTP/2 connection from {peer}: its socket did not drain for {timeout} s",
                     peer=core.peer, timeout=self._interval * CHECKS)
            self.stop()
            core.io.abort()
            return
        stalled = self._stalled_streams()
        if stalled:
            log.info("resetting {count} HTTP/2 stream(s) from {peer}: no bytes sent for {timeout} s",
                     count=len(stalled), peer=core.peer, timeout=self._interval * CHECKS)
            for stream in stalled:
                self._reset(stream)
        if core.streams or core.paused:
            self.watch()
        else:
            self._marks.clear()

    def _socket_stalled(self) -> bool:
        """Paused at this check and the previous ``CHECKS`` with no resume in between."""
        if not self._core.paused:
            self._paused_checks = 0
        elif self._resumes != self._seen_resumes:
            self._paused_checks = 1  # the socket took bytes since the last check, then filled again
        else:
            self._paused_checks += 1
        self._seen_resumes = self._resumes
        return self._paused_checks > CHECKS

    def _stalled_streams(self) -> list[H2Stream]:
        """Streams whose queued bytes have not moved for ``CHECKS`` checks; the marks of the others updated."""
        previous = self._marks
        marks: dict[int, tuple[H2Stream, SendMark, int]] = {}
        stalled = []
        for sid, stream in self._core.streams.items():
            mark = stream.send_mark()
            if mark is None:
                continue  # nothing queued: idle is fine
            seen = previous.get(sid)
            if seen is not None and seen[0] is stream and not stream.sent_since(seen[1]):
                checks = seen[2] + 1
                if checks >= CHECKS:
                    stalled.append(stream)
                    continue
                marks[sid] = (stream, seen[1], checks)
            else:
                marks[sid] = (stream, mark, 0)
        self._marks = marks
        return stalled

    @staticmethod
    def _reset(stream: H2Stream) -> None:
        handler = stream.handler
        # Reset first: whatever the cancelled call still writes is then ignored.
        stream.reset(h2.errors.ErrorCodes.CANCEL)
        if handler is not None:
            handler.aborted()
