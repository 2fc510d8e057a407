"""``gatewayd.testing.tcp_proxy.FaultProxy`` in front of a real echo server: forward, delay, cut, restore."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import endpoints, protocol, reactor

from gatewayd.testing.tcp_proxy import FaultProxy
from gatewayd.testing.wait import until


class Echo(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class Recorder(protocol.Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


async def connect(port: int) -> Recorder:
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    recorder: Recorder = await endpoints.connectProtocol(endpoint, Recorder())
    return recorder


@pytest_twisted.ensureDeferred
async def test_forwards_in_order_with_delay_cuts_and_restores() -> None:
    server = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        protocol.Factory.forProtocol(Echo))
    proxy = FaultProxy(reactor, server.getHost().port)
    await proxy.listen()
    try:
        client = await connect(proxy.port)
        client.transport.write(b"hello ")  # type: ignore[union-attr]
        await until(lambda: client.received == b"hello ", "the echo through the proxy")

        # Latency each way, order kept across chunks written in different turns.
        proxy.delay_s = 0.05
        started = reactor.seconds()
        for chunk in (b"1", b"2", b"3"):
            client.transport.write(chunk)  # type: ignore[union-attr]
        took = await until(lambda: client.received == b"hello 123", lambda: f"got {client.received!r}")
        assert reactor.seconds() - started >= 0.1 and took >= 0.1  # at least one delay each way
        proxy.delay_s = 0.0

        # Cut: the open connection is dropped, new ones are accepted and dropped without a byte.
        assert proxy.cut() == 1
        await until(lambda: client.lost, "the proxied connection to be cut")
        refused = await connect(proxy.port)
        refused.transport.write(b"anyone?")  # type: ignore[union-attr]
        await until(lambda: refused.lost, "a connection during the cut to be dropped")
        assert refused.received == b"" and proxy.refused == 1

        proxy.restore()
        again = await connect(proxy.port)
        again.transport.write(b"back")  # type: ignore[union-attr]
        await until(lambda: again.received == b"back", "the echo after the restore")
        assert len(proxy.pairs) == 1
    finally:
        await proxy.close()
        await server.stopListening()
    await until(lambda: again.lost, "close() to drop every connection")
