"""A gRPC client over HTTP/2: one connection, on Twisted and the sans-I/O ``h2`` library.

Speaks HTTP/2 with prior knowledge (h2c) over whatever transport the endpoint
gives it, so it also runs over TLS when the endpoint negotiated ``h2`` by ALPN
(pass ``scheme="https"`` then). It carries exactly what the gateway needs from
a gRPC client: server-streaming calls (unary calls are the one-message case)
and connection-level PING.

Promises:

- a call's Deferred fires with its status once the server ends the stream:
  ``call`` gives ``None`` for OK or an ``RpcError`` (code, message, metadata),
  ``server_streaming`` the pair ``(grpc-status, grpc-message)``. The status is
  read from trailers (trailers-only responses too) by gRPC's status codec
  (``rpc.protocols.grpc.decode_status``), or inferred by the gRPC rules
  (RST_STREAM, oversized or truncated message);
- it errbacks with ``ConnectionClosedError`` (``GoAwayError`` for a GOAWAY)
  when the connection ends under it, and with ``CancelledError`` when the
  caller cancels it, which resets the stream with CANCEL;
- received data is acknowledged to flow control as soon as the messages it
  completed were handed to ``on_message``, so a stream never stalls while
  its consumer keeps up; no message over ``max_message_bytes`` is buffered.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.framing import FLAG_COMPRESSED, FrameDecoder, encode_frame
from gatewayd.rpc.protocols.grpc import CONTENT_TYPE, decode_status
from gatewayd.transport.nodelay import set_nodelay

_CONNECTION_DONE = Failure(ConnectionDone())

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
# A long-lived stream should never wait on a window update round trip, so the
# receive windows are opened wide; the message-size bound still caps buffering.
DEFAULT_WINDOW_BYTES = 1024 * 1024

# gRPC's "HTTP2 RST_STREAM error code mapping" (PROTOCOL-HTTP2.md).
_RESET_TO_CODE: dict[int, Code] = {
    ErrorCodes.NO_ERROR: Code.INTERNAL,
    ErrorCodes.REFUSED_STREAM: Code.UNAVAILABLE,
    ErrorCodes.CANCEL: Code.CANCELLED,
    ErrorCodes.ENHANCE_YOUR_CALM: Code.RESOURCE_EXHAUSTED,
    ErrorCodes.INADEQUATE_SECURITY: Code.PERMISSION_DENIED,
}


class ConnectionClosedError(Exception):
    """The HTTP/2 connection ended before the call did; the call's outcome is unknown.

    ``code`` is the status a gRPC client reports for it (UNAVAILABLE).
    """

    code = Code.UNAVAILABLE

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class GoAwayError(ConnectionClosedError):
    """The server sent GOAWAY. ``processed`` says whether the server may have seen the call.

    h2 accepts no frame after a GOAWAY, so every open call ends here, even
    those the server would have finished (``last_stream_id`` >= their id).
    """

    def __init__(self, error_code: int, last_stream_id: int, debug: bytes, stream_id: int) -> None:
        name = _error_name(error_code)
        super().__init__(f"server sent GOAWAY ({name}, last stream {last_stream_id}) {debug!r}")
        self.error_code = error_code
        self.last_stream_id = last_stream_id
        self.processed = stream_id <= last_stream_id


def _error_name(error_code: int) -> str:
    try:
        return ErrorCodes(error_code).name
    except ValueError:
        return str(error_code)


@dataclass(eq=False)
class _Call:
    """One open stream: its response state and the Deferred the caller holds."""

    stream_id: int
    on_message: Callable[[bytes], None]
    decoder: FrameDecoder
    result: Deferred[RpcError | None]
    outbound: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    trailers: dict[str, str] | None = None
    done: bool = False


class H2ClientConnection(Protocol):
    """One client-side HTTP/2 connection carrying gRPC calls.

    ``authority`` is sent as ``:authority``; by default the peer's
    ``host:port``. ``reactor`` is needed only for ``ping`` RTT measurement.
    """

    log = Logger()

    def __init__(
        self,
        authority: str | None = None,
        *,
        scheme: str = "http",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        window_bytes: int = DEFAULT_WINDOW_BYTES,
        reactor: IReactorTime | None = None,
    ) -> None:
        self._h2 = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self._authority = authority
        self._scheme = scheme.encode("ascii")
        self._max_message_bytes = max_message_bytes
        self._window_bytes = window_bytes
        self._reactor = reactor
        self._calls: dict[int, _Call] = {}
        self._pings: dict[bytes, tuple[float, Deferred[float]]] = {}
        self._ping_ids = itertools.count(1)
        self._closed_waiters: list[Deferred[None]] = []
        self._closing_error: ConnectionClosedError | None = None
        self.closed = False

    # --- Twisted Protocol -----------------------------------------------------------

    def connectionMade(self) -> None:
        set_nodelay(self.transport)
        if self._authority is None:
            peer = self._transport().getPeer()
            host, port = getattr(peer, "host", "localhost"), getattr(peer, "port", None)
            host = f"[{host}]" if ":" in host else host
            self._authority = f"{host}:{port}" if port else host
        self._h2.initiate_connection()
        self._h2.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self._window_bytes})
        if self._window_bytes > 65535:
            self._h2.increment_flow_control_window(self._window_bytes - 65535)
        self._flush()

    def dataReceived(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            self.log.warn("HTTP/2 protocol error from {peer}: {error}", peer=self._authority, error=exc)
            self._fail_all(ConnectionClosedError(f"HTTP/2 protocol error: {exc}"))
            self._flush()  # h2 queued a GOAWAY for the peer
            self._transport().loseConnection()
            return
        for event in events:
            self._handle(event)
        self._flush()

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        self.closed = True
        error = self._closing_error or ConnectionClosedError(f"connection lost: {reason.getErrorMessage()}")
        self._fail_all(error)
        for _, waiter in self._pings.values():
            waiter.errback(ConnectionClosedError("connection lost before PING ACK"))
        self._pings.clear()
        waiters, self._closed_waiters = self._closed_waiters, []
        for w in waiters:
            w.callback(None)

    # --- public API ----------------------------------------------------------------

    def server_streaming(
        self,
        path: str,
        request_bytes: bytes,
        metadata: Sequence[tuple[str, str]],
        on_message: Callable[[bytes], None],
    ) -> Deferred[tuple[int, str]]:
        """``call``, firing with ``(grpc-status, grpc-message)`` instead (``(0, "")`` for OK)."""
        return self.call(path, request_bytes, metadata, on_message).addCallback(_code_and_message)

    def call(
        self,
        path: str,
        request_bytes: bytes,
        metadata: Sequence[tuple[str, str]],
        on_message: Callable[[bytes], None],
    ) -> Deferred[RpcError | None]:
        """Send one request message on a new stream; call ``on_message`` per response message.

        The Deferred fires with ``None`` when the call ends OK, else with its
        status as an ``RpcError`` (not raised: a status is an answer, not a
        failure of the connection). ``metadata`` names are lowercase; ``-bin``
        values already base64.
        """
        if self.closed or not self.connected or self._closing_error is not None:
            return defer.fail(self._closing_error or ConnectionClosedError("connection is not open"))
        stream_id = self._h2.get_next_available_stream_id()
        result: Deferred[RpcError | None] = Deferred(lambda _d: self._cancel(stream_id))
        call = _Call(stream_id, on_message, FrameDecoder(self._max_message_bytes), result)
        headers = [
            (b":method", b"POST"),
            (b":scheme", self._scheme),
            (b":path", path.encode("ascii")),
            (b":authority", (self._authority or "").encode("ascii")),
            (b"content-type", CONTENT_TYPE.encode()),
            (b"te", b"trailers"),
            *((k.lower().encode("ascii"), v.encode("ascii")) for k, v in metadata),
        ]
        self._calls[stream_id] = call
        self._h2.send_headers(stream_id, headers)
        call.outbound = encode_frame(request_bytes)
        self._send_pending(call)
        self._flush()
        return result

    def ping(self) -> Deferred[float]:
        """Send a PING; fire with the round-trip time in seconds when its ACK arrives."""
        if self._reactor is None:
            raise RuntimeError("ping needs a reactor for timing")
        if self.closed or self._closing_error is not None:
            return defer.fail(ConnectionClosedError("connection is not open"))
        opaque = next(self._ping_ids).to_bytes(8, "big")
        waiter: Deferred[float] = Deferred(lambda _d: self._drop_ping(opaque))
        self._pings[opaque] = (self._clock().seconds(), waiter)
        self._h2.ping(opaque)
        self._flush()
        return waiter

    def close(self) -> Deferred[None]:
        """GOAWAY, drop the connection and fire once it is gone; open calls errback."""
        waiter = self.when_closed()
        if not self.closed:
            if self._closing_error is None:
                self._closing_error = ConnectionClosedError("connection closed by the client")
            try:
                self._h2.close_connection()
                self._flush()
            except h2.exceptions.ProtocolError:
                pass  # already closed at the HTTP/2 level; just drop the socket
            self._transport().loseConnection()
        return waiter

    def abort(self) -> None:
        """Drop the connection at once (for a peer that stopped answering)."""
        if not self.closed and self.transport is not None:
            self._transport().abortConnection()

    def when_closed(self) -> Deferred[None]:
        """A Deferred that fires when the connection is lost (at once if it already is)."""
        if self.closed:
            return defer.succeed(None)
        waiter: Deferred[None] = Deferred()
        self._closed_waiters.append(waiter)
        return waiter

    @property
    def open_calls(self) -> int:
        """How many calls are in progress on this connection."""
        return len(self._calls)

    # --- h2 events -----------------------------------------------------------------

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            call = self._calls.get(event.stream_id)
            if call is not None:
                call.headers = _header_dict(event.headers)
        elif isinstance(event, h2.events.TrailersReceived):
            call = self._calls.get(event.stream_id)
            if call is not None:
                call.trailers = _header_dict(event.headers)
        elif isinstance(event, h2.events.DataReceived):
            self._data(event)
        elif isinstance(event, h2.events.StreamEnded):
            call = self._calls.get(event.stream_id)
            if call is not None:
                self._stream_ended(call)
        elif isinstance(event, h2.events.StreamReset):
            call = self._calls.get(event.stream_id)
            if call is not None:
                code = _RESET_TO_CODE.get(int(event.error_code or 0), Code.INTERNAL)
                self._finish(call, RpcError(code, f"stream reset by server ({_error_name(event.error_code or 0)})"))
        elif isinstance(event, h2.events.WindowUpdated):
            for call in list(self._calls.values()):
                if call.outbound:
                    self._send_pending(call)
        elif isinstance(event, h2.events.PingAckReceived):
            entry = self._pings.pop(event.ping_data or b"", None)
            if entry is not None and self._reactor is not None:
                entry[1].callback(self._clock().seconds() - entry[0])
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._goaway(event)
        # PING is answered by h2 itself (the ACK is flushed after this batch);
        # SETTINGS are acknowledged by h2 as well.

    def _data(self, event: h2.events.DataReceived) -> None:
        stream_id: int = event.stream_id
        try:
            call = self._calls.get(stream_id)
            if call is not None:
                self._deliver(call, event.data or b"")
        finally:
            # The messages this data completed are consumed (or the stream is
            # given up): let the server send as much again.
            self._h2.acknowledge_received_data(event.flow_controlled_length or 0, stream_id)

    def _deliver(self, call: _Call, data: bytes) -> None:
        try:
            messages = call.decoder.feed(data)
        except RpcError as exc:
            self._reset(call, ErrorCodes.CANCEL)
            self._finish(call, exc)
            return
        for flags, payload in messages:
            if flags & FLAG_COMPRESSED:
                self._reset(call, ErrorCodes.CANCEL)
                self._finish(call, RpcError(Code.INTERNAL, "compressed message, but no grpc-encoding was negotiated"))
                return
            try:
                call.on_message(payload)
            except Exception:
                self.log.failure("on_message raised; ending the call")
                self._reset(call, ErrorCodes.CANCEL)
                self._finish(call, RpcError(Code.INTERNAL, "response message handler failed"))
                return
            if call.done:  # the handler cancelled the call
                return

    def _stream_ended(self, call: _Call) -> None:
        # Trailers-only responses carry the status in the (only) HEADERS frame.
        fields = call.trailers if call.trailers is not None else call.headers
        raw_http_status = call.headers.get(":status", "")
        http_status = int(raw_http_status) if raw_http_status.isascii() and raw_http_status.isdigit() else 0
        status = decode_status(fields, http_status)
        if call.decoder.pending and http_status == 200 and "grpc-status" in fields:
            status = RpcError(Code.INTERNAL, "stream ended inside a message")
        self._finish(call, status)

    def _goaway(self, event: h2.events.ConnectionTerminated) -> None:
        error_code = int(event.error_code or 0)
        last = event.last_stream_id or 0
        self.log.info(
            "server {peer} sent GOAWAY {code} (last stream {last})",
            peer=self._authority, code=_error_name(error_code), last=last,
        )
        debug = event.additional_data or b""
        self._closing_error = GoAwayError(error_code, last, debug, stream_id=2**31)
        for call in list(self._calls.values()):
            self._fail(call, GoAwayError(error_code, last, debug, call.stream_id))
        # h2 will not process any further frame; nothing more can happen here.
        self._transport().loseConnection()

    # --- helpers -------------------------------------------------------------------

    def _send_pending(self, call: _Call) -> None:
        """Send as much of the request body as flow control allows; END_STREAM with the last byte."""
        while call.outbound:
            window = min(self._h2.local_flow_control_window(call.stream_id), self._h2.max_outbound_frame_size)
            if window <= 0:
                return
            chunk, call.outbound = call.outbound[:window], call.outbound[window:]
            self._h2.send_data(call.stream_id, chunk, end_stream=not call.outbound)

    def _cancel(self, stream_id: int) -> None:
        call = self._calls.pop(stream_id, None)
        if call is None:
            return
        call.done = True
        self._reset(call, ErrorCodes.CANCEL)
        self._flush()

    def _reset(self, call: _Call, error_code: ErrorCodes) -> None:
        try:
            self._h2.reset_stream(call.stream_id, error_code)
        except h2.exceptions.StreamClosedError:
            pass  # already closed on both sides
        except h2.exceptions.ProtocolError:
            pass  # connection already closed

    def _finish(self, call: _Call, status: RpcError | None) -> None:
        if call.done:
            return
        call.done = True
        self._calls.pop(call.stream_id, None)
        call.result.callback(status)

    def _fail(self, call: _Call, error: Exception) -> None:
        if call.done:
            return
        call.done = True
        self._calls.pop(call.stream_id, None)
        call.result.errback(error)

    def _fail_all(self, error: ConnectionClosedError) -> None:
        for call in list(self._calls.values()):
            self._fail(call, error)

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self._transport().write(data)

    # zope interfaces do not type-check as classes; keep the Any in one place.
    def _transport(self) -> Any:
        return self.transport

    def _clock(self) -> Any:
        return self._reactor

    def _drop_ping(self, opaque: bytes) -> None:
        self._pings.pop(opaque, None)


def _header_dict(headers: object) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers or ():  # type: ignore[attr-defined]
        key = bytes(name).decode("latin-1").lower()
        text = bytes(value).decode("latin-1")
        # Repeated names (allowed for custom metadata) are joined as HTTP does.
        out[key] = out[key] + "," + text if key in out else text
    return out


def _code_and_message(status: RpcError | None) -> tuple[int, str]:
    return (0, "") if status is None else (int(status.code), status.message)


def connect_h2(
    endpoint: Any,
    authority: str | None = None,
    **options: Any,
) -> Deferred[H2ClientConnection]:
    """Connect ``endpoint`` (an ``IStreamClientEndpoint``); fire with the connection once it is made.

    ``options`` go to ``H2ClientConnection``. Cancelling the Deferred
    abandons the connection attempt.
    """
    return connectProtocol(endpoint, H2ClientConnection(authority, **options))
