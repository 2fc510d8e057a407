"""The HTTP/2 server connection without I/O: bytes and the clock in, actions out.

``ServerConnectionCore`` feeds received bytes to h2, turns h2's events into
calls started on the ``HttpApplication`` (one ``H2Stream`` each), resets and
GOAWAYs, and hands everything else to its ``ConnectionIO``: bytes to write,
reading paused or resumed, the connection closed or aborted. Timers run on the
injected ``IReactorTime``, so every rule below is tested on a ``Clock`` with an
in-memory peer (tests/unit/test_h2_core.py). It promises:

- response bodies respect the peer's flow-control windows (queued per stream
  and counted, never dropped) and our receive windows are reopened as data
  arrives (request bodies are bounded by the handlers);
- a stream the peer resets, or a connection that is lost, reaches the
  handler as ``aborted()`` and leaves nothing behind in ``streams``;
- abuse ends the connection with GOAWAY: rapid reset (most recent streams
  reset before they were answered), SETTINGS and PING floods, protocol
  errors, oversized header blocks; other connections are unaffected;
- new streams beyond the shared ``TurnBudget`` wait for a later reactor turn,
  with reading paused if more bytes arrive meanwhile;
- an idle connection (no open stream for ``idle_timeout_s``) and one that does
  not answer a keepalive PING in time get GOAWAY(NO_ERROR) and are closed;
- a stream whose queued bytes the peer's window takes none of for
  ``send_timeout_s`` is reset, and a connection whose socket takes no bytes for
  as long is aborted (gatewayd/http2/send_timeout.py); idle streams are not;
- ``shutdown()`` drains gracefully the way gRPC does: GOAWAY(2^31-1), PING,
  then GOAWAY(last stream id) once the PING is answered (or after a bound),
  and the connection closes when its streams have finished.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from gatewayd.http2.h2adapter import (
    MAX_STREAM_ID,
    HeaderBlockTooLarge,
    acknowledge_received,
    forget_if_closed,
    goaway_frame,
    server_connection,
)
from gatewayd.http2.limits import H2Limits, RapidResetMeter, TokenBucket, TurnBudget
from gatewayd.http2.request_headers import parse_request_headers_cached
from gatewayd.http2.send_timeout import SendTimeout
from gatewayd.http2.stream import H2Stream, push_all
from gatewayd.transport.exchange import ExchangeHandler, HttpApplication
from gatewayd.transport.turn_writes import TurnWrites

log = Logger()

# The events of every call, read once (not two attribute lookups per comparison).
_REQUEST_RECEIVED = h2.events.RequestReceived
_DATA_RECEIVED = h2.events.DataReceived
_STREAM_ENDED = h2.events.StreamEnded

SHUTDOWN_PING = b"gwdrain!"
KEEPALIVE_PING = b"gwkalive"


class ConnectionIO(Protocol):
    """What the core asks of whatever carries its bytes (a Twisted transport, or a test)."""

    def write(self, data: bytes) -> None: ...

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def close(self) -> None:
        """Close once what was written has gone out; ``connection_lost`` follows."""

    def abort(self) -> None:
        """Close now, dropping unsent bytes; ``connection_lost`` follows."""


class ServerConnectionCore:
    """One HTTP/2 server connection serving an ``HttpApplication``.

    ``web_fallback(stream)`` serves requests the application does not claim (the
    public REST surface through twisted.web). The owner calls ``start`` once
    connected, ``receive`` with each read, ``pause_sending``/``resume_sending`` as the
    socket pushes back, and ``connection_lost`` at the end.
    """

    def __init__(
        self,
        app: HttpApplication,
        clock: IReactorTime,
        limits: H2Limits,
        web_fallback: Callable[[H2Stream], ExchangeHandler],
        io: ConnectionIO,
        turn_budget: TurnBudget | None = None,
    ) -> None:
        self.app = app
        self.clock = clock
        self.limits = limits
        self.web_fallback = web_fallback
        self.io = io
        self.turn_budget = turn_budget or TurnBudget(clock, limits.streams_per_turn)
        self.h2 = server_connection(limits)
        self.streams: dict[int, H2Stream] = {}
        self.paused = False
        self.peer = ""
        self.last_stream_id = 0
        self.closing = False
        self.on_close: Callable[[ServerConnectionCore], None] | None = None
        self._resets = RapidResetMeter(limits.rapid_reset_window)
        self._settings_bucket = TokenBucket(clock, limits.control_frame_rate, limits.control_frame_burst)
        self._ping_bucket = TokenBucket(clock, limits.control_frame_rate, limits.control_frame_burst)
        self._idle_call: IDelayedCall | None = None
        self._idle_since: float | None = None
        self._turn_writes = TurnWrites.for_clock(clock)
        self._flush_pending = False
        self._receiving = False
        self._events: deque[Any] = deque()
        self._reading_paused = False
        self._waiting_turn = False  # events wait in the turn budget's line (TurnBudget.wait)
        self._keepalive_call: IDelayedCall | None = None
        self._keepalive_timeout: IDelayedCall | None = None
        self._shutdown_ping_call: IDelayedCall | None = None
        self._shutdown_phase = 0
        self._closed_d: defer.Deferred[None] = defer.Deferred()
        self._lost = False
        self._send_timeout = SendTimeout(self, clock, limits.send_timeout_s)

    @property
    def lost(self) -> bool:
        """The connection is closing or gone: nothing more is sent or handled."""
        return self._lost

    # -- connection lifecycle ---------------------------------------------------

    def start(self, peer: str) -> None:
        """Connected: send our preface and settings, start the idle and keepalive timers."""
        self.peer = peer
        self.flush()
        self._idle_since = self.clock.seconds()
        if self.limits.idle_timeout_s > 0:
            self._idle_call = self.clock.callLater(self.limits.idle_timeout_s, self._idle_check)
        if self.limits.keepalive_interval_s > 0:
            self._keepalive_call = self.clock.callLater(self.limits.keepalive_interval_s, self._send_keepalive)

    def receive(self, data: bytes) -> None:
        """Bytes read from the peer."""
        if self._lost:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            code = getattr(e, "error_code", h2.errors.ErrorCodes.PROTOCOL_ERROR)
            reason = str(e) if isinstance(e, HeaderBlockTooLarge) else f"protocol error: {type(e).__name__}"
            # receive_data() queued its own GOAWAY before raising; a second one would contradict it.
            self._go_away(code, reason, queued=True)
            return
        self._events.extend(events)
        if not self._waiting_turn:
            self._handle_events()
        elif not self._reading_paused:
            # More came while this connection's streams wait for a later turn: read no more until then.
            self._reading_paused = True
            self.io.pause_reading()

    def _handle_events(self) -> None:
        """Handle h2's events in order while the turn's ``TurnBudget`` allows new streams."""
        self._waiting_turn = False
        if self._lost:
            return
        events = self._events
        budget = self.turn_budget
        self._receiving = True
        try:
            while events:
                event = events[0]
                if type(event) is _REQUEST_RECEIVED and not budget.take():
                    break
                events.popleft()
                self._dispatch(event)
                if self._lost:
                    events.clear()
                    return
        finally:
            self._receiving = False
        self.flush()
        if events:
            # Reading is paused only if more arrives meanwhile (``receive``): a client that waits for
            # its answers (most) costs no pause and resume, and at most two reads' events wait.
            self._waiting_turn = True
            budget.wait(self._handle_events)
        elif self._reading_paused:
            self._reading_paused = False
            self.io.resume_reading()

    def connection_lost(self) -> None:
        """The connection is gone: stop the timers, abort every unfinished call."""
        self._lost = True
        self._events.clear()
        self._send_timeout.stop()
        # A flush still pending finds the connection lost and writes nothing.
        # (A wait in the turn budget's line finds the connection lost and does nothing.)
        calls = (self._idle_call, self._keepalive_call, self._keepalive_timeout, self._shutdown_ping_call)
        for call in calls:
            if call is not None and call.active():
                call.cancel()
        self._abort_streams()
        if self.on_close is not None:
            self.on_close(self)
        if not self._closed_d.called:
            self._closed_d.callback(None)

    def _abort_streams(self) -> None:
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            handler, stream.handler = stream.handler, None
            if handler is not None:
                handler.aborted()

    def flush(self) -> None:
        """Write out what h2 has queued."""
        self._flush_pending = False
        data = self.h2.data_to_send()
        if data and not self._lost:
            self.io.write(data)

    def flush_soon(self) -> None:
        """Write what h2 has queued once this reactor turn is done.

        Inside ``receive`` that is its own final flush; elsewhere (a handler
        answering later, the hub fanning out) every frame written in the turn
        goes out in one socket write, from one delayed call for all the
        connections on this clock (``TurnWrites``).
        """
        if self._receiving or self._flush_pending:
            return
        self._flush_pending = True
        self._turn_writes.add(self)

    def _go_away(self, error_code: int, reason: str, queued: bool = False) -> None:
        """GOAWAY and close; ``queued``: h2 has already queued the GOAWAY (it does on protocol errors)."""
        if self._lost:
            return
        log.info("closing HTTP/2 connection from {peer}: {reason}", peer=self.peer, reason=reason)
        if not queued:
            try:
                self.h2.close_connection(error_code=error_code, last_stream_id=self.last_stream_id)
            except h2.exceptions.ProtocolError:
                pass
        self.flush()
        self.io.close()
        # A peer that never reads never lets the GOAWAY out: drop it after keepalive_timeout_s.
        self.clock.callLater(self.limits.keepalive_timeout_s, self._abort_unless_closed)
        self._lost = True
        # Handlers of unfinished streams learn now; connection_lost finds nothing more.
        self._abort_streams()

    # -- the socket's backpressure ---------------------------------------------------

    def pause_sending(self) -> None:
        self.paused = True
        self._send_timeout.paused()

    def resume_sending(self) -> None:
        self.paused = False
        self._send_timeout.resumed()
        push_all(self.streams.values())
        self.flush()

    # -- events -----------------------------------------------------------------

    def _dispatch(self, event: Any) -> None:
        kind = type(event)
        if kind is _REQUEST_RECEIVED:
            self._request_received(event)
        elif kind is _DATA_RECEIVED:
            self._data_received(event)
        elif kind is _STREAM_ENDED:
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.handler is not None:
                stream.handler.body_complete()
        elif kind is h2.events.WindowUpdated:
            self._window_updated(event.stream_id)
        elif kind is h2.events.StreamReset:
            self._stream_reset(event.stream_id)
        elif kind is h2.events.RemoteSettingsChanged:
            if not self._settings_bucket.take():
                self._go_away(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, "SETTINGS flood")
                return
            if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                self._window_updated(0)
        elif kind is h2.events.PingReceived:
            if not self._ping_bucket.take():
                self._go_away(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, "PING flood")
        elif kind is h2.events.PingAckReceived:
            self._ping_acked(event.ping_data)
        elif kind is h2.events.ConnectionTerminated:
            # h2 is CLOSED now and refuses to send anything more: the calls still running end here,
            # as they would a moment later when the socket is reported lost.
            self.io.close()
            self._abort_streams()

    def _request_received(self, event: h2.events.RequestReceived) -> None:
        sid = event.stream_id
        if self._shutdown_phase >= 2:
            # The final GOAWAY named the last stream we take; streams sent before the client
            # saw the first GOAWAY(2^31-1) were still taken (that is what the two steps are for).
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        self.last_stream_id = max(self.last_stream_id, sid)
        self._idle_since = None
        if len(self.streams) >= self.limits.max_concurrent_streams:
            # Running handlers count against the limit, not only streams h2 sees open.
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        self._resets.opened()
        parsed = parse_request_headers_cached(event.headers)
        if parsed is None:
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return
        method, path, headers = parsed
        stream = H2Stream(self, sid, method, path, headers, self.peer)
        self.streams[sid] = stream
        handler = self.app.handler_for(stream)
        stream.handler = handler if handler is not None else self.web_fallback(stream)
        self._send_timeout.watch()
        # END_STREAM arrives as its own StreamEnded event.

    def _data_received(self, event: h2.events.DataReceived) -> None:
        sid = event.stream_id
        if event.flow_controlled_length:
            # Request bodies are bounded by their handlers, so reopen at once.
            acknowledge_received(self.h2, event.flow_controlled_length, sid, event.stream_ended is not None)
        stream = self.streams.get(sid)
        if stream is not None and stream.handler is not None and event.data:
            stream.handler.body_received(event.data)

    def _window_updated(self, stream_id: int) -> None:
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream.push()
        else:
            push_all(self.streams.values())

    def _stream_reset(self, stream_id: int) -> None:
        forget_if_closed(self.h2, stream_id)
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        if not stream.answered and self._resets.reset_unanswered():
            self._go_away(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, "rapid reset")
        handler, stream.handler = stream.handler, None
        if handler is not None:
            handler.aborted()
        self._stream_closed()

    # -- stream bookkeeping -------------------------------------------------------

    def stream_done(self, stream: H2Stream) -> None:
        """The response has ended (or was reset by us): forget the stream, here and in h2."""
        if forget_if_closed(self.h2, stream.stream_id):
            # Answered before the request ended: ask the peer to stop sending (RFC 9113 8.1),
            # which also closes the stream in h2, so it no longer counts as open there.
            try:
                self.h2.reset_stream(stream.stream_id, h2.errors.ErrorCodes.NO_ERROR)
            except h2.exceptions.ProtocolError:
                pass
            forget_if_closed(self.h2, stream.stream_id)
        # The handler holds the stream and the stream its handler: unlinked here, a finished
        # call is freed by reference counting instead of waiting for the cycle collector.
        stream.handler = None
        if self.streams.get(stream.stream_id) is stream:
            del self.streams[stream.stream_id]
            self._stream_closed()

    def _stream_closed(self) -> None:
        if not self.streams:
            if self.closing and self._shutdown_phase >= 2:
                self._finish_shutdown()
            else:
                self._idle_since = self.clock.seconds()

    def _idle_check(self) -> None:
        # One timer per connection, re-armed for what is left of the idle time: cheaper
        # than arming and cancelling a timer each time the last stream closes.
        self._idle_call = None
        if self._lost:
            return
        timeout = self.limits.idle_timeout_s
        since = self._idle_since
        if since is not None and not self.streams:
            idle_for = self.clock.seconds() - since
            if idle_for >= timeout:
                self._go_away(h2.errors.ErrorCodes.NO_ERROR, "idle timeout")
                return
            timeout -= idle_for
        self._idle_call = self.clock.callLater(timeout, self._idle_check)

    # -- keepalive ----------------------------------------------------------------

    def _send_keepalive(self) -> None:
        self._keepalive_call = None
        if self._lost:
            return
        self.h2.ping(KEEPALIVE_PING)
        self.flush()
        self._keepalive_timeout = self.clock.callLater(
            self.limits.keepalive_timeout_s,
            lambda: self._go_away(h2.errors.ErrorCodes.NO_ERROR, "keepalive timeout"),
        )

    def _ping_acked(self, data: bytes) -> None:
        if data == KEEPALIVE_PING:
            if self._keepalive_timeout is not None and self._keepalive_timeout.active():
                self._keepalive_timeout.cancel()
            self._keepalive_timeout = None
            self._keepalive_call = self.clock.callLater(self.limits.keepalive_interval_s, self._send_keepalive)
        elif data == SHUTDOWN_PING:
            self._shutdown_second_goaway()

    # -- graceful shutdown --------------------------------------------------------

    def shutdown(self) -> defer.Deferred[None]:
        """Stop taking streams, let the open ones finish, close; fires when closed."""
        if self._lost:
            return defer.succeed(None)
        if not self.closing:
            self.closing = True
            self._shutdown_phase = 1
            self._write_goaway(MAX_STREAM_ID)
            self.h2.ping(SHUTDOWN_PING)
            self.flush()
            self._shutdown_ping_call = self.clock.callLater(
                self.limits.shutdown_ping_timeout_s, self._shutdown_second_goaway
            )
        d: defer.Deferred[None] = defer.Deferred()

        def closed(result: object) -> object:
            d.callback(None)
            return result

        self._closed_d.addBoth(closed)
        return d

    def _shutdown_second_goaway(self) -> None:
        if self._shutdown_phase != 1 or self._lost:
            return
        self._shutdown_phase = 2
        if self._shutdown_ping_call is not None and self._shutdown_ping_call.active():
            self._shutdown_ping_call.cancel()
        self._shutdown_ping_call = None
        self._write_goaway(self.last_stream_id)
        if not self.streams:
            self._finish_shutdown()

    def _write_goaway(self, last_stream_id: int) -> None:
        self.flush()
        self.io.write(goaway_frame(last_stream_id))

    def _finish_shutdown(self) -> None:
        self.flush()
        self.io.close()

    def abort(self) -> None:
        """Drop the connection now (the drain time ran out)."""
        if not self._lost:
            self.io.abort()

    def _abort_unless_closed(self) -> None:
        if not self._closed_d.called:
            self.io.abort()
