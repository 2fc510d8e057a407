"""``rediss://``: the stores over TLS to a TLS-enabled redis-server that requires a client certificate.

The server's certificate is checked against the configured CA for the host
connected to (or ``redis_tls_server_name``); the client certificate is the
configured one. Anything that does not verify fails closed (StoreUnavailable);
files that cannot be used are configuration errors (tests/unit/test_redis_target.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from gatewayd.config import Budget, StoresConfig
from gatewayd.stores import StoreUnavailable
from gatewayd.stores.redis import RedisStores
from gatewayd.testing.certs import Issued, TestCA
from gatewayd.testing.redis import RedisServer, free_port, ready
from gatewayd.testing.redis_ha import SentinelServer, command, wait_for
from gatewayd.testing.wait import until

TIMEOUT_S = 0.5


@dataclass
class TlsRedis:
    server: RedisServer
    tls_port: int
    ca: TestCA
    client: Issued

    def url(self, host: str = "127.0.0.1") -> str:
        return f"rediss://{host}:{self.tls_port}/0"

    def refusals(self) -> list[str]:
        """The TLS connections the server refused, with its reasons, from its log."""
        log = (Path(self.server.folder) / "redis.log").read_text(errors="replace")
        return [line.split("Error accepting a client connection: ", 1)[1]
                for line in log.splitlines() if "Error accepting a client connection: " in line]


def tls_args(ca: TestCA, server: Issued, tls_port: int) -> list[str]:
    return [
        "--tls-port", str(tls_port),
        "--tls-cert-file", str(server.certificate),
        "--tls-key-file", str(server.private_key),
        "--tls-ca-cert-file", str(ca.certificate),
        "--tls-auth-clients", "yes",
    ]  # fmt: skip


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    ca = TestCA(tmp_path / "ca")
    server_cert = ca.issue("redis", dns=("localhost",), ips=("127.0.0.1",))
    client = ca.issue("gateway", dns=("gateway.test",), ips=())
    tls_port = free_port()
    with RedisServer(extra_args=tls_args(ca, server_cert, tls_port)) as server:
        yield TlsRedis(server, tls_port, ca, client)


def tls_stores(url: str, **tls: Any) -> RedisStores:
    config = StoresConfig(kind="redis", redis_url=url, key_prefix="tls:", timeout_s=TIMEOUT_S, **tls)
    return RedisStores.from_config(config, reactor)


def with_client_cert(t: TlsRedis, **more: Any) -> dict[str, Any]:
    return {
        "redis_tls_ca": str(t.ca.certificate),
        "redis_tls_certificate": str(t.client.certificate),
        "redis_tls_private_key": str(t.client.private_key),
        **more,
    }


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
@pytest_twisted.ensureDeferred
async def test_stores_over_tls_with_a_client_certificate(tls_redis: TlsRedis, host: str) -> None:
    stores = tls_stores(tls_redis.url(host), **with_client_cert(tls_redis))
    try:
        await ready(stores)
        assert await stores.replay.reserve("k", 30.0) is True
        assert await stores.replay.reserve("k", 30.0) is False
        assert (await stores.rate.consume("k", Budget(rate=1.0, burst=1))).allowed
        # The keys are on the server (read over its plain port, which the stores never used).
        assert command(tls_redis.server.port, "EXISTS", "tls:replay:k") == 1
        clients = command(tls_redis.server.port, "CLIENT", "LIST")
        assert clients.count(f"laddr=127.0.0.1:{tls_redis.tls_port}") >= 1
    finally:
        await stores.close()


async def refused(stores: RedisStores, t: TlsRedis, reason: str) -> None:
    """Connections are tried (the server refuses them for ``reason``) and never become usable; calls fail closed."""
    try:
        await until(lambda: sum(reason in r for r in t.refusals()) >= 2,
                    lambda: f"two TLS connections refused for {reason!r}: {t.refusals()[-3:]}")
        with pytest.raises(StoreUnavailable):
            await stores.replay.reserve("k", 30.0)
        assert await stores.ping() is False
        assert command(t.server.port, "DBSIZE") == 0
    finally:
        await stores.close()


@pytest_twisted.ensureDeferred
async def test_no_client_certificate_is_refused_by_the_server(tls_redis: TlsRedis) -> None:
    await refused(tls_stores(tls_redis.url(), redis_tls_ca=str(tls_redis.ca.certificate)), tls_redis,
                  "peer did not return a certificate")


@pytest_twisted.ensureDeferred
async def test_a_server_certificate_from_another_ca_is_refused(tls_redis: TlsRedis, tmp_path: Path) -> None:
    other = TestCA(tmp_path / "other", "another CA")
    await refused(tls_stores(tls_redis.url(), **with_client_cert(tls_redis, redis_tls_ca=str(other.certificate))),
                  tls_redis, "alert unknown ca")


@pytest_twisted.ensureDeferred
async def test_a_server_certificate_for_another_name_is_refused(tls_redis: TlsRedis) -> None:
    await refused(tls_stores(tls_redis.url(), **with_client_cert(tls_redis, redis_tls_server_name="redis.example")),
                  tls_redis, "Connection reset by peer")  # we hang up on it: the name does not match


@pytest_twisted.ensureDeferred
async def test_server_name_overrides_the_host_connected_to(tls_redis: TlsRedis) -> None:
    # Connecting by IP, checking the certificate for "localhost" (which it names).
    stores = tls_stores(tls_redis.url("127.0.0.1"), **with_client_cert(tls_redis, redis_tls_server_name="localhost"))
    try:
        await ready(stores)
        assert await stores.replay.reserve("k", 30.0) is True
    finally:
        await stores.close()


@pytest_twisted.ensureDeferred
async def test_sentinel_and_primary_both_over_tls(tmp_path: Path) -> None:
    """Sentinel mode with rediss://: the sentinel is asked over TLS, and the primary it names is reached over TLS."""
    ca = TestCA(tmp_path / "ca")
    server_cert = ca.issue("redis")
    client = ca.issue("gateway", dns=("gateway.test",), ips=())
    primary_tls = free_port()
    with RedisServer(extra_args=tls_args(ca, server_cert, primary_tls)) as primary:
        sentinel_tls = free_port()
        sentinel = SentinelServer(primary_tls)
        # The sentinel monitors the primary over TLS, with the same client certificate.
        sentinel.extra_args = [*tls_args(ca, server_cert, sentinel_tls), "--tls-replication", "yes"]
        try:
            sentinel.start()
            wait_for(lambda: sentinel.primary() == ("127.0.0.1", primary_tls), "the sentinel to name the primary")
            stores = tls_stores(
                "rediss:///0",
                redis_sentinels=(f"127.0.0.1:{sentinel_tls}",),
                redis_tls_ca=str(ca.certificate),
                redis_tls_certificate=str(client.certificate),
                redis_tls_private_key=str(client.private_key),
            )
            try:
                await ready(stores)
                assert await stores.replay.reserve("k", 30.0) is True
                assert command(primary.port, "EXISTS", "tls:replay:k") == 1
            finally:
                await stores.close()
        finally:
            sentinel.close()
