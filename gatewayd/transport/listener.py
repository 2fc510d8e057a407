"""One port for everything: tell HTTP/2 from HTTP/1.1 and hand the connection over.

Cleartext: a connection that starts with the HTTP/2 preface is HTTP/2 (h2c
prior knowledge); anything else is HTTP/1.1. TLS: ALPN alone decides (PROTOCOL.md
section 1): ``h2`` selects HTTP/2, ``http/1.1`` or none selects HTTP/1.1, even when
the first bytes are the HTTP/2 preface (then a bad HTTP/1.1 request: 400, closed).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime, ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from gatewayd.http2.limits import H2Limits, TurnBudget
from gatewayd.http2.server import H2ServerConnection
from gatewayd.http2.web import web_fallback_for
from gatewayd.observability.stats import ConnectionStats
from gatewayd.transport.exchange import HttpApplication
from gatewayd.transport.http1 import GatewaySite
from gatewayd.transport.nodelay import set_nodelay

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class SniffingProtocol(Protocol):
    """Decides on the first bytes, then forwards everything to the chosen protocol."""

    def __init__(self, factory: GatewayFactory) -> None:
        self.factory = factory
        self.inner: Protocol | None = None
        self._buffer = b""

    def connectionMade(self) -> None:
        set_nodelay(self.transport)

    def dataReceived(self, data: bytes) -> None:
        if self.inner is not None:
            self.inner.dataReceived(data)
            return
        if ISSLTransport.providedBy(self.transport):
            # The handshake is over by the first read: ALPN is known (None when none was agreed).
            self._choose(getattr(self.transport, "negotiatedProtocol", None) == b"h2", data)
            return
        self._buffer += data
        prefix = self._buffer[: len(H2_PREFACE)]
        if not H2_PREFACE.startswith(prefix):
            self._choose(False, self._buffer)
        elif len(self._buffer) >= len(H2_PREFACE):
            self._choose(True, self._buffer)

    def _choose(self, http2: bool, data: bytes) -> None:
        self._buffer = b""
        inner = self.factory.build_h2() if http2 else self.factory.build_http1(self.transport)
        self.inner = inner
        inner.makeConnection(self.transport)
        # The transport delivers to us: from now on straight to the chosen protocol, without a
        # forwarding call per read (the instance attribute shadows this class's method).
        self.dataReceived = inner.dataReceived  # type: ignore[method-assign]
        inner.dataReceived(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        if self.inner is not None:
            self.inner.connectionLost(reason)  # type: ignore[arg-type]
        self.factory.connections.discard(self)


class GatewayFactory(Factory):
    """Builds a ``SniffingProtocol`` per connection and keeps track of them for shutdown."""

    noisy = False

    def __init__(self, app: HttpApplication, site: GatewaySite, clock: IReactorTime, limits: H2Limits) -> None:
        self.app = app
        self.site = site
        self.clock = clock
        self.limits = limits
        self.connections: set[SniffingProtocol] = set()
        self.h2_connections: set[H2ServerConnection] = set()
        self.accepting = True
        self.web_fallback = web_fallback_for(site)
        self.turn_budget = TurnBudget(clock, limits.streams_per_turn)
        self.on_h2_connection: Callable[[H2ServerConnection], None] | None = None

    @property
    def stats(self) -> ConnectionStats:
        """Open connections, and those speaking HTTP/2 (for ``/metrics``)."""
        return ConnectionStats(open=len(self.connections), http2_open=len(self.h2_connections))

    def buildProtocol(self, addr: object) -> Protocol | None:
        if not self.accepting:
            return None
        protocol = SniffingProtocol(self)
        self.connections.add(protocol)
        return protocol

    def build_h2(self) -> H2ServerConnection:
        conn = H2ServerConnection(self.app, self.clock, self.limits, self.web_fallback, self.turn_budget)
        self.h2_connections.add(conn)
        conn.on_close = self.h2_connections.discard
        return conn

    def build_http1(self, transport: object) -> Protocol:
        channel = self.site.buildProtocol(getattr(transport, "getPeer", lambda: None)())
        return channel
