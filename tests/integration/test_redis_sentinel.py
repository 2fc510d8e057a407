"""Redis behind Sentinel: real redis-server processes (a primary, a replica) and real sentinels.

Killing the primary under load: calls fail closed (UNAVAILABLE) during the
failover and succeed again on the promoted replica, with no gateway restart.
The stores ask the sentinels before every connection, verify ROLE, and drop
a connection whose server became a replica (READONLY).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor

from gatewayd.client import GatewayClient, RpcCallError
from gatewayd.config import Budget, StoresConfig
from gatewayd.rpc.codes import Code
from gatewayd.stores import StoreUnavailable
from gatewayd.stores.redis import RedisStores
from gatewayd.testing.client import login, new_email, signed_execute_request, start_gateway
from gatewayd.testing.redis import RedisServer, free_port, ready
from gatewayd.testing.redis_ha import READY_TIMEOUT_S, SentinelCluster, command, info, wait_for
from gatewayd.testing.wait import until
from tests.support import record_connections

TIMEOUT_S = 0.5


@pytest.fixture
def cluster() -> Iterator[SentinelCluster]:
    with SentinelCluster() as c:
        yield c


def sentinel_stores(sentinels: list[str], prefix: str = "ha:", **extra: Any) -> RedisStores:
    config = StoresConfig(kind="redis", redis_url="redis:///0", key_prefix=prefix, timeout_s=TIMEOUT_S,
                          redis_sentinels=tuple(sentinels), **extra)
    return RedisStores.from_config(config, reactor)


def role(port: int) -> str:
    return str(command(port, "ROLE")[0])


@pytest_twisted.ensureDeferred
async def test_sentinels_are_asked_in_order_and_the_one_that_answers_goes_first(cluster: SentinelCluster) -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: skipped
    stores = sentinel_stores([dead, *cluster.sentinel_addresses()])
    try:
        await ready(stores)
        assert await stores.replay.reserve("k", 30.0) is True
        assert command(cluster.primary.port, "EXISTS", "ha:replay:k") == 1
        endpoint = stores.pool._factory.endpoint
        assert endpoint.sentinels[0] == ("127.0.0.1", cluster.sentinels[0].port)
        assert ("127.0.0.1", int(dead.rsplit(":", 1)[1])) in endpoint.sentinels[1:]
    finally:
        await stores.close()


@pytest_twisted.ensureDeferred
async def test_no_sentinel_answering_is_unavailable_at_once() -> None:
    stores = sentinel_stores([f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"])
    try:
        start = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await stores.replay.reserve("k", 30.0)
        with pytest.raises(StoreUnavailable):
            await stores.rate.consume("k", Budget(rate=1.0, burst=1))
        assert time.monotonic() - start < 1.0
        assert await stores.ping() is False
    finally:
        await stores.close()


@pytest_twisted.ensureDeferred
async def test_killing_the_primary_fails_closed_then_the_promoted_replica_serves(
    cluster: SentinelCluster,
) -> None:
    assert cluster.replica is not None
    stores = sentinel_stores(cluster.sentinel_addresses())
    budget = Budget(rate=0.001, burst=3)
    try:
        await ready(stores)
        assert await stores.replay.reserve("before", 60.0) is True
        assert (await stores.rate.consume("spent", budget)).allowed
        # Replication is asynchronous: make sure the replica has both keys before the primary dies.
        await until(cluster.replica_in_sync, "the replica to catch up")

        cluster.primary.stop()
        with pytest.raises(StoreUnavailable):
            await stores.replay.reserve("during", 60.0)

        async def served() -> bool:
            try:
                return await stores.replay.reserve("after", 60.0) is True
            except StoreUnavailable:
                return False

        await until(served, "the stores to be served by the promoted replica", timeout=READY_TIMEOUT_S,
                    interval=0.05)
        assert role(cluster.replica.port) == "master"
        # What the old primary held (replicated before it died) still holds.
        assert await stores.replay.reserve("before", 60.0) is False
        decisions = [await stores.rate.consume("spent", budget) for _ in range(3)]
        assert [d.allowed for d in decisions] == [True, True, False]
    finally:
        await stores.close()


# --- a fake sentinel: to make it name a replica, which real sentinels would not do on purpose ----------


class _FakeSentinel(protocol.Protocol):
    """Answers every command with the address its factory holds (RESP array of two bulk strings)."""

    def dataReceived(self, data: bytes) -> None:
        host, port = self.factory.address  # type: ignore[attr-defined]
        self.factory.asked += 1  # type: ignore[attr-defined]
        p = str(port)
        self.transport.write(f"*2\r\n${len(host)}\r\n{host}\r\n${len(p)}\r\n{p}\r\n".encode())  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_a_server_that_is_not_the_primary_is_never_used() -> None:
    with RedisServer() as primary, RedisServer(extra_args=["--replicaof", "127.0.0.1", "0"]) as other:
        # ``other`` is a replica (of nothing reachable): ROLE says "slave".
        assert role(other.port) == "slave"
        factory = protocol.Factory.forProtocol(_FakeSentinel)
        factory.address = ("127.0.0.1", other.port)  # type: ignore[attr-defined]
        factory.asked = 0  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        stores = sentinel_stores([f"127.0.0.1:{port.getHost().port}"])
        try:
            # Connections to the replica are made, asked ROLE, and dropped; each new one asks again.
            await until(lambda: factory.asked >= 3, "three connection attempts", timeout=10.0)  # type: ignore[attr-defined]
            assert int(command(other.port, "INFO", "stats").split("total_connections_received:")[1].split()[0]) >= 3
            with pytest.raises(StoreUnavailable):
                await stores.replay.reserve("k", 30.0)
            assert command(other.port, "DBSIZE") == 0

            factory.address = ("127.0.0.1", primary.port)  # type: ignore[attr-defined]
            await until(stores.ping, "the stores to reach the primary", timeout=10.0)
            assert await stores.replay.reserve("k", 30.0) is True
            assert command(primary.port, "EXISTS", "ha:replay:k") == 1
        finally:
            await stores.close()
            await port.stopListening()


def other_clients(port: int) -> int:
    """Clients connected to the server on ``port``, besides the one asking."""
    return int(info(port, "clients")["connected_clients"]) - 1


@pytest_twisted.ensureDeferred
async def test_a_new_primary_named_by_the_sentinels_takes_every_connection() -> None:
    with RedisServer() as old, RedisServer() as new:
        factory = protocol.Factory.forProtocol(_FakeSentinel)
        factory.address = ("127.0.0.1", old.port)  # type: ignore[attr-defined]
        factory.asked = 0  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        stores = sentinel_stores([f"127.0.0.1:{port.getHost().port}"])  # two connections
        try:
            await until(lambda: other_clients(old.port) == 2, "both connections on the old primary")
            factory.address = ("127.0.0.1", new.port)  # type: ignore[attr-defined]
            # One connection is lost; reconnecting, it hears of the new primary, and the other one,
            # still open to the old primary, is closed and follows.
            victim = next(line.split("id=")[1].split()[0] for line in command(old.port, "CLIENT", "LIST").splitlines()
                          if "cmd=client" not in line)
            command(old.port, "CLIENT", "KILL", "ID", victim)
            await until(lambda: other_clients(old.port) == 0 and other_clients(new.port) == 2,
                        lambda: f"connections: old {other_clients(old.port)}, new {other_clients(new.port)}")
            assert await stores.replay.reserve("k", 30.0) is True
            assert command(new.port, "DBSIZE") == 1
        finally:
            await stores.close()
            await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_a_connection_to_a_server_made_replica_is_dropped() -> None:
    with RedisServer() as server, RedisServer() as other:
        stores = RedisStores.from_config(
            StoresConfig(kind="redis", redis_url=server.url, key_prefix="ro:", timeout_s=TIMEOUT_S), reactor,
            pool_size=1,
        )
        built = record_connections(stores.pool._factory)
        try:
            await ready(stores)
            connections = len(built)
            command(server.port, "REPLICAOF", "127.0.0.1", other.port)
            with pytest.raises(StoreUnavailable, match="READONLY"):
                await stores.replay.reserve("k", 30.0)
            with pytest.raises(StoreUnavailable):
                await stores.rate.consume("k", Budget(rate=1.0, burst=1))
            # The READONLY answer dropped the connection: a new one is made.
            await until(lambda: len(built) > connections, "a new connection after READONLY")
            command(server.port, "REPLICAOF", "NO", "ONE")

            async def writable() -> bool:
                try:
                    return await stores.replay.reserve("k2", 30.0) is True
                except StoreUnavailable:
                    return False

            await until(writable, "writes to succeed once the server is a primary again")
        finally:
            await stores.close()


# --- a whole gateway under load ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_gateway_fails_closed_during_failover_and_recovers_without_restart(
    tmp_path: Any, cluster: SentinelCluster
) -> None:
    assert cluster.replica is not None
    gw = await start_gateway(
        str(tmp_path / "state"),
        stores={"kind": "redis", "redis_url": "redis:///0", "key_prefix": "failover:", "timeout_s": TIMEOUT_S,
                "redis_sentinels": tuple(cluster.sentinel_addresses())},
    )
    clients: list[GatewayClient] = []
    outcomes: list[tuple[float, str]] = []  # (time, "ok" or the code name), in completion order
    stop = False
    try:
        await until(gw.gateway.stores.ping, "the gateway's Redis connection", timeout=10.0)
        key, session = await login(gw.url, new_email("failover"))
        replayed = signed_execute_request(key, session.device_session_id, "user.profile.get")
        first = GatewayClient(gw.url, "connect", key=key, session=session, timeout_s=10.0)
        clients.append(first)
        assert (await first.send(replayed)).ok
        await until(cluster.replica_in_sync, "the replica to catch up")  # it has the reservation

        async def worker(protocol_name: str) -> None:
            client = GatewayClient(gw.url, protocol_name, key=key, session=session, timeout_s=10.0)
            clients.append(client)
            while not stop:
                try:
                    response = await client.execute("user.profile.get", None)
                    outcomes.append((time.monotonic(), "ok" if response.ok else response.result_code))
                except RpcCallError as e:
                    outcomes.append((time.monotonic(), Code(e.code).name))

        workers = [defer.ensureDeferred(worker(p)) for p in ("grpc", "connect", "grpc-web", "connect")]
        await until(lambda: len(outcomes) >= 40, "calls to flow before the failover", timeout=20.0)
        killed_at = time.monotonic()
        cluster.primary.stop()

        def recovered() -> bool:
            after = [o for t, o in outcomes if t > killed_at]
            return "UNAVAILABLE" in after and after[-40:] == ["ok"] * 40 and len(after) > 40

        await until(recovered, lambda: f"calls to succeed again after the failover: {outcomes[-10:]}",
                    timeout=READY_TIMEOUT_S, interval=0.05)
        stop = True
        await defer.gatherResults(workers)

        after = [o for t, o in outcomes if t > killed_at]
        assert set(after) == {"ok", "UNAVAILABLE"}, f"only OK or UNAVAILABLE during a failover, got {set(after)}"
        assert set(o for t, o in outcomes if t <= killed_at) == {"ok"}
        assert role(cluster.replica.port) == "master"
        # The reservation made on the old primary holds on the new one: the same request is a replay.
        with pytest.raises(RpcCallError) as again:
            await first.send(replayed)
        assert again.value.code == Code.ALREADY_EXISTS
    finally:
        stop = True
        for client in clients:
            await client.close()
        await gw.stop()


def test_cluster_fixture_bounds_its_own_wait() -> None:
    # wait_for must fail (not hang) when a condition never holds.
    with pytest.raises(AssertionError, match="never"):
        wait_for(lambda: False, "never", timeout=0.05)
