"""``Stores.admit``: the replay reservation and every budget in one store call, the same contract
composed from any two stores (called in order), in memory (synchronously, at once) and in Redis
(one Lua script, one round trip)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from gatewayd.config import Budget
from gatewayd.stores.base import ALLOWED, REPLAYED, Admission, Stores, StoreUnavailable
from gatewayd.stores.memory import MemoryRateLimiter, MemoryReplayStore, MemoryStores
from gatewayd.stores.redis import RedisStores
from gatewayd.testing.redis import RedisServer, ready, redis_stores

# Rates so slow that nothing refills during a test: a denial is exact and stays.
ONE = Budget(rate=0.001, burst=1)
TWO = Budget(rate=0.001, burst=2)
MANY = Budget(rate=0.001, burst=100)


@pytest_twisted.async_yield_fixture(params=["composed", "memory", "redis"])
async def stores(request: Any) -> AsyncIterator[Stores]:
    if request.param == "composed":
        yield Stores(MemoryReplayStore(reactor), MemoryRateLimiter(reactor))
        return
    if request.param == "memory":
        yield MemoryStores(MemoryReplayStore(reactor), MemoryRateLimiter(reactor))
        return
    server: RedisServer = request.getfixturevalue("redis_server")
    s = redis_stores(server.url, "adm:", 1.0)
    try:
        await ready(s)
        yield s
    finally:
        await s.close()


def denied(admission: Admission) -> list[bool]:
    return [not d.allowed for d in admission.decisions]


@pytest_twisted.ensureDeferred
async def test_a_fresh_request_reserves_and_charges_every_budget(stores: Stores) -> None:
    budgets = [("ip:a", ONE), ("session:a", ONE), ("user:a", TWO)]
    assert await stores.admit("replay:s:r1", 60.0, budgets) == Admission(True, (ALLOWED,) * 3)
    # Each budget was charged: ONE is spent now, TWO has one unit left.
    second = await stores.admit("replay:s:r2", 60.0, budgets)
    assert second.fresh and denied(second) == [True, True, False]
    assert all(d.retry_after_s > 0 for d in second.decisions[:2])


@pytest_twisted.ensureDeferred
async def test_a_replayed_request_charges_nothing(stores: Stores) -> None:
    budgets = [("session:b", TWO)]
    assert (await stores.admit("replay:s:r1", 60.0, budgets)).fresh
    for _ in range(3):
        assert await stores.admit("replay:s:r1", 60.0, budgets) == REPLAYED
    # Had the replays been charged, TWO would be spent.
    assert await stores.admit("replay:s:r2", 60.0, budgets) == Admission(True, (ALLOWED,))


@pytest_twisted.ensureDeferred
async def test_a_request_refused_for_its_budget_has_used_its_request_id(stores: Stores) -> None:
    budgets = [("session:c", ONE)]
    await stores.admit("replay:s:r1", 60.0, budgets)
    refused = await stores.admit("replay:s:r2", 60.0, budgets)
    assert refused.fresh and denied(refused) == [True]
    assert await stores.admit("replay:s:r2", 60.0, budgets) == REPLAYED


@pytest_twisted.ensureDeferred
async def test_budgets_are_decided_each_on_its_own(stores: Stores) -> None:
    """A denied budget spends nothing of itself; the others are still charged (errs towards refusing)."""
    await stores.admit("replay:s:r1", 60.0, [("ip:d", ONE), ("user:d", TWO)])
    mixed = await stores.admit("replay:s:r2", 60.0, [("ip:d", ONE), ("user:d", TWO)])
    assert denied(mixed) == [True, False]
    assert denied(await stores.admit("replay:s:r3", 60.0, [("user:d", TWO)])) == [True]
    # The budget API sees what admit charged, and admit what it charges.
    assert not (await stores.rate.consume("user:d", TWO)).allowed
    assert (await stores.rate.consume("user:e", ONE)).allowed
    assert denied(await stores.admit("replay:s:r4", 60.0, [("user:e", ONE)])) == [True]


@pytest_twisted.ensureDeferred
async def test_the_reservation_is_the_replay_stores(stores: Stores) -> None:
    await stores.admit("replay:s:r1", 60.0, [("ip:f", MANY)])
    assert await stores.replay.reserve("replay:s:r1", 60.0) is False
    assert await stores.replay.reserve("replay:s:r9", 60.0) is True
    assert await stores.admit("replay:s:r9", 60.0, [("ip:f", MANY)]) == REPLAYED


@pytest_twisted.ensureDeferred
async def test_a_full_memory_replay_store_fails_closed() -> None:
    stores = MemoryStores(MemoryReplayStore(reactor, max_entries=1), MemoryRateLimiter(reactor))
    assert (await stores.admit("replay:s:r1", 60.0, [("ip:z", MANY)])).fresh
    with pytest.raises(StoreUnavailable):
        await stores.admit("replay:s:r2", 60.0, [("ip:z", MANY)])


@pytest_twisted.ensureDeferred
async def test_redis_admission_writes_what_the_separate_commands_write(
        redis_server: RedisServer) -> None:
    """Gateways before and after the combined script can share one Redis during a rolling upgrade."""
    stores = redis_stores(redis_server.url, "mix:", 1.0)
    try:
        await ready(stores)
        budget = Budget(rate=10.0, burst=20)
        await stores.admit("replay:s:r1", 30.0, [("user:g", budget)])
        await stores.rate.consume("user:h", budget)
        await stores.replay.reserve("replay:s:r2", 30.0)
        pool = stores.pool
        for key in ("mix:replay:replay:s:r1", "mix:replay:replay:s:r2"):
            assert 29_000 < await pool.execute("PTTL", key) <= 30_000
            assert await pool.execute("GET", key) == 1  # "1", as txredisapi converts numbers
        admitted, separate = await pool.execute("GET", "mix:rate:user:g"), await pool.execute("GET", "mix:rate:user:h")
        assert abs(admitted - separate) < 1_000_000  # both a tat in µs on Redis' clock, one unit ahead
        assert 0 < await pool.execute("PTTL", "mix:rate:user:g") <= 101
    finally:
        await stores.close()


@pytest_twisted.ensureDeferred
async def test_redis_admission_survives_a_script_flush(redis_server: RedisServer) -> None:
    stores = redis_stores(redis_server.url, "flush:", 1.0)
    try:
        await ready(stores)
        assert (await stores.admit("replay:s:r1", 30.0, [("ip:x", MANY)])).fresh
        await stores.pool.execute("SCRIPT", "FLUSH")
        assert (await stores.admit("replay:s:r2", 30.0, [("ip:x", MANY)])).fresh
    finally:
        await stores.close()


@pytest_twisted.ensureDeferred
async def test_redis_admission_fails_closed_when_redis_is_gone(redis_server: RedisServer) -> None:
    stores: RedisStores = redis_stores(redis_server.url, "down:", 0.5)
    try:
        await ready(stores)
        redis_server.stop()
        with pytest.raises(StoreUnavailable):
            await stores.admit("replay:s:r1", 30.0, [("ip:x", MANY)])
    finally:
        await stores.close()
