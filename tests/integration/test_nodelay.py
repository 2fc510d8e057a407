"""Accepted connections have TCP_NODELAY set (replies never wait for a delayed ACK)."""

from __future__ import annotations

import socket

import pytest_twisted
from twisted.internet import protocol, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from gatewayd.health import HealthService
from gatewayd.testing.server import serve
from gatewayd.testing.wait import until


@pytest_twisted.ensureDeferred
async def test_accepted_connections_have_tcp_nodelay() -> None:
    server = await serve(HealthService([""]).methods())
    client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", server.port), protocol.Protocol())
    try:
        await until(lambda: bool(server.factory.connections), "the server to accept")
        (accepted,) = server.factory.connections
        handle = accepted.transport.getHandle()
        assert handle.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        client.transport.loseConnection()
        await server.stop()
