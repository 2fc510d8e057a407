"""Redis stores against a private redis-server: shared state, outages, recovery."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from gatewayd.config import Budget, StoresConfig
from gatewayd.stores import RateDecision, StoreUnavailable
from gatewayd.stores.redis import RedisStores
from gatewayd.testing.redis import RedisServer, free_port, ready, redis_stores
from gatewayd.testing.wait import until
from tests.support import record_connections

TIMEOUT_S = 0.5


def make_stores(url: str, prefix: str = "t:", timeout_s: float = TIMEOUT_S) -> RedisStores:
    return redis_stores(url, prefix, timeout_s)


@pytest_twisted.async_yield_fixture
async def stores(redis_server: RedisServer) -> AsyncIterator[RedisStores]:
    """Stores on the test's Redis, answering PING; closed after the test."""
    s = make_stores(redis_server.url)
    try:
        await ready(s)
        yield s
    finally:
        await s.close()


async def unavailable_within(d: Any, bound_s: float) -> StoreUnavailable:
    start = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        await d
    assert time.monotonic() - start < bound_s
    return info.value


@pytest_twisted.ensureDeferred
async def test_replay_is_shared_between_two_gateways(redis_server: RedisServer) -> None:
    a, b = make_stores(redis_server.url), make_stores(redis_server.url)
    try:
        await ready(a, b)
        assert await a.replay.reserve("sess1:req1", 30.0) is True
        assert await b.replay.reserve("sess1:req1", 30.0) is False
        assert await a.replay.reserve("sess1:req1", 30.0) is False
        assert await b.replay.reserve("sess1:req2", 30.0) is True
        # a different prefix is a different namespace
        c = make_stores(redis_server.url, prefix="other:")
        try:
            await ready(c)
            assert await c.replay.reserve("sess1:req1", 30.0) is True
        finally:
            await c.close()
        # SET NX PX under the prefix: the key expires after its ttl
        pttl = await a.pool.execute("PTTL", "t:replay:sess1:req1")
        assert 29_000 < pttl <= 30_000
        assert await a.replay.reserve("short", 0.05) is True
        await until(lambda: b.replay.reserve("short", 0.05), "the short reservation to expire", timeout=2.0)
    finally:
        await a.close()
        await b.close()


@pytest_twisted.ensureDeferred
async def test_rate_budget_is_shared_between_two_gateways(redis_server: RedisServer) -> None:
    a, b = make_stores(redis_server.url), make_stores(redis_server.url)
    budget = Budget(rate=2.0, burst=4)  # T = 0.5 s
    try:
        await ready(a, b)
        started = time.monotonic()
        decisions = [await (a if i % 2 else b).rate.consume("user:7", budget) for i in range(4)]
        assert all(d == RateDecision(True, 0.0) for d in decisions)
        denied = await a.rate.consume("user:7", budget)
        also_denied = await b.rate.consume("user:7", budget)
        elapsed = time.monotonic() - started
        # retry_after: the time left until one unit is back, measured on Redis' clock
        assert not denied.allowed and not also_denied.allowed
        assert 0.5 - elapsed - 0.05 <= denied.retry_after_s <= 0.5
        assert also_denied.retry_after_s <= denied.retry_after_s
        # other keys are untouched
        assert (await b.rate.consume("user:8", budget)).allowed
        # the bucket expires when full again: 4 units at 0.5 s each
        pttl = await a.pool.execute("PTTL", "t:rate:user:7")
        assert 1_500 < pttl <= 2_000
        # after retry_after, exactly one more is allowed
        await deferLater(reactor, also_denied.retry_after_s + 0.01)
        assert (await a.rate.consume("user:7", budget)).allowed
        assert not (await b.rate.consume("user:7", budget)).allowed
    finally:
        await a.close()
        await b.close()


@pytest_twisted.ensureDeferred
async def test_rate_script_is_sent_again_after_redis_forgets_it(stores: RedisStores) -> None:
    budget = Budget(rate=1.0, burst=2)
    assert (await stores.rate.consume("k", budget)).allowed
    assert await stores.pool.execute("SCRIPT", "FLUSH") == "OK"
    assert (await stores.rate.consume("k", budget)).allowed
    decision = await stores.rate.consume("k", budget)
    assert not decision.allowed and 0.9 < decision.retry_after_s <= 1.0
    with pytest.raises(ValueError):
        stores.rate.consume("k", budget, cost=3)


