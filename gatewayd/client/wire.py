"""The three RPC protocols, client side: bytes in, bytes out, statuses as ``RpcCallError``.

``RpcTransport`` is what ``GatewayClient`` needs of a protocol: a unary call
(request message bytes → response message bytes) and a server-streaming call
(one request message, ``on_message`` per response message). Each protocol
follows its specification:

- ``GrpcTransport``: gRPC over HTTP/2 cleartext (prior knowledge) on
  ``gatewayd.rpc.client``, one connection reused across calls;
- ``GrpcWebTransport``: ``application/grpc-web+proto`` over HTTP/1.1 (treq),
  trailers in the 0x80 frame or, for trailers-only answers, in the headers;
- ``ConnectTransport``: Connect unary (``application/proto``, JSON errors)
  and Connect streaming (``application/connect+proto``, end-stream message),
  over HTTP/1.1 (treq).

The request headers and the reading of statuses are each protocol's own rules
(``gatewayd.rpc.protocols``), the very codec the server writes them with; this
module only moves the bytes.

Promises: a non-OK status errbacks with ``RpcCallError`` carrying the code,
message, status metadata (``retry-after``...) and error details
(``google.rpc.RetryInfo``...); a gateway that
cannot be reached is ``GatewayUnreachableError`` (an ``RpcCallError`` with UNAVAILABLE); cancelling a call's
Deferred drops its stream or connection.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

from twisted.internet import defer, error
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from gatewayd.client.errors import GatewayUnreachableError, RpcCallError
from gatewayd.deferreds import settle, settle_each
from gatewayd.request_body import request_body
from gatewayd.rpc.client import ConnectionClosedError, H2ClientConnection, connect_h2
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.framing import (
    FLAG_COMPRESSED,
    FLAG_CONNECT_END_STREAM,
    FLAG_GRPC_WEB_TRAILERS,
    FrameDecoder,
    encode_frame,
)
from gatewayd.rpc.protocols import connect, grpc, grpcweb

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
PROTOCOLS = ("grpc", "grpc-web", "connect")

OnMessage = Callable[[bytes], None]


class RpcTransport(Protocol):
    """One RPC protocol to one gateway."""

    def unary(self, path: str, request: bytes, timeout_s: float | None = None) -> Deferred[bytes]:
        """Send ``request``; fire with the one response message."""

    def server_streaming(self, path: str, request: bytes, on_message: OnMessage) -> Deferred[None]:
        """Send ``request``; call ``on_message`` per response message; fire when the stream ends OK."""

    def close(self) -> Deferred[None]:
        """Drop every connection this transport holds."""


def _raise_status(status: RpcError | None) -> None:
    """A call's decoded status: nothing for OK, else ``RpcCallError``."""
    if status is not None:
        raise RpcCallError(status.code, status.message, status.metadata, status.details)


def _one(messages: list[bytes]) -> bytes:
    if len(messages) != 1:
        raise RpcCallError(Code.INTERNAL, f"expected one response message, got {len(messages)}")
    return messages[0]


def _unreachable(failure: Failure) -> Failure:
    """Connection-level failures become UNAVAILABLE, as a gRPC client reports them."""
    if failure.check(RpcCallError, defer.CancelledError):
        return failure
    if failure.check(ConnectionClosedError):
        raise GatewayUnreachableError(str(failure.value))
    if failure.check(error.ConnectError, error.ConnectionLost, error.ConnectionDone, error.DNSLookupError):
        raise GatewayUnreachableError(f"cannot reach the gateway: {failure.getErrorMessage()}")
    # twisted.web wraps connection failures in lists of failures (ResponseFailed and friends).
    reasons = getattr(failure.value, "reasons", None)
    if reasons:
        raise GatewayUnreachableError(f"connection to the gateway failed: {reasons[0].getErrorMessage()}")
    return failure


# --- gRPC over HTTP/2 ------------------------------------------------------------------


