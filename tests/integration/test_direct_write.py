"""``write_now`` over real loopback sockets: straight to the socket when nothing is queued,
and the same bytes in the same order as ``transport.write`` when the socket cannot take them."""

from __future__ import annotations

import socket
from typing import Any

import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport

from gatewayd.transport.direct_write import direct_socket, write_now


class _Accepted(Protocol):
    def __init__(self, made: defer.Deferred[Any]) -> None:
        self._made = made

    def connectionMade(self) -> None:
        self._made.callback(self)


@defer.inlineCallbacks
def _accepted_pair() -> Any:
    """A server-side Twisted protocol and the blocking client socket connected to it."""
    made: defer.Deferred[Any] = defer.Deferred()
    factory = Factory.forProtocol(lambda: _Accepted(made))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    client = socket.create_connection(("127.0.0.1", port.getHost().port))
    server = yield made
    return port, server, client


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        assert chunk, "connection closed early"
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


@pytest_twisted.inlineCallbacks
def test_idle_connection_sends_without_a_reactor_turn() -> Any:
    port, server, client = yield _accepted_pair()
    try:
        sock = direct_socket(server.transport)
        assert sock is not None
        write_now(server.transport, sock, b"hello")
        # No reactor turn has run since the write: only a direct send can have delivered it.
        client.settimeout(5)
        assert _recv_exactly(client, 5) == b"hello"
        assert not server.transport._tempDataBuffer and not server.transport.dataBuffer
    finally:
        client.close()
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_what_the_socket_does_not_take_is_queued_in_order() -> Any:
    port, server, client = yield _accepted_pair()
    try:
        transport = server.transport
        sock = direct_socket(transport)
        # Far more than the kernel's buffers take at once: the rest queues in Twisted, and every
        # later write must queue behind it rather than jump ahead on the socket.
        pieces = [bytes([i]) * (1 << 20) for i in range(1, 9)]
        for piece in pieces:
            write_now(transport, sock, piece)
        assert transport._tempDataBuffer or transport.dataBuffer
        expected = b"".join(pieces)
        client.setblocking(False)
        received = bytearray()
        while len(received) < len(expected):
            try:
                received += client.recv(1 << 20)
            except BlockingIOError:
                yield _turn()  # let the reactor write what Twisted queued
        assert bytes(received) == expected
    finally:
        client.close()
        yield port.stopListening()


def _turn() -> defer.Deferred[None]:
    d: defer.Deferred[None] = defer.Deferred()
    reactor.callLater(0.001, d.callback, None)  # type: ignore[attr-defined]
    return d


@pytest_twisted.inlineCallbacks
def test_a_closing_transport_gets_the_bytes_through_write() -> Any:
    port, server, client = yield _accepted_pair()
    try:
        transport = server.transport
        transport.loseConnection()
        write_now(transport, direct_socket(transport), b"late")
        # Twisted's own rule for a write after loseConnection decides: queued, not sent directly.
        assert b"late" in b"".join(transport._tempDataBuffer) + transport.dataBuffer
    finally:
        client.close()
        yield port.stopListening()


def test_a_transport_without_a_socket_takes_write() -> None:
    transport = StringTransport()
    assert direct_socket(transport) is None
    write_now(transport, None, b"abc")
    assert transport.value() == b"abc"
