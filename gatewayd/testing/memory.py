"""A network in memory: listeners, connections and time without sockets.

``MemoryNetwork`` is a reactor (``twisted.internet.testing.MemoryReactorClock``)
whose ``listenTCP`` and ``connectTCP`` join the two protocols with a pair of
``MemoryTransport``s instead of a socket. Anything that takes a reactor runs on
it unchanged: a whole gateway with its reference backend (``InMemoryGateway``
in ``gatewayd.testing.dev``), ``GatewayClient``, ``RawH2Client``, twisted.web.
Nothing moves until the test says so: ``flush()`` delivers bytes and runs what
is due until everything is quiet, ``advance(s)`` moves the clock timer by timer,
``result(d)`` flushes until a Deferred fires and returns its result.

Transports keep TCP's promises that protocols rely on: bytes arrive in order,
``loseConnection`` delivers what was written first, ``abortConnection`` drops
it, a side that paused reading (``pauseProducing``) receives nothing until it
resumes, and a streaming producer registered on a transport is paused while
more than ``high_water`` bytes wait to be read by the peer.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterable
from typing import Any, TypeVar

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import (
    CannotListenError,
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
)
from twisted.internet.interfaces import (
    IConnector,
    IConsumer,
    IHostnameResolver,
    IHostResolution,
    IListeningPort,
    IPushProducer,
    IResolutionReceiver,
    ITCPTransport,
)
from twisted.internet.protocol import ClientFactory
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from zope.interface import implementer

T = TypeVar("T")

#: Bytes waiting for the peer above which a transport pauses its streaming producer.
HIGH_WATER = 64 * 1024
#: A fixed start for the clock (2023-11-14T22:13:20Z), so timestamps are realistic and runs repeat.
START_S = 1_700_000_000.0
#: ``flush`` gives up (and raises) after this many rounds without quiet: something loops.
MAX_ROUNDS = 100_000


class NotFired(AssertionError):
    """``MemoryNetwork.result`` found nothing left to do and the Deferred had still not fired."""


@implementer(ITCPTransport, IConsumer, IPushProducer)
class MemoryTransport:
    """One end of an in-memory TCP connection (see the module docstring for what it promises)."""

    def __init__(self, protocol: Any, host: IPv4Address, peer: IPv4Address) -> None:
        self.protocol = protocol
        self._host, self._peer = host, peer
        self.outgoing: list[bytes] = []
        self.reading = True
        self.disconnecting = False
        self.disconnected = False
        self.aborted = False
        self.producer: Any = None
        self.streaming = False
        self.producer_paused = False
        self.no_delay = False
        self.keep_alive = False

    @property
    def pending(self) -> int:
        """Bytes written and not yet read by the peer."""
        return sum(len(chunk) for chunk in self.outgoing)

    # -- ITransport ----------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self.disconnecting or self.disconnected or not data:
            return
        self.outgoing.append(bytes(data))
        if self.producer is not None and self.streaming and not self.producer_paused and self.pending > HIGH_WATER:
            self.producer_paused = True
            self.producer.pauseProducing()

    def writeSequence(self, data: Iterable[bytes]) -> None:
        self.write(b"".join(data))

    def loseConnection(self) -> None:
        """Close once everything written so far has been read by the peer."""
        self.disconnecting = True

    def abortConnection(self) -> None:
        """Close now; what was not yet read is dropped."""
        self.outgoing.clear()
        self.disconnecting = self.aborted = True

    def loseWriteConnection(self) -> None:
        self.loseConnection()

    def getPeer(self) -> IPv4Address:
        return self._peer

    def getHost(self) -> IPv4Address:
        return self._host

    def logPrefix(self) -> str:
        return "memory"

    # -- ITCPTransport options (kept, with no effect) ------------------------------------------

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = bool(enabled)

    def getTcpNoDelay(self) -> bool:
        return self.no_delay

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self.keep_alive = bool(enabled)

    def getTcpKeepAlive(self) -> bool:
        return self.keep_alive

    # -- IPushProducer: the protocol pausing its own reading -----------------------------------

    def pauseProducing(self) -> None:
        self.reading = False

    def resumeProducing(self) -> None:
        self.reading = True

    def stopProducing(self) -> None:
        self.loseConnection()

    # -- IConsumer: a producer feeding this transport ------------------------------------------

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError("a producer is already registered")
        self.producer, self.streaming, self.producer_paused = producer, bool(streaming), False
        if not streaming:
            producer.resumeProducing()

    def unregisterProducer(self) -> None:
        self.producer = None
        self.producer_paused = False

    def _drained(self) -> None:
        """The peer read everything: resume a paused producer, or ask a pull producer for more."""
        producer = self.producer
        if producer is None:
            return
        if self.streaming:
            if self.producer_paused:
                self.producer_paused = False
                producer.resumeProducing()
        else:
            producer.resumeProducing()


class _Connection:
    """Two ``MemoryTransport``s joined; ``pump`` moves what one wrote to the other."""

    def __init__(self, network: MemoryNetwork, client: Any, server: Any,
                 client_address: IPv4Address, server_address: IPv4Address,
                 connector: _Connector | None) -> None:
        self.network = network
        self.connector = connector
        self.client = MemoryTransport(client, client_address, server_address)
        self.server = MemoryTransport(server, server_address, client_address)
        self.closed = False

    def pump(self) -> bool:
        """Deliver what is readable and close what is closing; whether anything happened."""
        if self.closed:
            return False
        moved = False
        for writer, reader in ((self.client, self.server), (self.server, self.client)):
            if writer.outgoing and reader.reading:
                data = b"".join(writer.outgoing)
                writer.outgoing.clear()
                reader.protocol.dataReceived(data)
                moved = True
                if self.closed:
                    return True
                if not writer.outgoing:
                    writer._drained()
        for side, other in ((self.client, self.server), (self.server, self.client)):
            if side.aborted:
                self._close(side, Failure(ConnectionAborted()), other, Failure(ConnectionLost()))
                return True
            if side.disconnecting and not side.outgoing:
                self._close(side, Failure(ConnectionDone()), other, Failure(ConnectionDone()))
                return True
        return moved

    def _close(self, side: MemoryTransport, reason: Failure, other: MemoryTransport, other_reason: Failure) -> None:
        self.closed = True
        for transport, why in ((side, reason), (other, other_reason)):
            transport.disconnecting = transport.disconnected = True
            transport.outgoing.clear()
            if transport.producer is not None:
                producer, transport.producer = transport.producer, None
                producer.stopProducing()
            transport.protocol.connectionLost(why)
        if self.connector is not None:
            self.connector.lost(reason if side is self.client else other_reason)


@implementer(IListeningPort)
class _Port:
    def __init__(self, network: MemoryNetwork, factory: Any, address: IPv4Address) -> None:
        self.network, self.factory, self.address = network, factory, address

    def startListening(self) -> None:
        pass

    def stopListening(self) -> defer.Deferred[None]:
        if self.network._listeners.get((self.address.host, self.address.port)) is self:
            del self.network._listeners[(self.address.host, self.address.port)]
            self.factory.doStop()
        return defer.succeed(None)

    def getHost(self) -> IPv4Address:
        return self.address


@implementer(IConnector)
class _Connector:
    def __init__(self, network: MemoryNetwork, host: str, port: int, factory: Any) -> None:
        self.network, self.host, self.port, self.factory = network, host, port, factory
        self.connection: _Connection | None = None
        self.state = "connecting"

    def stopConnecting(self) -> None:
        if self.state == "connecting":
            self.state = "disconnected"
            self.network._pending.remove(self)
            self._failed(Failure(defer.CancelledError("connection attempt stopped")))

    def disconnect(self) -> None:
        if self.state == "connecting":
            self.stopConnecting()
        elif self.connection is not None:
            self.connection.client.loseConnection()

    def connect(self) -> None:
        self.state = "connecting"
        self.network._pending.append(self)

    def getDestination(self) -> IPv4Address:
        return IPv4Address("TCP", self.host, self.port)

    def _failed(self, reason: Failure) -> None:
        self.state = "disconnected"
        if isinstance(self.factory, ClientFactory):
            self.factory.clientConnectionFailed(self, reason)
        self.factory.doStop()

    def lost(self, reason: Failure) -> None:
        self.state = "disconnected"
        self.connection = None
        if isinstance(self.factory, ClientFactory):
            self.factory.clientConnectionLost(self, reason)
        self.factory.doStop()


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class _LiteralResolver:
    """Resolves IPv4 literals and ``localhost`` (to 127.0.0.1); every other name has no address."""

    def resolveHostName(self, receiver: IResolutionReceiver, hostName: str, portNumber: int = 0,
                        addressTypes: Any = None, transportSemantics: str = "TCP") -> IHostResolution:
        resolution = _Resolution(hostName)
        receiver.resolutionBegan(resolution)
        host = "127.0.0.1" if hostName == "localhost" else hostName
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            pass
        else:
            receiver.addressResolved(IPv4Address("TCP", host, portNumber))
        receiver.resolutionComplete()
        return resolution


class MemoryNetwork(MemoryReactorClock):
    """A reactor whose TCP stays in memory and whose time moves only when told (see the module)."""

    def __init__(self, start_s: float = START_S) -> None:
        MemoryReactorClock.__init__(self)
        self.nameResolver = _LiteralResolver()
        self._listeners: dict[tuple[str, int], _Port] = {}
        self._pending: list[_Connector] = []
        self._connections: list[_Connection] = []
        self._ports = itertools.count(40000)
        self._client_ports = itertools.count(50000)
        MemoryReactorClock.advance(self, start_s)

    # -- IReactorTCP ---------------------------------------------------------------------------

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> _Port:
        host = interface or "127.0.0.1"
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        if port == 0:
            port = next(p for p in self._ports if (host, p) not in self._listeners)
        if (host, port) in self._listeners:
            raise CannotListenError(host, port, OSError("address already in use (in memory)"))
        listening = _Port(self, factory, IPv4Address("TCP", host, port))
        self._listeners[(host, port)] = listening
        factory.doStart()
        return listening

    def connectTCP(self, host: str, port: int, factory: Any, timeout: float = 30,
                   bindAddress: Any = None) -> _Connector:
        connector = _Connector(self, host, port, factory)
        factory.doStart()
        if isinstance(factory, ClientFactory):
            factory.startedConnecting(connector)
        connector.connect()
        return connector

    def connect(self, port: _Port | IPv4Address, client: Any) -> tuple[Any, MemoryTransport]:
        """Join protocol ``client`` to ``port``'s factory now; return the server protocol and the client's
        transport (for tests that hold a protocol rather than a factory, as ``connectProtocol`` would)."""
        address = port.address if isinstance(port, _Port) else port
        listening = self._listeners[(address.host, address.port)]
        connection = self._join(listening, client, None)
        return connection.server.protocol, connection.client

    def _join(self, listening: _Port, client: Any, connector: _Connector | None) -> _Connection:
        client_address = IPv4Address("TCP", "127.0.0.1", next(self._client_ports))
        server = listening.factory.buildProtocol(client_address)
        connection = _Connection(self, client, server, client_address, listening.address, connector)
        if server is None:  # the factory refused the connection
            connection.server.protocol = _Refused()
            connection.server.loseConnection()
        else:
            server.makeConnection(connection.server)
        client.makeConnection(connection.client)
        self._connections.append(connection)
        return connection

    def _complete(self, connector: _Connector) -> None:
        listening = self._listeners.get((connector.host, connector.port))
        if listening is None:
            connector._failed(Failure(ConnectionRefusedError(f"nothing listens on {connector.host}:{connector.port}")))
            return
        client = connector.factory.buildProtocol(IPv4Address("TCP", connector.host, connector.port))
        if client is None:
            connector._failed(Failure(ConnectionAborted("the client factory built no protocol")))
            return
        connector.state = "connected"
        connector.connection = self._join(listening, client, connector)

    # -- moving things -------------------------------------------------------------------------

    def _round(self) -> bool:
        busy = False
        while self._pending:
            self._complete(self._pending.pop(0))
            busy = True
        for connection in list(self._connections):
            busy = connection.pump() or busy
        self._connections = [c for c in self._connections if not c.closed]
        if any(call.getTime() <= self.seconds() for call in self.getDelayedCalls()):
            MemoryReactorClock.advance(self, 0)
            busy = True
        return busy

    def flush(self) -> None:
        """Deliver bytes, complete connections and run due timers until nothing is left to do."""
        for _ in range(MAX_ROUNDS):
            if not self._round():
                return
        raise RuntimeError(f"the network was still busy after {MAX_ROUNDS} rounds: something loops")

    def advance(self, amount: float) -> None:
        """Move the clock ``amount`` seconds, stopping at each timer on the way to run it and flush."""
        target = self.seconds() + amount
        self.flush()
        while True:
            due = [c.getTime() for c in self.getDelayedCalls() if c.getTime() <= target]
            step = min(due) if due else target
            MemoryReactorClock.advance(self, max(0.0, step - self.seconds()))
            self.flush()
            if not due:
                return

    def result(self, d: defer.Deferred[T] | Any, within: float = 0.0) -> T:
        """Flush until ``d`` (a Deferred or a coroutine) fires; its result, or its failure raised.

        With ``within`` the clock may move that many seconds, timer by timer, for it to fire.
        Raises ``NotFired`` when nothing is left to do and ``d`` has not fired.
        """
        if not isinstance(d, defer.Deferred):
            d = defer.ensureDeferred(d)
        results: list[Any] = []
        d.addBoth(results.append)
        deadline = self.seconds() + within
        self.flush()
        while not results:
            later = [c.getTime() for c in self.getDelayedCalls() if c.getTime() <= deadline]
            if not later:
                upcoming = sorted(c.getTime() - self.seconds() for c in self.getDelayedCalls())
                hint = f"; the next timer is {upcoming[0]:g} s away" if upcoming else ""
                raise NotFired(f"{d!r} has not fired and nothing is left to deliver{hint}")
            self.advance(min(later) - self.seconds())
        result = results[0]
        if isinstance(result, Failure):
            result.raiseException()
        value: T = result
        return value

    @property
    def connections(self) -> int:
        """Connections open now."""
        return sum(not c.closed for c in self._connections)

    def listening(self) -> list[IPv4Address]:
        """Addresses something listens on."""
        return [port.address for port in self._listeners.values()]


class _Refused:
    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        pass


__all__ = ["HIGH_WATER", "START_S", "MemoryNetwork", "MemoryTransport", "NotFired"]