class GrpcTransport:
    """gRPC on one reused HTTP/2 connection (h2c, or TLS with ALPN h2 for ``https`` URLs)."""

    def __init__(self, reactor: Any, base_url: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> None:
        parts = urlsplit(base_url)
        self._reactor = reactor
        self._host = parts.hostname or "127.0.0.1"
        self._tls = parts.scheme == "https"
        self._port = parts.port or (443 if self._tls else 80)
        self._max_message_bytes = max_message_bytes
        self._connection: H2ClientConnection | None = None
        self._waiters: list[Deferred[H2ClientConnection]] = []

    def _connect(self) -> Deferred[H2ClientConnection]:
        conn = self._connection
        if conn is not None and not conn.closed:
            return defer.succeed(conn)
        waiter: Deferred[H2ClientConnection] = Deferred()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            endpoint: Any = HostnameEndpoint(self._reactor, self._host, self._port)
            if self._tls:
                from twisted.internet.ssl import optionsForClientTLS

                endpoint = wrapClientTLS(optionsForClientTLS(self._host, acceptableProtocols=[b"h2"]), endpoint)
            authority = f"{self._host}:{self._port}"
            connect_h2(endpoint, authority, scheme="https" if self._tls else "http",
                       max_message_bytes=self._max_message_bytes, reactor=self._reactor).addBoth(self._connected)
        return waiter

    def _connected(self, result: H2ClientConnection | Failure) -> None:
        if not isinstance(result, Failure):
            self._connection = result
        waiters, self._waiters = self._waiters, []
        settle_each(waiters, result)

    def _call(self, path: str, request: bytes, on_message: OnMessage, metadata: list[tuple[str, str]]
              ) -> Deferred[None]:
        started: list[Deferred[RpcError | None]] = []

        def send(conn: H2ClientConnection) -> Deferred[RpcError | None]:
            call = conn.call(path, request, metadata, on_message)
            started.append(call)
            return call

        def cancel(_: Deferred[None]) -> None:
            for call in started:
                call.cancel()

        outer: Deferred[None] = Deferred(cancel)
        d = self._connect().addCallback(send).addCallback(_raise_status).addErrback(_unreachable)
        d.addBoth(lambda r: settle(outer, r))
        return outer

    def unary(self, path: str, request: bytes, timeout_s: float | None = None) -> Deferred[bytes]:
        messages: list[bytes] = []
        metadata = [("grpc-timeout", grpc.encode_timeout(timeout_s))] if timeout_s else []
        return self._call(path, request, messages.append, metadata).addCallback(lambda _: _one(messages))

    def server_streaming(self, path: str, request: bytes, on_message: OnMessage) -> Deferred[None]:
        return self._call(path, request, on_message, [])

    def close(self) -> Deferred[None]:
        conn, self._connection = self._connection, None
        if conn is None:
            return defer.succeed(None)
        return conn.close()


# --- HTTP/1.1 protocols (gRPC-Web, Connect) ---------------------------------------------


class _BodyReader(TwistedProtocol):
    """Hands each chunk of a response body to ``on_data``; ``done`` fires when the body ends.

    Cancelling ``done`` stops the body and drops the connection.
    """

    def __init__(self, on_data: Callable[[bytes], None]) -> None:
        self._on_data = on_data
        self.done: Deferred[None] = Deferred(self._cancel)
        self._failed = False

    def _cancel(self, _: Deferred[None]) -> None:
        self._failed = True
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self._failed:
            return
        try:
            self._on_data(data)
        except Exception:
            self._failed = True
            failure = Failure()
            if self.transport is not None:
                self.transport.stopProducing()  # type: ignore[attr-defined]
            if not self.done.called:
                self.done.errback(failure)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        if self.done.called:
            return
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)


def _headers(response: IResponse) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, values in response.headers.getAllRawHeaders():
        out[name.decode("latin-1").lower()] = ",".join(v.decode("latin-1") for v in values)
    return out


def _read(response: IResponse, on_data: Callable[[bytes], None]) -> Deferred[None]:
    reader = _BodyReader(on_data)
    response.deliverBody(reader)
    return reader.done


