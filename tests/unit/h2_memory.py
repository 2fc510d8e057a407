"""An HTTP/2 server connection and a raw client wired together in memory, on a ``Clock``.

``CorePair`` drives the sans-I/O ``ServerConnectionCore`` through a ``MemoryIO``;
``ProtocolPair`` drives the Twisted ``H2ServerConnection`` over a ``StringTransport``.
Both serve ``gatewayd.testing``'s scripted ``TestMethods`` (and, for requests no
method claims, a twisted.web resource) and talk to a ``RawH2Client``, which records
every frame. ``pump()`` moves bytes both ways until both sides are quiet, and
delivers the end of the connection once the server has closed it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import IResource

from gatewayd.config import ServerConfig
from gatewayd.http2.core import ServerConnectionCore
from gatewayd.http2.server import H2ServerConnection
from gatewayd.rpc.methods import MethodTable
from gatewayd.rpc.server import RpcApplication
from gatewayd.testing.harness import TestMethods
from gatewayd.testing.raw_h2 import RawH2Client
from gatewayd.transport.cors import CorsPolicy
from gatewayd.transport.listener import GatewayFactory
from gatewayd.transport.server import build_factory

PEER = IPv4Address("TCP", "10.0.0.7", 40000)


class MemoryIO:
    """The core's ``ConnectionIO`` in memory: what it wrote, and what it asked of the socket."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.reading = True
        self.closing = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        if not self.aborted:
            self.written += data

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = self.aborted = True

    def take(self) -> bytes:
        out = bytes(self.written)
        self.written.clear()
        return out


class _Pair:
    """What both pairs share: the clock, the served methods, the raw client and the pump."""

    def __init__(self, config: ServerConfig | None, web_resource: IResource | None, client: dict[str, Any]) -> None:
        self.clock = Clock()
        self.methods = TestMethods()
        table = MethodTable()
        for method in self.methods.methods():
            table.add(method)
        self.factory: GatewayFactory
        self.app: RpcApplication
        self.factory, self.app = build_factory(table, self.clock, config or ServerConfig(), web_resource, CorsPolicy())
        self.client = RawH2Client(reactor=self.clock, **client)
        self.client_transport = StringTransport()
        self.client.makeConnection(self.client_transport)
        self.lost = False

    # What a pair does with the server side.
    def _server_receive(self, data: bytes) -> None:
        raise NotImplementedError

    def _server_take(self) -> bytes:
        raise NotImplementedError

    def _server_closing(self) -> bool:
        raise NotImplementedError

    def _server_lost(self) -> None:
        raise NotImplementedError

    def pump(self) -> None:
        """Move bytes both ways until neither side has more; end the connection if the server closed it."""
        for _ in range(10_000):
            upstream = self.client_transport.value()
            self.client_transport.clear()
            if upstream and not self.lost:
                self._server_receive(upstream)
            downstream = self._server_take()
            if downstream and not self.lost:
                self.client.dataReceived(downstream)
            if not upstream and not downstream:
                break
        else:
            raise AssertionError("the two sides never went quiet")
        if self._server_closing() and not self.lost:
            self.lost = True
            self.client.connectionLost(None)
            self._server_lost()

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass on the clock (running what falls due), then pump."""
        self.clock.advance(seconds)
        self.pump()

    def turn(self) -> None:
        """One reactor turn: delayed calls due now (coalesced flushes, deferred streams), then pump."""
        self.advance(0)

    def open(self, path: str, body: bytes | None = None, **kwargs: Any) -> int:
        """Open a stream from the client (``RawH2Client.open_stream``) and pump; the stream id."""
        sid = self.client.open_stream(path, body=body, **kwargs)
        self.pump()
        return sid

    @property
    def closed(self) -> bool:
        return self.client.closed


class CorePair(_Pair):
    """A ``RawH2Client`` talking to a ``ServerConnectionCore`` with no transport at all."""

    def __init__(self, config: ServerConfig | None = None, web_resource: IResource | None = None,
                 **client: Any) -> None:
        super().__init__(config, web_resource, client)
        self.io = MemoryIO()
        fallback = self.factory.web_fallback
        self.core = ServerConnectionCore(self.app, self.clock, self.factory.limits,
                                         lambda stream: fallback(stream, None), self.io, self.factory.turn_budget)
        self.core.start(PEER.host)
        self.pump()

    def _server_receive(self, data: bytes) -> None:
        self.core.receive(data)

    def _server_take(self) -> bytes:
        return self.io.take()

    def _server_closing(self) -> bool:
        return self.io.closing

    def _server_lost(self) -> None:
        self.core.connection_lost()


class ProtocolPair(_Pair):
    """A ``RawH2Client`` talking to an ``H2ServerConnection`` over a ``StringTransport``.

    ``transport`` replaces the server's ``StringTransport`` (one that says it is TLS, say).
    """

    def __init__(self, config: ServerConfig | None = None, web_resource: IResource | None = None,
                 transport: StringTransport | None = None, **client: Any) -> None:
        super().__init__(config, web_resource, client)
        self.transport = transport or StringTransport(peerAddress=PEER)
        self.server: H2ServerConnection = self.factory.build_h2()
        self.server.makeConnection(self.transport)
        self.pump()

    def _server_receive(self, data: bytes) -> None:
        self.server.dataReceived(data)

    def _server_take(self) -> bytes:
        out = self.transport.value()
        self.transport.clear()
        return bytes(out)

    def _server_closing(self) -> bool:
        return bool(self.transport.disconnecting)

    def _server_lost(self) -> None:
        self.server.connectionLost(None)
