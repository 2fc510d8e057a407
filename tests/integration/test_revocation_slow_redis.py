"""Revocation is final while Redis is slow (PROTOCOL.md section 8), end to end.

A whole gateway with Redis stores reached through a TCP proxy the test controls: while the
proxy holds Redis' replies, a SubscribeEvents call is stuck in its replay/budget round trips,
past its session lookup and before its hub registration. The backend revokes the session (or
every session of the user) and its SessionInvalidation reaches the gateway over the real push
stream; only then are Redis' replies let through. The stream must end FAILED_PRECONDITION
without a single message, and events published afterwards must not reach it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import endpoints, protocol, reactor

from gatewayd.client import GatewayClient
from gatewayd.client.wire import make_transport
from gatewayd.rpc.codes import Code
from gatewayd.testing.client import Closer, RunningGateway, new_email, start_gateway
from gatewayd.testing.events import (
    RawStream,
    check_note,
    published_keys,
    same_user_sessions,
    subscribe_request,
)
from gatewayd.testing.redis import RedisServer
from gatewayd.testing.wait import WAIT_S, until

# Longer than the whole test: a held reply must not time out and fail the call UNAVAILABLE.
STORE_TIMEOUT_S = 30.0


class _Upstream(protocol.Protocol):
    def __init__(self, downstream: _Downstream) -> None:
        self.downstream = downstream

    def connectionMade(self) -> None:
        self.downstream.upstream_ready(self)

    def dataReceived(self, data: bytes) -> None:
        self.downstream.from_redis(data)

    def connectionLost(self, reason: Any = None) -> None:
        if self.downstream.transport is not None:
            self.downstream.transport.loseConnection()


class _Downstream(protocol.Protocol):
    """One client connection: requests go to Redis at once, replies wait while the proxy holds."""

    def __init__(self, proxy: GateProxy) -> None:
        self.proxy = proxy
        self.upstream: _Upstream | None = None
        self.to_redis = b""
        self.held = b""

    def connectionMade(self) -> None:
        assert self.transport is not None
        self.transport.pauseProducing()  # until Redis is connected
        self.proxy.connections.append(self)
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.proxy.redis_port)
        endpoints.connectProtocol(endpoint, _Upstream(self)).addErrback(
            lambda _: self.transport.loseConnection())  # type: ignore[union-attr]

    def upstream_ready(self, upstream: _Upstream) -> None:
        self.upstream = upstream
        assert self.transport is not None
        self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        assert self.upstream is not None and self.upstream.transport is not None
        self.proxy.bytes_to_redis += len(data)
        self.upstream.transport.write(data)

    def from_redis(self, data: bytes) -> None:
        if self.proxy.holding:
            self.held += data
        elif self.transport is not None:
            self.transport.write(data)

    def flush(self) -> None:
        held, self.held = self.held, b""
        if held and self.transport is not None:
            self.transport.write(held)

    def connectionLost(self, reason: Any = None) -> None:
        if self in self.proxy.connections:
            self.proxy.connections.remove(self)
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.loseConnection()


class GateProxy(protocol.Factory):
    """A TCP proxy in front of Redis whose replies can be held (``hold``) and let go (``release``)."""

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.holding = False
        self.bytes_to_redis = 0
        self.connections: list[_Downstream] = []
        self.port: Any = None

    def buildProtocol(self, addr: Any) -> _Downstream:
        return _Downstream(self)

    async def listen(self) -> None:
        self.port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(self)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port.getHost().port}/0"

    @property
    def held_bytes(self) -> int:
        return sum(len(c.held) for c in self.connections)

    def hold(self) -> None:
        self.holding = True

    def release(self) -> None:
        self.holding = False
        for conn in list(self.connections):
            conn.flush()

    async def close(self) -> None:
        self.release()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.loseConnection()
        await self.port.stopListening()


@pytest_twisted.async_yield_fixture
async def slow_redis(redis_server: RedisServer) -> AsyncIterator[GateProxy]:
    proxy = GateProxy(redis_server.port)
    await proxy.listen()
    try:
        yield proxy
    finally:
        await proxy.close()


@pytest_twisted.async_yield_fixture
async def gateway(tmp_path: Any, slow_redis: GateProxy) -> AsyncIterator[RunningGateway]:
    gw = await start_gateway(str(tmp_path / "state"), stores={
        "kind": "redis", "redis_url": slow_redis.url, "key_prefix": "race:", "timeout_s": STORE_TIMEOUT_S})
    try:
        await gw.push_connected()
        await until(gw.gateway.stores.ping, "Redis (through the proxy) to answer PING")
        yield gw
    finally:
        await gw.stop()


@pytest.mark.parametrize("scope", ["session", "user"])
@pytest_twisted.ensureDeferred
async def test_an_invalidation_during_the_redis_round_trips_ends_the_stream_failed_precondition(
        gateway: RunningGateway, slow_redis: GateProxy, closer: Closer, scope: str) -> None:
    keys = await published_keys(gateway.url)
    victim, other = await same_user_sessions(gateway, new_email("race"))
    user_id = victim[1].user_id
    hub, dispatcher = gateway.gateway.hub, gateway.gateway.dispatcher
    transport = closer(make_transport("grpc", reactor, gateway.url))
    # The other session's stream, open before Redis slows down: it shows events keep flowing.
    witness = RawStream(transport, subscribe_request(other))
    await witness.wait_messages(1)
    assert len(hub) == 1

    slow_redis.hold()
    sent = slow_redis.bytes_to_redis
    stream = RawStream(transport, subscribe_request(victim))
    # Its session lookup is done and its replay/budget commands reached Redis; the replies are held.
    await until(lambda: slow_redis.bytes_to_redis > sent and slow_redis.held_bytes > 0,
                "the subscription's Redis commands and replies")
    assert hub.revocations.outstanding == 1 and len(hub) == 1

    invalidations = dispatcher.invalidations
    revoked = gateway.backend.revoke_sessions(user_id, victim[1].device_session_id if scope == "session" else None)
    assert revoked == (1 if scope == "session" else 2)
    await until(lambda: dispatcher.invalidations > invalidations, "the SessionInvalidation to reach the gateway")
    assert not stream.ended and not stream.messages

    slow_redis.release()
    await stream.wait_end()
    assert stream.status() == Code.FAILED_PRECONDITION, stream.outcome
    assert stream.messages == []
    assert len(hub.revocations) == 0 and hub.revocations.outstanding == 0

    if scope == "user":
        # Every session of the user went: the witness ended too, and nothing is left in the hub.
        await witness.wait_end()
        assert witness.status() == Code.FAILED_PRECONDITION
        assert len(hub) == 0
        return
    # The other session still works: its note reaches its own stream, never the refused one.
    actor = closer(GatewayClient(gateway.url, "connect", key=other[0], session=other[1], timeout_s=WAIT_S))
    created = await actor.execute("user.notes.create", {"text": "after the revocation"})
    assert created.ok, created
    await witness.wait_messages(2)
    check_note(witness.messages[1], keys, created.json())
    assert stream.messages == [] and len(hub) == 1
    witness.cancel()