@pytest_twisted.ensureDeferred
async def test_redis_stopped_fails_closed_promptly_then_recovers(
        redis_server: RedisServer, stores: RedisStores) -> None:
    budget = Budget(rate=100.0, burst=10)
    assert await stores.replay.reserve("before", 30.0) is True
    redis_server.stop()
    # both stores, while the loss is noticed and after: promptly, well within the timeout
    await unavailable_within(stores.replay.reserve("during", 30.0), TIMEOUT_S)
    await unavailable_within(stores.rate.consume("k", budget), TIMEOUT_S)
    await unavailable_within(stores.replay.reserve("during", 30.0), TIMEOUT_S)
    assert await stores.ping() is False
    redis_server.start()
    took = await until(stores.ping, "Redis to answer PING")
    assert took < 2.0  # reconnect backoff starts at 0.1 s
    assert await stores.replay.reserve("during", 30.0) is True
    assert (await stores.rate.consume("k", budget)).allowed


@pytest_twisted.ensureDeferred
async def test_redis_not_answering_times_out(redis_server: RedisServer) -> None:
    timeout_s = 0.3
    stores = make_stores(redis_server.url, timeout_s=timeout_s)
    try:
        await ready(stores)
        redis_server.pause()
        try:
            start = time.monotonic()
            error = await unavailable_within(stores.replay.reserve("k", 30.0), timeout_s + 0.5)
            assert time.monotonic() - start >= timeout_s - 0.01
            assert "redis" in str(error)
            assert await stores.ping() is False
        finally:
            redis_server.resume()
        await until(stores.ping, "Redis to answer PING")
        assert await stores.replay.reserve("k2", 30.0) is True
        # A timed-out command may still have been applied: Redis read it before it froze.
        assert await stores.replay.reserve("k", 30.0) in (True, False)
    finally:
        await stores.close()


@pytest_twisted.ensureDeferred
async def test_no_redis_at_all_fails_closed_promptly() -> None:
    stores = make_stores(f"redis://127.0.0.1:{free_port()}/0")
    try:
        await unavailable_within(stores.replay.reserve("k", 1.0), TIMEOUT_S)
        await unavailable_within(stores.rate.consume("k", Budget(rate=1.0, burst=1)), TIMEOUT_S)
        assert await stores.ping() is False
    finally:
        await stores.close()


@pytest_twisted.ensureDeferred
async def test_database_number_from_the_url(redis_server: RedisServer) -> None:
    db3 = make_stores(redis_server.url.rsplit("/", 1)[0] + "/3")
    db0 = make_stores(redis_server.url)
    try:
        await ready(db3, db0)
        assert await db3.replay.reserve("k", 30.0) is True
        assert await db0.replay.reserve("k", 30.0) is True
        assert await db3.pool.execute("DBSIZE") == 1
    finally:
        await db3.close()
        await db0.close()


@pytest_twisted.ensureDeferred
async def test_reconnect_keeps_trying_when_select_times_out(redis_server: RedisServer) -> None:
    # txredisapi stops reconnecting for good when SELECT fails on a new connection, a timeout included;
    # our factory must keep trying, so the store comes back once Redis answers again.
    url = redis_server.url.rsplit("/", 1)[0] + "/3"
    stores = RedisStores.from_config(
        StoresConfig(kind="redis", redis_url=url, timeout_s=0.2), reactor, pool_size=1
    )
    built = record_connections(stores.pool._factory)
    try:
        await ready(stores)
        redis_server.pause()
        try:
            await unavailable_within(stores.replay.reserve("k", 30.0), 1.0)
            # connections made to the frozen server: the second one comes only if the first one's
            # SELECT timing out did not stop the reconnecting
            await until(lambda: len(built) >= 3, "three connections built", timeout=5.0)
        finally:
            redis_server.resume()
        await until(stores.ping, "Redis to answer PING")
        assert await stores.replay.reserve("k2", 30.0) is True
        assert await stores.pool.execute("DBSIZE") >= 1
    finally:
        await stores.close()
