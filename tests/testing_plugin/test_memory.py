"""MemoryNetwork: TCP's promises in memory, time that moves only when told, and real servers on it."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from gatewayd._proto.gateway.v1 import gateway_pb2
from gatewayd.rpc.framing import encode_frame
from gatewayd.testing.harness import ECHO, TestMethods, echo_request
from gatewayd.testing.memory import HIGH_WATER, START_S, MemoryNetwork, NotFired
from gatewayd.testing.raw_h2 import RawH2Client
from gatewayd.testing.server import serve


class Recorder(Protocol):
    """Records what arrives and how the connection ended; can echo."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.received = b""
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self.echo:
            assert self.transport is not None
            self.transport.write(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = reason


class Servers:
    """A listening factory that keeps every server protocol it built."""

    def __init__(self, network: MemoryNetwork, echo: bool = False) -> None:
        self.built: list[Recorder] = []

        def build() -> Recorder:
            protocol = Recorder(echo)
            self.built.append(protocol)
            return protocol

        self.port = network.listenTCP(0, Factory.forProtocol(build), interface="127.0.0.1")


def connect(network: MemoryNetwork, port: Any, client: Protocol) -> Protocol:
    d = connectProtocol(TCP4ClientEndpoint(network, "127.0.0.1", port.getHost().port), client)
    connected: Protocol = network.result(d)
    return connected


def test_bytes_arrive_in_order_only_when_the_network_is_flushed() -> None:
    network = MemoryNetwork()
    servers = Servers(network, echo=True)
    client = connect(network, servers.port, Recorder())
    assert isinstance(client, Recorder) and client.transport is not None
    client.transport.write(b"one ")
    client.transport.write(b"two")
    assert servers.built[0].received == b""
    network.flush()
    assert servers.built[0].received == b"one two"
    assert client.received == b"one two"
    peer, host = client.transport.getPeer(), client.transport.getHost()
    assert (peer.host, peer.port) == ("127.0.0.1", servers.port.getHost().port)
    assert host == servers.built[0].transport.getPeer()  # type: ignore[union-attr]


def test_lose_connection_delivers_first_and_abort_drops() -> None:
    network = MemoryNetwork()
    servers = Servers(network)
    polite = connect(network, servers.port, Recorder())
    assert isinstance(polite, Recorder) and polite.transport is not None
    polite.transport.write(b"last words")
    polite.transport.loseConnection()
    network.flush()
    assert servers.built[0].received == b"last words"
    assert servers.built[0].lost is not None and servers.built[0].lost.check(ConnectionDone)
    assert polite.lost is not None and polite.lost.check(ConnectionDone)

    rude = connect(network, servers.port, Recorder())
    assert isinstance(rude, Recorder) and rude.transport is not None
    rude.transport.write(b"never read")
    rude.transport.abortConnection()  # type: ignore[attr-defined]
    network.flush()
    assert servers.built[1].received == b""
    assert rude.lost is not None and rude.lost.check(ConnectionAborted)
    assert servers.built[1].lost is not None and servers.built[1].lost.check(ConnectionLost)
    assert network.connections == 0


def test_nothing_listening_is_connection_refused() -> None:
    network = MemoryNetwork()
    d = connectProtocol(TCP4ClientEndpoint(network, "127.0.0.1", 9), Recorder())
    with pytest.raises(ConnectionRefusedError):
        network.result(d)


def test_a_reader_that_paused_receives_nothing_and_the_writer_is_paused_past_high_water() -> None:
    network = MemoryNetwork()
    servers = Servers(network)
    client = connect(network, servers.port, Recorder())
    network.flush()
    server = servers.built[0]
    assert server.transport is not None and client.transport is not None
    server.transport.pauseProducing()  # type: ignore[attr-defined]

    @implementer(IPushProducer)
    class Producer:
        paused = 0
        resumed = 0

        def pauseProducing(self) -> None:
            self.paused += 1

        def resumeProducing(self) -> None:
            self.resumed += 1

        def stopProducing(self) -> None:
            pass

    producer = Producer()
    client.transport.registerProducer(producer, True)  # type: ignore[attr-defined]
    client.transport.write(b"x" * HIGH_WATER)
    network.flush()
    assert server.received == b"" and producer.paused == 0
    client.transport.write(b"y")
    assert producer.paused == 1
    server.transport.resumeProducing()  # type: ignore[attr-defined]
    network.flush()
    assert len(server.received) == HIGH_WATER + 1
    assert producer.resumed == 1


def test_advance_runs_timers_in_order_and_delivers_what_each_wrote() -> None:
    network = MemoryNetwork()
    assert network.seconds() == START_S
    servers = Servers(network)
    client = connect(network, servers.port, Recorder())
    assert client.transport is not None
    seen: list[tuple[float, bytes]] = []
    transport = client.transport

    def tick(label: bytes) -> None:
        transport.write(label)
        seen.append((network.seconds() - START_S, servers.built[0].received))

    network.callLater(2, tick, b"b")
    network.callLater(1, tick, b"a")
    network.advance(1.5)
    assert seen == [(1.0, b"")]
    assert servers.built[0].received == b"a"  # delivered before the clock moved on
    network.advance(1.0)
    assert seen == [(1.0, b""), (2.0, b"a")]
    assert network.seconds() == START_S + 2.5


def test_result_moves_the_clock_only_within_its_bound() -> None:
    network = MemoryNetwork()
    with pytest.raises(NotFired, match="next timer is 3 s away"):
        network.result(task.deferLater(network, 3, lambda: "late"))
    assert network.result(task.deferLater(network, 3, lambda: "late"), within=5) == "late"
    with pytest.raises(ZeroDivisionError):
        network.result(defer.maybeDeferred(lambda: 1 / 0))


def test_a_method_table_served_on_the_network_answers_a_raw_h2_client() -> None:
    """The grpclib ChannelFor shape: a real server and a real client, joined in memory."""
    network = MemoryNetwork()
    server = network.result(serve(TestMethods().methods(), reactor=network))
    client = RawH2Client(reactor=network)
    network.result(connectProtocol(TCP4ClientEndpoint(network, "127.0.0.1", server.port), client))
    response = network.result(defer.ensureDeferred(client.call(ECHO, encode_frame(echo_request(b"ping")))))
    assert response.grpc_status() == 0
    [(_, payload)] = response.messages()
    assert gateway_pb2.ExecuteCommandResponse.FromString(payload).payload_bytes == b"ping"
    network.result(server.stop())
    network.flush()
    assert client.closed and network.connections == 0