def _read_all(response: IResponse, limit: int) -> Deferred[bytes]:
    chunks: list[bytes] = []
    size = [0]

    def collect(data: bytes) -> None:
        size[0] += len(data)
        if size[0] > limit:
            raise RpcCallError(Code.RESOURCE_EXHAUSTED, f"response body over {limit} bytes")
        chunks.append(data)

    return _read(response, collect).addCallback(lambda _: b"".join(chunks))


class _HttpTransport:
    """What gRPC-Web and Connect share: an Agent on a persistent connection pool (its own by default)."""

    def __init__(self, reactor: Any, base_url: str, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 pool: HTTPConnectionPool | None = None) -> None:
        self._reactor = reactor
        self._base = base_url.rstrip("/")
        self._max_message_bytes = max_message_bytes
        self._own_pool = pool is None
        self._pool = pool if pool is not None else HTTPConnectionPool(reactor, persistent=True)
        self._agent = Agent(reactor, pool=self._pool)

    def _post(self, path: str, headers: dict[str, str], body: bytes) -> Deferred[IResponse]:
        raw = Headers({k.encode("latin-1"): [v.encode("latin-1")] for k, v in headers.items()})
        d: Deferred[IResponse] = self._agent.request(
            b"POST", (self._base + path).encode("ascii"), raw, request_body(self._reactor, body)
        )
        return d

    def close(self) -> Deferred[None]:
        if not self._own_pool:
            return defer.succeed(None)
        d: Deferred[None] = self._pool.closeCachedConnections()
        return d

    def _framed(self, response: IResponse, on_frame: Callable[[int, bytes], None]) -> Deferred[None]:
        decoder = FrameDecoder(self._max_message_bytes)

        def feed(data: bytes) -> None:
            try:
                frames = decoder.feed(data)
            except RpcError as e:
                raise RpcCallError(e.code, e.message) from None
            for flags, payload in frames:
                on_frame(flags, payload)

        def ended(_: None) -> None:
            if decoder.pending:
                raise RpcCallError(Code.INTERNAL, "response ended inside a message")

        return _read(response, feed).addCallback(ended)

    def _request(self, path: str, headers: dict[str, str], body: bytes, steps: list[Deferred[Any]],
                 answered: Callable[[IResponse], Deferred[Any]]) -> Deferred[Any]:
        """POST, then ``answered(response)``; cancelling the result cancels the running step."""
        outer: Deferred[Any] = Deferred(_canceller(steps))
        d = _chain(self._post(path, headers, body), steps).addCallback(answered)
        d.addErrback(_unreachable)
        d.addBoth(lambda r: settle(outer, r))
        return outer


class _EndedStream:
    """The frames of a stream that ends with one flagged frame (gRPC-Web trailers, Connect end-stream).

    Plain frames go to ``on_message``; the end frame's payload is ``decode_end``-ed into
    the call's status as it arrives; a frame after it, or a compressed one, is an INTERNAL error.
    """

    def __init__(self, on_message: OnMessage, end_flag: int, decode_end: Callable[[bytes], RpcError | None],
                 after_end: str, no_end: str) -> None:
        self._on_message = on_message
        self._end_flag = end_flag
        self._decode_end = decode_end
        self._after_end = after_end
        self._no_end = no_end
        self._end: list[RpcError | None] = []

    def on_frame(self, flags: int, payload: bytes) -> None:
        if self._end:
            raise RpcCallError(Code.INTERNAL, self._after_end)
        if flags & self._end_flag:
            self._end.append(self._decode_end(payload))
        elif flags & FLAG_COMPRESSED:
            raise RpcCallError(Code.INTERNAL, "compressed message, but no encoding was negotiated")
        else:
            self._on_message(payload)

    def end(self, _: None) -> None:
        """Raise the status of the end frame (nothing for OK); INTERNAL if the stream had none."""
        if not self._end:
            raise RpcCallError(Code.INTERNAL, self._no_end)
        _raise_status(self._end[0])


def _canceller(steps: list[Deferred[Any]]) -> Callable[[Deferred[Any]], None]:
    """Cancelling the outer call cancels whichever step is still running."""

    def cancel(_: Deferred[Any]) -> None:
        for step in steps:
            if not step.called:
                step.cancel()

    return cancel


