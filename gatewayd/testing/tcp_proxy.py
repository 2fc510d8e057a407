"""A loopback TCP proxy with switchable faults, for outage tests and the fault bench.

Put it between a client and a server (the gateway and its backend's push port,
the gateway and Redis) and switch, at any moment:

- ``cut()``: every proxied connection is aborted (both sides see a reset) and
  new ones are accepted and aborted at once, until ``restore()``;
- ``delay_s``: added one-way latency for every chunk, in both directions, in
  order (a slow network or a slow server, without touching either).

Promises: bytes are forwarded unchanged and in order; nothing is buffered
beyond what the two sockets hand over (each side's reading pauses while the
other side's socket pushes back); ``close()`` stops listening and aborts every
connection, so a test leaves nothing behind. Loopback only.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from twisted.internet import endpoints, protocol
from twisted.python.failure import Failure


class _Side(protocol.Protocol):
    """One TCP connection of a proxied pair; what it reads goes to the other side, delayed if asked."""

    transport: Any

    def __init__(self, proxy: FaultProxy, pair: _Pair, client_side: bool) -> None:
        self.proxy = proxy
        self.pair = pair
        self.client_side = client_side
        self.queue: deque[tuple[float, bytes]] = deque()
        self.timer: Any = None

    def connectionMade(self) -> None:
        if self.client_side:
            self.pair.client_connected()

    def dataReceived(self, data: bytes) -> None:
        delay = self.proxy.delay_s
        if delay <= 0 and not self.queue:
            self.pair.forward(self, data)
            return
        self.queue.append((self.proxy.reactor.seconds() + delay, data))
        if self.timer is None:
            self._schedule()

    def _schedule(self) -> None:
        due = self.queue[0][0]
        self.timer = self.proxy.reactor.callLater(max(0.0, due - self.proxy.reactor.seconds()), self._release)

    def _release(self) -> None:
        self.timer = None
        now = self.proxy.reactor.seconds()
        while self.queue and self.queue[0][0] <= now:
            self.pair.forward(self, self.queue.popleft()[1])
        if self.queue:
            self._schedule()

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        self.queue.clear()
        self.pair.side_lost(self)


class _Pair:
    """A client connection and its upstream connection."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.client: _Side | None = None
        self.server: _Side | None = None
        self.pending: list[bytes] = []  # client bytes read before the upstream connection is up
        self.closed = False

    def client_connected(self) -> None:
        client = self.client
        assert client is not None and client.transport is not None
        if self.closed:  # refused: the proxy is cut
            client.transport.abortConnection()
            return
        # No reading until the upstream connection can take the bytes.
        client.transport.pauseProducing()
        proxy = self.proxy
        assert proxy.target_port is not None
        endpoint = endpoints.TCP4ClientEndpoint(proxy.reactor, proxy.host, proxy.target_port, timeout=5)
        d = endpoints.connectProtocol(endpoint, _Side(proxy, self, client_side=False))
        d.addCallbacks(self.upstream_connected, lambda _: self.abort())

    def forward(self, source: _Side, data: bytes) -> None:
        if source.client_side:
            if self.server is None or self.server.transport is None:
                self.pending.append(data)
            else:
                self.server.transport.write(data)
        elif self.client is not None and self.client.transport is not None:
            self.client.transport.write(data)

    def upstream_connected(self, server: _Side) -> None:
        self.server = server
        if self.closed:
            server.transport.abortConnection()
            return
        assert self.client is not None and self.client.transport is not None
        # Each socket is the other's producer: a full socket pauses reading on the other side.
        server.transport.registerProducer(self.client.transport, True)
        self.client.transport.registerProducer(server.transport, True)
        self.client.transport.resumeProducing()
        for data in self.pending:
            server.transport.write(data)
        self.pending.clear()

    def side_lost(self, side: _Side) -> None:
        other = self.server if side is self.client else self.client
        if not self.closed:
            self.closed = True
            self.proxy.pairs.discard(self)
        if other is not None and other.transport is not None:
            other.transport.loseConnection()

    def abort(self) -> None:
        self.closed = True
        self.proxy.pairs.discard(self)
        for side in (self.client, self.server):
            if side is not None and side.transport is not None:
                side.transport.abortConnection()


class _ClientFactory(protocol.Factory):
    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        return self.proxy._accepted()


class FaultProxy:
    """Listens on a loopback port and forwards to ``127.0.0.1:target_port`` (settable later)."""

    def __init__(self, reactor: Any = None, target_port: int | None = None, host: str = "127.0.0.1") -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.host = host
        self.target_port = target_port
        self.delay_s = 0.0
        self.is_cut = target_port is None
        self.pairs: set[_Pair] = set()
        self.accepted = 0
        self.refused = 0
        self._port: Any = None  # IListeningPort

    @property
    def port(self) -> int:
        assert self._port is not None, "listen() first"
        host: Any = self._port.getHost()
        return int(host.port)

    async def listen(self, port: int = 0) -> int:
        """Start listening on ``127.0.0.1:port`` (0: a free one); returns the port."""
        endpoint = endpoints.TCP4ServerEndpoint(self.reactor, port, interface=self.host)
        self._port = await endpoint.listen(_ClientFactory(self))
        return self.port

    def cut(self) -> int:
        """Abort every proxied connection and refuse new ones until ``restore``; returns how many were cut."""
        self.is_cut = True
        pairs = list(self.pairs)
        for pair in pairs:
            pair.abort()
        return len(pairs)

    def restore(self, target_port: int | None = None) -> None:
        """Forward again (to ``target_port`` when given)."""
        if target_port is not None:
            self.target_port = target_port
        if self.target_port is None:
            raise ValueError("no target port")
        self.is_cut = False

    async def close(self) -> None:
        """Stop listening and abort every connection."""
        self.cut()
        if self._port is not None:
            await self._port.stopListening()
            self._port = None

    def _accepted(self) -> protocol.Protocol:
        pair = _Pair(self)
        client = _Side(self, pair, client_side=True)
        pair.client = client
        if self.is_cut or self.target_port is None:
            self.refused += 1
            pair.closed = True
        else:
            self.accepted += 1
            self.pairs.add(pair)
        return client

__all__ = ["FaultProxy"]
