"""HTTP/1.1 through twisted.web, bridged to the same ``HttpApplication`` as HTTP/2.

RPC requests (gRPC-Web, Connect) are answered through an ``Http1Exchange``;
everything else is served by the site's resource tree (the public REST
surface). Limits: request headers (431 when over), request bodies (413).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.web import http, server
from twisted.web.resource import IResource

from gatewayd.rpc.wire import rpc_path_shape
from gatewayd.transport.exchange import HeaderList, HttpApplication

_STATUS_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_STATUS_413 = 413


def _joined_headers(request: server.Request) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, values in request.requestHeaders.getAllRawHeaders():
        headers[name.decode("latin-1").lower()] = ", ".join(v.decode("latin-1") for v in values)
    return headers


class Http1Exchange:
    """An ``Exchange`` over a twisted.web request.

    Backpressure: the exchange registers as the request's streaming producer;
    while the socket is full, bytes written are counted in ``buffered_bytes``.
    """

    http2 = False

    def __init__(self, request: server.Request, headers: Mapping[str, str]) -> None:
        self.request = request
        self.method = request.method.decode("latin-1")
        self.path = request.path.decode("latin-1")
        self.headers = headers
        address = request.getClientAddress()
        self.peer = getattr(address, "host", str(address))
        self._paused = False
        self._buffered = 0
        self._drain: Callable[[], None] | None = None
        self._finished = False
        self._producing = False

    @property
    def buffered_bytes(self) -> int:
        return self._buffered

    def send_headers(self, status: int, headers: HeaderList, end_stream: bool = False) -> None:
        if self._finished:
            return
        request = self.request
        request.setResponseCode(status)
        raw = request.responseHeaders
        for name, value in headers:
            raw.addRawHeader(name, value)
        if end_stream:
            if not raw.hasHeader(b"content-length"):
                raw.setRawHeaders(b"content-length", [b"0"])
            self._finish()
        elif not self._producing:
            self._producing = True
            request.registerProducer(self, True)

    def send_data(self, data: bytes, end_stream: bool = False) -> None:
        if self._finished:
            return
        if data:
            if self._paused:
                self._buffered += len(data)
            self.request.write(data)
        if end_stream:
            self._finish()

    def send_trailers(self, trailers: HeaderList) -> None:
        self._finish()

    def reset(self) -> None:
        if not self._finished:
            self._finished = True
            transport: Any = self.request.channel.transport if self.request.channel else None
            if transport is not None:
                transport.abortConnection()

    def on_drain(self, callback: Callable[[], None] | None) -> None:
        self._drain = callback

    def _finish(self) -> None:
        self._finished = True
        if self._producing:
            self.request.unregisterProducer()
        if not self.request.finished and not self.request._disconnected:
            self.request.finish()

    # IPushProducer, driven by the HTTP channel's transport.
    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._buffered = 0
        if self._drain is not None:
            self._drain()

    def stopProducing(self) -> None:
        self._paused = True


def rpc_body_limit(max_message_bytes: int) -> int:
    """The largest HTTP/1.1 body buffered for an RPC carrying one message of at most
    ``max_message_bytes``: the 5-byte frame header, base64 (gRPC-Web text), and slack
    for line breaks. The RPC handler enforces the exact message limit itself."""
    return (max_message_bytes + 5 + 2) // 3 * 4 + 4096


class GatewayRequest(server.Request):
    """A twisted.web request that hands RPCs to the application and bounds its body.

    Bodies to RPC paths (``/package.Service/Method``) are bounded by
    ``max_rpc_body_bytes``, and one over it is answered in the RPC's own protocol
    (RESOURCE_EXHAUSTED); other bodies by ``max_body_bytes`` (413).
    """

    app: HttpApplication
    max_body_bytes: int
    max_rpc_body_bytes: int
    resolve_peer_headers: bool = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._body_size = 0
        self._too_large = False
        self._body_limit = self.max_body_bytes

    def gotLength(self, length: int | None) -> None:
        # The request line is parsed by now (the channel holds it); Request.path is set only later.
        path: bytes = getattr(self.channel, "_path", b"") or b""
        if rpc_path_shape(path.split(b"?", 1)[0].decode("latin-1")):
            self._body_limit = self.max_rpc_body_bytes
        if length is not None and length > self._body_limit:
            self._too_large = True
            length = 0
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._too_large:
            return
        self._body_size += len(data)
        if self._body_size > self._body_limit:
            self._too_large = True
            content: Any = self.content
            content.seek(0)
            content.truncate()
            return
        super().handleContentChunk(data)

    def _reply_413(self) -> None:
        body = b'{"error": {"code": "resource_exhausted", "message": "request body too large"}}'
        self.setResponseCode(_STATUS_413)
        self.setHeader(b"content-type", b"application/json")
        self.setHeader(b"content-length", b"%d" % len(body))
        self.setHeader(b"connection", b"close")
        self.write(body)
        self.finish()

    def process(self) -> None:
        self.site = self.channel.site  # type: ignore[attr-defined]
        if self._too_large and self._body_limit == self.max_body_bytes:
            self._reply_413()
            return
        headers = _joined_headers(self)
        exchange = Http1Exchange(self, headers)
        handler = self.app.handler_for(exchange)
        if self._too_large:
            # An RPC answers a body over its limit in its own protocol.
            too_large = getattr(handler, "body_too_large", None)
            if handler is None or too_large is None:
                self._reply_413()
                return
            self.notifyFinish().addErrback(lambda _: handler.aborted())
            too_large()
            return
        if handler is None:
            super().process()
            return
        self.notifyFinish().addErrback(lambda _: handler.aborted())
        content: Any = self.content
        content.seek(0)
        body = content.read()
        if body:
            handler.body_received(body)
        handler.body_complete()


class GatewayHTTPChannel(http.HTTPChannel):
    """HTTP/1.1 channel answering 431 when request headers are over the limit.

    After the 431 it stops reading but keeps the connection open briefly
    (lingering close, RFC 9112 section 9.6): closing at once would answer the
    unread body with a TCP reset, and clients often lose the 431 to it.
    """

    linger_s = 2.0
    _refused = False

    def lineReceived(self, line: bytes) -> None:
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._refuse_headers()
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        # One header line longer than the whole limit never reaches lineReceived.
        self._refuse_headers()

    def dataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().dataReceived(data)

    def _refuse_headers(self) -> None:
        if self._refused:
            return
        self._refused = True
        self.setTimeout(None)
        transport: Any = self.transport
        transport.write(_STATUS_431)
        if hasattr(transport, "loseWriteConnection"):
            transport.loseWriteConnection()
            self.callLater(self.linger_s, transport.loseConnection)
        else:
            transport.loseConnection()


class GatewaySite(server.Site):
    """The twisted.web site for HTTP/1.1 (and for non-RPC requests over HTTP/2)."""

    protocol = GatewayHTTPChannel  # type: ignore[assignment]

    def __init__(self, resource: IResource, app: HttpApplication, max_body_bytes: int,
                 max_header_bytes: int, timeout: float = 300.0, max_rpc_body_bytes: int | None = None) -> None:
        rpc_limit = max_rpc_body_bytes if max_rpc_body_bytes is not None else max_body_bytes
        request_factory = type("BoundGatewayRequest", (GatewayRequest,),
                               {"app": app, "max_body_bytes": max_body_bytes, "max_rpc_body_bytes": rpc_limit})
        # No form parsing: every body here is JSON or an RPC message, never a form.
        super().__init__(resource, requestFactory=request_factory, timeout=timeout, parsePOSTFormSubmission=False)
        self.max_header_bytes = max_header_bytes
        self.noisy = False

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.totalHeadersSize = self.max_header_bytes
        return channel