def _chain(d: Deferred[Any], canceller_target: list[Deferred[Any]]) -> Deferred[Any]:
    """Record ``d`` so that cancelling the outer call cancels whatever step is running."""
    canceller_target.append(d)
    return d


class GrpcWebTransport(_HttpTransport):
    """gRPC-Web, binary (``application/grpc-web+proto``), over HTTP/1.1."""

    def _call(self, path: str, request: bytes, on_message: OnMessage, timeout_s: float | None) -> Deferred[None]:
        steps: list[Deferred[Any]] = []
        headers = grpcweb.request_headers(timeout_s)

        def answered(response: IResponse) -> Deferred[None]:
            head = _headers(response)
            if grpcweb.status_in_headers(head, response.code):
                status = grpcweb.headers_status(head, response.code)
                return _chain(_read_all(response, self._max_message_bytes), steps).addCallback(
                    lambda _: _raise_status(status))
            stream = _EndedStream(on_message, FLAG_GRPC_WEB_TRAILERS, grpcweb.decode_trailer_frame,
                                  "message after the gRPC-Web trailers", "gRPC-Web response without trailers")
            return _chain(self._framed(response, stream.on_frame), steps).addCallback(stream.end)

        return self._request(path, headers, encode_frame(request), steps, answered)

    def unary(self, path: str, request: bytes, timeout_s: float | None = None) -> Deferred[bytes]:
        messages: list[bytes] = []
        return self._call(path, request, messages.append, timeout_s).addCallback(lambda _: _one(messages))

    def server_streaming(self, path: str, request: bytes, on_message: OnMessage) -> Deferred[None]:
        return self._call(path, request, on_message, None)


class ConnectTransport(_HttpTransport):
    """Connect with binary protobuf: unary (``application/proto``), streaming (``application/connect+proto``)."""

    def unary(self, path: str, request: bytes, timeout_s: float | None = None) -> Deferred[bytes]:
        steps: list[Deferred[Any]] = []
        headers = connect.request_headers(connect.UNARY_CONTENT_TYPE, timeout_s)

        def answered(response: IResponse) -> Deferred[bytes]:
            body = _chain(_read_all(response, self._max_message_bytes), steps)
            if response.code == 200:
                return body
            return body.addCallback(_connect_error, response.code, _headers(response))

        return self._request(path, headers, request, steps, answered)

    def server_streaming(self, path: str, request: bytes, on_message: OnMessage) -> Deferred[None]:
        steps: list[Deferred[Any]] = []
        headers = connect.request_headers(connect.STREAM_CONTENT_TYPE)

        def answered(response: IResponse) -> Deferred[None]:
            if response.code != 200:
                return _chain(_read_all(response, self._max_message_bytes), steps).addCallback(
                    _connect_error, response.code, _headers(response))
            stream = _EndedStream(on_message, FLAG_CONNECT_END_STREAM, connect.decode_end_stream,
                                  "message after the Connect end-stream message",
                                  "Connect stream without an end-stream message")
            return _chain(self._framed(response, stream.on_frame), steps).addCallback(stream.end)

        return self._request(path, headers, encode_frame(request), steps, answered)


def _connect_error(body: bytes, status: int, headers: Mapping[str, str]) -> Any:
    _raise_status(connect.decode_unary_error(body, status, headers))


def make_transport(protocol: str, reactor: Any, base_url: str, *,
                   max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES) -> RpcTransport:
    """The transport for ``protocol``: ``"grpc"``, ``"grpc-web"`` or ``"connect"``."""
    if protocol == "grpc":
        return GrpcTransport(reactor, base_url, max_message_bytes)
    if protocol == "grpc-web":
        return GrpcWebTransport(reactor, base_url, max_message_bytes)
    if protocol == "connect":
        return ConnectTransport(reactor, base_url, max_message_bytes)
    raise ValueError(f"unknown protocol {protocol!r} (expected one of {', '.join(PROTOCOLS)})")
