"""HTTP/1.1 through twisted.web, bridged to the same ``HttpApplication`` as HTTP/2.

RPC requests (gRPC-Web, Connect) that arrive whole in one read are read and
answered by the channel itself (``http1_direct``); other RPC requests through
an ``Http1Exchange`` on twisted.web's ``Request``; everything else is served by
the site's resource tree (the public REST surface). Limits: request headers
(431 when over), request bodies (413), the send timeout (a connection whose
socket takes no bytes for ``send_timeout_s`` is aborted).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.logger import Logger
from twisted.web import http, server
from twisted.web.resource import IResource

from gatewayd.rpc.wire import rpc_path_shape
from gatewayd.transport.backpressure import PausableExchange
from gatewayd.transport.direct_write import direct_socket
from gatewayd.transport.exchange import HeaderList, HttpApplication
from gatewayd.transport.http1_direct import HOST, DirectExchange, read_rpc_request
from gatewayd.transport.turn_writes import TurnWrites

log = Logger()

_STATUS_400 = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_STATUS_408 = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_STATUS_431 = b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_STATUS_413 = 413


def _joined_headers(request: server.Request) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, values in request.requestHeaders.getAllRawHeaders():
        headers[name.decode("latin-1").lower()] = ", ".join(v.decode("latin-1") for v in values)
    return headers


class Http1Exchange(PausableExchange):
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
        super().__init__()
        self._finished = False
        self._producing = False

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

    def _finish(self) -> None:
        self._finished = True
        if self._producing:
            self.request.unregisterProducer()
        if not self.request.finished and not self.request._disconnected:
            self.request.finish()


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
    """HTTP/1.1 channel that reads request heads strictly and not forever.

    Refused with 400 and close, so that no proxy in front can read a request
    differently from us (request smuggling, RFC 9112 sections 2.2, 5.2, 6.1
    and 3.2), on top of what twisted.web already refuses (Content-Length with
    Transfer-Encoding, two of either, malformed lengths and chunks):

    - a bare LF or bare CR anywhere in the request line or headers;
    - obs-fold (a header line starting with space or tab);
    - a Transfer-Encoding other than exactly ``chunked``, or any in HTTP/1.0;
    - an HTTP/1.1 request without exactly one well-formed Host.

    A whole RPC request in one read, plainly well-formed, is answered directly
    (``http1_direct``); the channel keeps twisted.web's state for it (raw mode,
    later bytes buffered, no idle timeout) so that what follows is read as after
    any other request.

    Headers over the limit get 431. A request head not complete within
    ``header_timeout_s`` of its first byte, or a body not complete within
    ``body_timeout_s`` of its head, gets 408 (slowloris: trickling bytes keeps
    the idle timeout from firing, not these). After any refusal the channel
    stops reading but keeps the connection open briefly (lingering close, RFC
    9112 section 9.6): closing at once would answer unread bytes with a TCP
    reset, and clients often lose the answer to it. A connection whose socket
    takes none of our bytes for ``send_timeout_s`` (the transport paused us the
    whole time: a client that stopped reading) is aborted.
    """

    linger_s = 2.0
    header_timeout_s: float | None = 10.0
    body_timeout_s: float | None = 60.0
    send_timeout_s: float | None = None
    app: HttpApplication | None = None  # answers RPCs read directly; None: twisted.web reads every request
    max_rpc_body_bytes = 0
    _refused = False
    _deadline: Any = None
    _send_stall: Any = None
    _direct: DirectExchange | None = None
    _peer: str | None = None
    _socket: Any = None  # direct_socket(transport), with _peer
    turn_writes: TurnWrites | None = None  # the site's: direct unary answers leave at the end of the turn
    _held_answer: DirectExchange | None = None  # the last one, until it has left

    # -- reading the request head ----------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        held = self._held_answer
        if held is not None:
            # The last direct answer still waits for the end of the turn: it goes first.
            self._held_answer = None
            held.flush()
        if self._refused:
            return
        if self._busyReceiving:
            # Re-entered (pipelined bytes replayed once a response is done): LineReceiver only
            # buffers them, and the outer call parses them and checks what is left.
            super().dataReceived(data)
            return
        if self._direct is None and self._idle and self._answer_directly(data):
            return
        if data:
            self._head_started()
        super().dataReceived(data)
        if not self.line_mode or self._refused:
            return
        pending: bytes = self._buffer
        if b"\n" in pending or b"\r" in pending[:-1]:
            # An unterminated line already holding a bare LF or CR: no CRLF will make it valid.
            self._respondToBadRequestAndDisconnect()
        elif pending or self._in_headers:
            self._head_started()  # a pipelined request's head begun in this read

    @property
    def _idle(self) -> bool:
        """Between requests, nothing of the next one read yet: where a direct answer may start."""
        return bool(self.line_mode and not self._buffer and not self._handlingRequest and not self.requests
                    and self.persistent and not self._in_headers and self.app is not None)

    def _answer_directly(self, data: bytes) -> bool:
        """Serve ``data`` as one RPC request without twisted.web's ``Request``; False: not such a request."""
        request = read_rpc_request(data, self.totalHeadersSize, self.maxHeaders, self.max_rpc_body_bytes)
        if request is None:
            return False
        if self._peer is None:  # once per connection
            address = self.transport.getPeer()  # type: ignore[union-attr]
            self._peer = getattr(address, "host", str(address))
            self._socket = direct_socket(self.transport)
        exchange = DirectExchange(self, request, self._peer, self._direct_done, self._socket, self.turn_writes)
        app: Any = self.app
        handler = app.handler_for(exchange)
        if handler is None:
            return False
        # What twisted.web does for a request it handles (HTTPChannel.allContentReceived), but the
        # idle timeout is left running: timeoutConnection defers it while the answer is pending,
        # and _direct_done pushes it back (a reset, not a cancelled and a new DelayedCall per call).
        self._cancel_deadline()
        self._handlingRequest = True
        self.setRawMode()
        self._direct = exchange
        exchange.handler = handler
        if request.body:
            handler.body_received(request.body)
        handler.body_complete()
        return True

    def _direct_done(self, exchange: DirectExchange) -> None:
        """The direct answer is complete: read on, as twisted.web's ``requestDone`` does."""
        if self._direct is not exchange:
            return
        self._direct = None
        if exchange.holding:
            self._held_answer = exchange
        if not self._waitingForTransport:
            self._networkProducer.resumeProducing()
        self._handlingRequest = False
        self.resetTimeout()
        if self._dataBuffer:  # bytes that arrived while answering
            data = b"".join(self._dataBuffer)
            self._dataBuffer = []
            self.setLineMode(data)
        else:
            self.line_mode = 1  # setLineMode without bytes

    def timeoutConnection(self) -> None:
        if self._direct is not None:
            # The idle timeout is off while a direct answer is pending (twisted.web cancels it
            # while it handles a request): start it over; the answer's end resets it again.
            self.setTimeout(self.timeOut)
            return
        super().timeoutConnection()

    def _head_started(self) -> None:
        """A request head is being read: its deadline runs from now (if it is not running yet)."""
        if self.line_mode and self._deadline is None and self.header_timeout_s:
            self._deadline = self.callLater(self.header_timeout_s, self._too_slow)

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._refuse(_STATUS_431)
            return
        if _bare_cr_or_lf(line) or (line[:1] in (b" ", b"\t") and self._in_headers):
            self._respondToBadRequestAndDisconnect()  # bare CR/LF, or obs-fold
            return
        super().lineReceived(line)

    @property
    def _in_headers(self) -> bool:
        """Past the request line of the current request (twisted.web's own flag, name-mangled)."""
        return not getattr(self, "_HTTPChannel__first_line", 1)

    def lineLengthExceeded(self, line: bytes) -> None:
        # One header line longer than the whole limit never reaches lineReceived.
        self._refuse(_STATUS_431)

    def headerReceived(self, line: bytes) -> bool:
        if self._refused:
            return False
        name, _, value = line.partition(b":")
        if name.lower() == b"transfer-encoding" and (
            self._version != b"HTTP/1.1" or value.strip(b" \t").lower() != b"chunked"
        ):
            self._respondToBadRequestAndDisconnect()
            return False
        ok: bool = super().headerReceived(line)
        return ok

    def allHeadersReceived(self) -> None:
        hosts = self.requests[-1].requestHeaders.getRawHeaders(b"host")
        if self._version == b"HTTP/1.1" and (not hosts or len(hosts) != 1 or not HOST.fullmatch(hosts[0])):
            self._respondToBadRequestAndDisconnect()
            return
        self._cancel_deadline()
        if self.length != 0 and self.body_timeout_s:
            self._deadline = self.callLater(self.body_timeout_s, self._too_slow)
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        self._cancel_deadline()
        if not self._refused:  # twisted.web calls this even after allHeadersReceived refused
            super().allContentReceived()

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().rawDataReceived(data)

    # -- refusing ---------------------------------------------------------------------

    def _respondToBadRequestAndDisconnect(self) -> None:
        # twisted.web's own 400s come through here too.
        self._refuse(_STATUS_400)

    def _too_slow(self) -> None:
        self._deadline = None
        self._refuse(_STATUS_408)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _refuse(self, response: bytes) -> None:
        if self._refused:
            return
        self._refused = True
        self._cancel_deadline()
        self.setTimeout(None)
        transport: Any = self.transport
        transport.write(response)
        if hasattr(transport, "loseWriteConnection"):
            transport.loseWriteConnection()
            self.callLater(self.linger_s, transport.loseConnection)
        else:
            transport.loseConnection()

    # -- the send timeout (the channel is its transport's producer) ------------------------

    def pauseProducing(self) -> None:
        super().pauseProducing()
        if self.send_timeout_s and self._send_stall is None:
            self._send_stall = self.callLater(self.send_timeout_s, self._send_stalled)

    def resumeProducing(self) -> None:
        self._cancel_send_stall()
        super().resumeProducing()

    def _send_stalled(self) -> None:
        self._send_stall = None
        transport: Any = self.transport
        log.info("dropping HTTP/1.1 connection from {peer}: its socket did not drain for {timeout} s",
                 peer=self._peer or getattr(transport.getPeer(), "host", "?"), timeout=self.send_timeout_s)
        transport.abortConnection()

    def _cancel_send_stall(self) -> None:
        if self._send_stall is not None:
            if self._send_stall.active():
                self._send_stall.cancel()
            self._send_stall = None

    def connectionLost(self, reason: Any = None) -> None:
        self._cancel_deadline()
        self._cancel_send_stall()
        direct, self._direct = self._direct, None
        if direct is not None:
            direct.lost()
        super().connectionLost(reason)


