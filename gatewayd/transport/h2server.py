"""The HTTP/2 server connection: h2's state machine with thin Twisted glue.

One ``H2ServerConnection`` per connection, one ``H2Stream`` per request
stream. Twisted's own HTTP/2 cannot send trailers, so this one is ours. It
promises:

- response bodies respect the peer's flow-control windows (queued per stream
  and counted, never dropped) and our receive windows are reopened as data
  arrives (request bodies are bounded by the handlers);
- a stream the peer resets, or a connection that is lost, reaches the
  handler as ``aborted()`` and leaves nothing behind in ``streams``;
- abuse ends the connection with GOAWAY: rapid reset (most recent streams
  reset before they were answered), SETTINGS and PING floods, protocol
  errors, oversized header blocks; other connections are unaffected;
- ``shutdown()`` drains gracefully the way gRPC does: GOAWAY(2^31-1), PING,
  then GOAWAY(last stream id) once the PING is answered (or after a bound),
  and the connection closes when its streams have finished.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
from hyperframe.frame import GoAwayFrame
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from gatewayd.transport.exchange import ExchangeHandler, HeaderList, HttpApplication
from gatewayd.transport.h2limits import H2Limits, TokenBucket, TurnBudget
from gatewayd.transport.h2wire import parse_request_headers, send_data_frame

log = Logger()

_MAX_STREAM_ID = 2**31 - 1
_SHUTDOWN_PING = b"gwdrain!"


class H2Stream:
    """One request stream: the ``Exchange`` a handler answers through."""

    __slots__ = (
        "_drain_callback",
        "_end_queued",
        "_queue",
        "_queued_bytes",
        "_trailers",
        "answered",
        "conn",
        "handler",
        "headers",
        "method",
        "path",
        "peer",
        "stream_id",
    )

    http2 = True

    def __init__(self, conn: H2ServerConnection, stream_id: int, method: str, path: str,
                 headers: Mapping[str, str], peer: str) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.method = method
        self.path = path
        self.headers = headers
        self.peer = peer
        self.handler: ExchangeHandler | None = None
        self.answered = False
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._end_queued = False
        self._trailers: HeaderList | None = None
        self._drain_callback: Callable[[], None] | None = None

    @property
    def buffered_bytes(self) -> int:
        return self._queued_bytes

    @property
    def closed(self) -> bool:
        return self.conn.streams.get(self.stream_id) is not self

    def send_headers(self, status: int, headers: HeaderList, end_stream: bool = False) -> None:
        if self.closed:
            return
        self.answered = True
        self.conn.h2.send_headers(self.stream_id, [(b":status", b"%d" % status), *headers], end_stream)
        if end_stream:
            self.conn._stream_done(self)
        self.conn._flush_soon()

    def send_data(self, data: bytes, end_stream: bool = False) -> None:
        if self.closed:
            return
        if data:
            self._queue.append(data)
            self._queued_bytes += len(data)
        elif not end_stream and not self._queue and not self._end_queued:
            # An empty DATA frame: activity on an idle stream that carries no byte (gatewayd/heartbeat.py).
            h2stream = self.conn.h2.streams.get(self.stream_id)
            if h2stream is not None:
                send_data_frame(self.conn.h2, h2stream, b"")
        self._end_queued = end_stream
        self._push()
        self.conn._flush_soon()

    def send_trailers(self, trailers: HeaderList) -> None:
        if self.closed:
            return
        self._trailers = trailers
        self._end_queued = True
        self._push()
        self.conn._flush_soon()

    def reset(self, error_code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        if self.closed:
            return
        try:
            self.conn.h2.reset_stream(self.stream_id, error_code)
        except h2.exceptions.ProtocolError:
            pass
        self.conn._stream_done(self)
        self.conn._flush_soon()

    def on_drain(self, callback: Callable[[], None] | None) -> None:
        self._drain_callback = callback

    def _push(self) -> None:
        """Send as much queued data as the windows allow; finish when all is out."""
        h2conn = self.conn.h2
        sid = self.stream_id
        queue = self._queue
        if queue and not self.conn.paused:
            h2stream = h2conn.streams.get(sid)
            if h2stream is None:
                return
            window = min(h2conn.outbound_flow_control_window, h2stream.outbound_flow_control_window)
            max_frame = h2conn.max_outbound_frame_size
            while queue and window > 0:
                chunk = queue[0]
                size = min(len(chunk), window, max_frame)
                if size == len(chunk):
                    queue.popleft()
                else:
                    queue[0] = chunk[size:]
                    chunk = chunk[:size]
                self._queued_bytes -= size
                window -= size
                last = not queue and self._end_queued and self._trailers is None
                if last:
                    h2conn.send_data(sid, chunk, end_stream=True)
                else:
                    send_data_frame(h2conn, h2stream, chunk)
                if last:
                    self.conn._stream_done(self)
                    return
        if queue:
            return
        if self._end_queued:
            h2stream = h2conn.streams.get(sid)
            if h2stream is None or h2stream.closed:
                # The peer reset or closed the stream while our end waited for its window (grpcio's
                # reflection client cancels after the first answer): nothing more may be sent on it.
                self.conn._stream_done(self)
                return
            if self._trailers is not None:
                h2conn.send_headers(sid, self._trailers, end_stream=True)
            else:
                h2conn.end_stream(sid)
            self.conn._stream_done(self)
        elif self._drain_callback is not None:
            self._drain_callback()


class H2ServerConnection(Protocol):
    """An HTTP/2 server connection serving an ``HttpApplication``.

    ``web_fallback(stream, body_handler)`` serves requests the application
    does not claim (the public REST surface through twisted.web).
    """

    def __init__(
        self,
        app: HttpApplication,
        clock: IReactorTime,
        limits: H2Limits,
        web_fallback: Callable[[H2Stream], ExchangeHandler],
        turn_budget: TurnBudget | None = None,
    ) -> None:
        self.app = app
        self.turn_budget = turn_budget or TurnBudget(clock, limits.streams_per_turn)
        self.clock = clock
        self.limits = limits
        self.web_fallback = web_fallback
        config = h2.config.H2Configuration(
            client_side=False,
            header_encoding=None,
            # We build response headers ourselves (lowercase, no connection headers);
            # re-validating them costs more than the rest of a unary call.
            validate_outbound_headers=False,
            normalize_outbound_headers=False,
            # Inbound headers are checked in one pass by _parse_request_headers, which we
            # walk anyway; h2's own checks walk the list several times per request.
            validate_inbound_headers=False,
        )
        self.h2 = h2.connection.H2Connection(config=config)
        self.streams: dict[int, H2Stream] = {}
        self.paused = False
        self.peer = ""
        self.last_stream_id = 0
        self.closing = False
        self._opened_window = 0
        self._premature_resets = 0
        self._settings_bucket = TokenBucket(clock, limits.control_frame_rate, limits.control_frame_burst)
        self._ping_bucket = TokenBucket(clock, limits.control_frame_rate, limits.control_frame_burst)
        self._idle_call: IDelayedCall | None = None
        self._idle_since: float | None = None
        self._flush_call: IDelayedCall | None = None
        self._receiving = False
        self._events: deque[Any] = deque()
        self._reading_paused = False
        self._resume_call: IDelayedCall | None = None
        self._keepalive_call: IDelayedCall | None = None
        self._keepalive_timeout: IDelayedCall | None = None
        self._shutdown_ping_call: IDelayedCall | None = None
        self._shutdown_phase = 0
        self._closed_d: defer.Deferred[None] = defer.Deferred()
        self._lost = False
        self.on_close: Callable[[H2ServerConnection], None] | None = None

    # -- connection lifecycle ---------------------------------------------------

    def connectionMade(self) -> None:
        transport: Any = self.transport
        peer = transport.getPeer()
        self.peer = getattr(peer, "host", str(peer))
        self.h2.initiate_connection()
        self.h2.update_settings(
            {
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.limits.max_concurrent_streams,
                h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.limits.max_header_list_bytes,
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.limits.initial_window_size,
            }
        )
        # Enforce our header limit from the first frame, not only once the peer ACKs.
        self.h2.decoder.max_header_list_size = self.limits.max_header_list_bytes
        self.h2.local_settings.acknowledge()
        # h2 treats a stream over the advertised MAX_CONCURRENT_STREAMS as a connection error,
        # which kills every stream of a client that raced our SETTINGS. RFC 9113 5.1.2 allows
        # a stream error: _request_received refuses such a stream (REFUSED_STREAM) itself, and
        # _stream_done resets streams we have answered, so h2 holds no more open streams than that.
        # (Set locally and applied at once: nothing is sent, the peer still sees our limit.)
        self.h2.local_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = _MAX_STREAM_ID
        self.h2.local_settings.acknowledge()
        # A connection-level receive window as large as the per-stream one.
        self.h2.increment_flow_control_window(self.limits.initial_window_size)
        transport.registerProducer(self, True)
        self._flush()
        self._idle_since = self.clock.seconds()
        if self.limits.idle_timeout_s > 0:
            self._idle_call = self.clock.callLater(self.limits.idle_timeout_s, self._idle_check)
        if self.limits.keepalive_interval_s > 0:
            self._keepalive_call = self.clock.callLater(self.limits.keepalive_interval_s, self._send_keepalive)

    def dataReceived(self, data: bytes) -> None:
        if self._lost:
            return
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self._protocol_error(e)
            return
        self._events.extend(events)
        if self._resume_call is None:
            self._handle_events()

    def _handle_events(self) -> None:
        """Handle h2's events in order while the turn's ``TurnBudget`` allows new streams."""
        self._resume_call = None
        events = self._events
        budget = self.turn_budget
        self._receiving = True
        try:
            while events:
                event = events[0]
                if type(event) is h2.events.RequestReceived and not budget.take():
                    break
                events.popleft()
                self._dispatch(event)
                if self._lost:
                    events.clear()
                    return
        finally:
            self._receiving = False
        self._flush()
        transport: Any = self.transport
        if events:
            if not self._reading_paused:
                self._reading_paused = True
                transport.pauseProducing()
            self._resume_call = self.clock.callLater(0, self._handle_events)
        elif self._reading_paused:
            self._reading_paused = False
            transport.resumeProducing()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self._lost = True
        self._events.clear()
        calls = (self._idle_call, self._keepalive_call, self._keepalive_timeout, self._shutdown_ping_call,
                 self._flush_call, self._resume_call)
        for call in calls:
            if call is not None and call.active():
                call.cancel()
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            if stream.handler is not None:
                stream.handler.aborted()
        if self.on_close is not None:
            self.on_close(self)
        if not self._closed_d.called:
            self._closed_d.callback(None)

    def _flush(self) -> None:
        self._flush_call = None
        data = self.h2.data_to_send()
        if data and not self._lost:
            self.transport.write(data)  # type: ignore[union-attr]

    def _flush_soon(self) -> None:
        """Write what h2 has queued once this reactor turn is done.

        Inside ``dataReceived`` that is its own final flush; elsewhere (a handler
        answering later, the hub fanning out) one delayed call per connection
        gathers every frame written in the turn into one socket write.
        """
        if self._receiving or self._flush_call is not None:
            return
        self._flush_call = self.clock.callLater(0, self._flush)

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
        self._flush()
        self.transport.loseConnection()  # type: ignore[union-attr]
        self._lost = True
        # Handlers of unfinished streams learn now; connectionLost finds nothing more.
        streams = list(self.streams.values())
        self.streams.clear()
        for stream in streams:
            if stream.handler is not None:
                stream.handler.aborted()

    def _protocol_error(self, error: h2.exceptions.ProtocolError) -> None:
        code = getattr(error, "error_code", h2.errors.ErrorCodes.PROTOCOL_ERROR)
        # receive_data() queued its own GOAWAY before raising; a second one would contradict it.
        self._go_away(code, f"protocol error: {type(error).__name__}", queued=True)

    # -- IPushProducer: the socket's backpressure -----------------------------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        for stream in list(self.streams.values()):
            stream._push()
        self._flush()

    def stopProducing(self) -> None:
        self.paused = True

    # -- events -----------------------------------------------------------------

    def _dispatch(self, event: Any) -> None:
        kind = type(event)
        if kind is h2.events.RequestReceived:
            self._request_received(event)
        elif kind is h2.events.DataReceived:
            self._data_received(event)
        elif kind is h2.events.StreamEnded:
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
            self.transport.loseConnection()  # type: ignore[union-attr]

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
        self._count_opened()
        parsed = parse_request_headers(event.headers)
        if parsed is None:
            self.h2.reset_stream(sid, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            return
        method, path, headers = parsed
        stream = H2Stream(self, sid, method, path, headers, self.peer)
        self.streams[sid] = stream
        handler = self.app.handler_for(stream)
        stream.handler = handler if handler is not None else self.web_fallback(stream)
        # END_STREAM arrives as its own StreamEnded event.

    def _data_received(self, event: h2.events.DataReceived) -> None:
        sid = event.stream_id
        if event.flow_controlled_length:
            # Request bodies are bounded by their handlers, so reopen at once.
            self.h2.acknowledge_received_data(event.flow_controlled_length, sid)
        stream = self.streams.get(sid)
        if stream is not None and stream.handler is not None and event.data:
            stream.handler.body_received(event.data)

    def _window_updated(self, stream_id: int) -> None:
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None:
                stream._push()
        else:
            for stream in list(self.streams.values()):
                stream._push()

    def _stream_reset(self, stream_id: int) -> None:
        stream = self.streams.pop(stream_id, None)
        if stream is None:
            return
        if not stream.answered:
            self._premature_resets += 1
            if self._rapid_reset_detected():
                self._go_away(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, "rapid reset")
        if stream.handler is not None:
            stream.handler.aborted()
        self._stream_closed()

    # -- rapid reset (CVE-2023-44487) ---------------------------------------------

    def _count_opened(self) -> None:
        self._opened_window += 1
        if self._opened_window >= 2 * self.limits.rapid_reset_window:
            # Age the counts: the decision looks at roughly the last window of streams.
            self._opened_window //= 2
            self._premature_resets //= 2

    def _rapid_reset_detected(self) -> bool:
        return (
            self._premature_resets >= self.limits.rapid_reset_window // 2
            and self._premature_resets * 2 >= self._opened_window
        )

    # -- stream bookkeeping -------------------------------------------------------

    def _stream_done(self, stream: H2Stream) -> None:
        """The response has ended (or was reset by us): forget the stream."""
        h2_stream = self.h2.streams.get(stream.stream_id)
        if h2_stream is not None and not h2_stream.closed:
            # Answered before the request ended: ask the peer to stop sending (RFC 9113 8.1),
            # which also closes the stream in h2, so it no longer counts as open there.
            try:
                self.h2.reset_stream(stream.stream_id, h2.errors.ErrorCodes.NO_ERROR)
            except h2.exceptions.ProtocolError:
                pass
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
        self.h2.ping(b"gwkalive")
        self._flush()
        self._keepalive_timeout = self.clock.callLater(
            self.limits.keepalive_timeout_s,
            lambda: self._go_away(h2.errors.ErrorCodes.NO_ERROR, "keepalive timeout"),
        )

    def _ping_acked(self, data: bytes) -> None:
        if data == b"gwkalive":
            if self._keepalive_timeout is not None and self._keepalive_timeout.active():
                self._keepalive_timeout.cancel()
            self._keepalive_timeout = None
            self._keepalive_call = self.clock.callLater(self.limits.keepalive_interval_s, self._send_keepalive)
        elif data == _SHUTDOWN_PING:
            self._shutdown_second_goaway()

    # -- graceful shutdown --------------------------------------------------------

    def shutdown(self) -> defer.Deferred[None]:
        """Stop taking streams, let the open ones finish, close; fires when closed."""
        if self._lost:
            return defer.succeed(None)
        if not self.closing:
            self.closing = True
            self._shutdown_phase = 1
            self._write_goaway(_MAX_STREAM_ID)
            self.h2.ping(_SHUTDOWN_PING)
            self._flush()
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
        # h2's close_connection() moves its state machine to CLOSED, after which
        # open streams could not finish; a graceful GOAWAY is written by hand.
        self._flush()
        frame = GoAwayFrame(stream_id=0)
        frame.last_stream_id = last_stream_id
        frame.error_code = h2.errors.ErrorCodes.NO_ERROR
        self.transport.write(frame.serialize())  # type: ignore[union-attr]

    def _finish_shutdown(self) -> None:
        self._flush()
        self.transport.loseConnection()  # type: ignore[union-attr]

    def abort(self) -> None:
        """Drop the connection now (the drain time ran out)."""
        if not self._lost:
            self.transport.abortConnection()  # type: ignore[union-attr]
