"""Serve non-RPC HTTP/2 requests with twisted.web resources (the public REST surface).

``H2WebChannel`` is just enough of an ``HTTPChannel`` for one
``twisted.web.server.Request`` on one of our ``H2Stream``s, the way
``twisted.web._http2.H2Stream`` does it for Twisted's own HTTP/2.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from gatewayd.http2.stream import H2Stream
from gatewayd.transport.http1 import GatewaySite

_HOP_BY_HOP = {b"connection", b"transfer-encoding", b"keep-alive", b"upgrade", b"proxy-connection"}


class H2WebChannel:
    """The channel a twisted.web ``Request`` writes to, backed by one HTTP/2 stream."""

    def __init__(self, stream: H2Stream, site: GatewaySite, transport: Any) -> None:
        self.stream = stream
        self.site = site
        self.factory = site
        self.transport = transport
        self._too_large = False
        self._size = 0
        self._max_body = site.requestFactory.max_body_bytes  # type: ignore[attr-defined]
        self.request = site.requestFactory(self, queued=False)
        self._producer: Any = None
        request = self.request
        headers = request.requestHeaders
        for name, value in stream.headers.items():
            headers.addRawHeader(name.encode("latin-1"), value.encode("latin-1"))
        length = stream.headers.get("content-length")
        if stream.method in ("GET", "HEAD") and length is None:
            request.gotLength(0)
        else:
            request.gotLength(int(length) if length and length.isdigit() else None)

    # -- ExchangeHandler ---------------------------------------------------------------

    def body_received(self, data: bytes) -> None:
        self.request.handleContentChunk(data)

    def body_complete(self) -> None:
        self.request.requestReceived(self.stream.method.encode(), self.stream.path.encode("latin-1"), b"HTTP/2")

    def aborted(self) -> None:
        self.request.connectionLost(Failure(ConnectionError("stream reset")))

    # -- what Request needs from its channel --------------------------------------------

    def writeHeaders(self, version: bytes, code: int, reason: bytes, headers: Headers) -> None:
        pairs = [
            (name.lower(), value)
            for name, values in headers.getAllRawHeaders()
            if name.lower() not in _HOP_BY_HOP
            for value in values
        ]
        self.stream.send_headers(int(code), pairs)

    def write(self, data: bytes) -> None:
        self.stream.send_data(data)

    def writeSequence(self, data: list[bytes]) -> None:
        self.stream.send_data(b"".join(data))

    def requestDone(self, request: Any) -> None:
        if not self.stream.answered:
            self.stream.send_headers(200, [])
        self.stream.send_data(b"", end_stream=True)

    def getPeer(self) -> Any:
        return self.transport.getPeer() if self.transport else IPv4Address("TCP", "0.0.0.0", 0)

    def getHost(self) -> Any:
        return self.transport.getHost()

    def isSecure(self) -> bool:
        return False

    def loseConnection(self) -> None:
        self.stream.reset()

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self._producer = producer

    def unregisterProducer(self) -> None:
        self._producer = None

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.stream.send_headers(400, [(b"content-length", b"0")], end_stream=True)


def web_fallback_for(site: GatewaySite) -> Any:
    """The ``web_fallback`` an ``H2ServerConnection`` uses to serve non-RPC requests."""

    def fallback(stream: H2Stream, transport: Any) -> H2WebChannel:
        return H2WebChannel(stream, site, transport)

    return fallback