def _bare_cr_or_lf(line: bytes) -> bool:
    """A line split at CRLF that still holds a CR or an LF."""
    return b"\n" in line or b"\r" in line


class GatewaySite(server.Site):
    """The twisted.web site for HTTP/1.1 (and for non-RPC requests over HTTP/2)."""

    protocol = GatewayHTTPChannel  # type: ignore[assignment]

    def __init__(self, resource: IResource, app: HttpApplication, max_body_bytes: int,
                 max_header_bytes: int, timeout: float = 300.0, max_rpc_body_bytes: int | None = None,
                 header_timeout_s: float | None = 10.0, body_timeout_s: float | None = 60.0,
                 send_timeout_s: float | None = None) -> None:
        rpc_limit = max_rpc_body_bytes if max_rpc_body_bytes is not None else max_body_bytes
        request_factory = type("BoundGatewayRequest", (GatewayRequest,),
                               {"app": app, "max_body_bytes": max_body_bytes, "max_rpc_body_bytes": rpc_limit})
        # No form parsing: every body here is JSON or an RPC message, never a form.
        super().__init__(resource, requestFactory=request_factory, timeout=timeout, parsePOSTFormSubmission=False)
        self.app = app
        self.max_rpc_body_bytes = rpc_limit
        self.max_header_bytes = max_header_bytes
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.send_timeout_s = send_timeout_s
        self.noisy = False

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.totalHeadersSize = self.max_header_bytes
        channel.header_timeout_s = self.header_timeout_s
        channel.body_timeout_s = self.body_timeout_s
        channel.send_timeout_s = self.send_timeout_s
        channel.app = self.app
        channel.max_rpc_body_bytes = self.max_rpc_body_bytes
        channel.turn_writes = TurnWrites.for_clock(self.reactor)
        return channel
