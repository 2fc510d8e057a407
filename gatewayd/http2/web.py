"""Serve non-RPC HTTP/2 requests with twisted.web resources (the public REST surface).

``H2WebChannel`` is the channel of one ``twisted.web.server.Request`` on one of
our ``H2Stream``s, the way ``twisted.web._http2.H2Stream`` is for Twisted's own
HTTP/2: the request's ``ITransport`` and ``IConsumer``. It promises:

- a producer the resource registers is paused while the stream cannot send
  (its flow-control window is closed, or the socket is full, so written bytes
  wait in the stream's queue) and resumed once that queue has gone out (on the
  peer's WINDOW_UPDATE, or when the socket drains); a pull producer (static
  files) is asked for more once per reactor turn on the connection's clock,
  under the same rule;
- a reset stream or a lost connection stops the producer and fails the request;
- ``isSecure()`` is true when the connection is TLS; ``getPeer``/``getHost`` are
  the connection's addresses. The request's own ``transport`` is ``None``, as in
  Twisted's HTTP/2: bytes written around the stream would corrupt the connection.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPullProducer,
    IPushProducer,
    IReactorTime,
    ISSLTransport,
    ITransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from zope.interface import implementer

from gatewayd.http2.stream import H2Stream
from gatewayd.transport.http1 import GatewaySite

log = Logger()

_HOP_BY_HOP = {b"connection", b"transfer-encoding", b"keep-alive", b"upgrade", b"proxy-connection"}
_NO_ADDRESS = IPv4Address("TCP", "0.0.0.0", 0)


@implementer(IPushProducer)
class _PullDriver:
    """A pull producer driven as a push producer: one ``resumeProducing`` per turn of ``clock``.

    (Twisted's own ``_PullToPush`` does this on the global cooperator; this one
    runs on the injected clock.)
    """

    def __init__(self, producer: IPullProducer, clock: IReactorTime, consumer: H2WebChannel) -> None:
        self._producer = producer
        self._clock = clock
        self._consumer = consumer
        self._paused = False
        self._stopped = False
        self._call: IDelayedCall | None = None

    def start(self) -> None:
        self._schedule()

    def stop(self) -> None:
        self._stopped = True
        self._cancel()

    def _schedule(self) -> None:
        if self._call is None and not self._paused and not self._stopped:
            self._call = self._clock.callLater(0, self._pull)

    def _cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _pull(self) -> None:
        self._call = None
        try:
            self._producer.resumeProducing()
        except Exception:
            log.failure("while calling resumeProducing on {producer}", producer=self._producer)
            self._consumer.unregisterProducer()
            return
        self._schedule()

    def pauseProducing(self) -> None:
        self._paused = True
        self._cancel()

    def resumeProducing(self) -> None:
        self._paused = False
        self._schedule()

    def stopProducing(self) -> None:
        self.stop()
        self._producer.stopProducing()


@implementer(ITransport, IConsumer)
class H2WebChannel:
    """The channel a twisted.web ``Request`` writes to, backed by one HTTP/2 stream.

    ``connection_transport`` is the HTTP/2 connection's transport, asked only for
    addresses and whether it is TLS (``None`` where there is none, as in tests).
    """

    transport = None  # what Request.transport becomes

    def __init__(self, stream: H2Stream, site: GatewaySite, connection_transport: Any) -> None:
        self.stream = stream
        self.site = site
        self.factory = site
        self._connection = connection_transport
        self._producer: IPushProducer | None = None
        self._pull: _PullDriver | None = None
        self._producer_paused = False
        stream.on_drain(self._drained)
        self.request = site.requestFactory(self, queued=False)
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
        # What a lost HTTP/1.1 connection does through HTTPChannel.stopProducing, then the request.
        producer = self._producer
        if producer is not None:
            self.unregisterProducer()
            producer.stopProducing()
        self.request.connectionLost(Failure(ConnectionError("stream reset")))

    # -- ITransport, and what Request needs from its channel ---------------------------------

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
        self._pause_if_blocked()

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def requestDone(self, request: Any) -> None:
        if not self.stream.answered:
            self.stream.send_headers(200, [])
        self.stream.send_data(b"", end_stream=True)

    def getPeer(self) -> Any:
        return self._connection.getPeer() if self._connection is not None else _NO_ADDRESS

    def getHost(self) -> Any:
        return self._connection.getHost() if self._connection is not None else _NO_ADDRESS

    def isSecure(self) -> bool:
        # What twisted.web's HTTPChannel asks (our TLS listener's TLSMemoryBIOProtocol provides it).
        return ISSLTransport.providedBy(self._connection)

    def loseConnection(self) -> None:
        self.stream.reset()

    def abortConnection(self) -> None:
        self.stream.reset()

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.stream.send_headers(400, [(b"content-length", b"0")], end_stream=True)

    # -- IConsumer: the stream's flow control reaches the resource's producer ---------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self._producer is not None:
            raise RuntimeError(f"Cannot register producer {producer}: {self._producer} was never unregistered")
        if streaming:
            self._producer = producer
        else:
            self._pull = _PullDriver(producer, self.stream.conn.clock, self)
            self._producer = self._pull
        self._producer_paused = False
        if self._pull is not None:
            self._pull.start()
        self._pause_if_blocked()

    def unregisterProducer(self) -> None:
        if self._pull is not None:
            self._pull.stop()
        self._producer = self._pull = None
        self._producer_paused = False

    def _pause_if_blocked(self) -> None:
        # Bytes left in the stream's queue mean the window (or the socket) is closed: stop the
        # producer until they are out, so a resource can never queue more than one write beyond it.
        if self._producer is not None and not self._producer_paused and self.stream.buffered_bytes:
            self._producer_paused = True
            self._producer.pauseProducing()

    def _drained(self) -> None:
        if self._producer is not None and self._producer_paused:
            self._producer_paused = False
            self._producer.resumeProducing()


def web_fallback_for(site: GatewaySite) -> Any:
    """The ``web_fallback`` an ``H2ServerConnection`` uses to serve non-RPC requests."""

    def fallback(stream: H2Stream, transport: Any) -> H2WebChannel:
        return H2WebChannel(stream, site, transport)

    return fallback
