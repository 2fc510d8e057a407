"""In-memory replay and rate stores, on a Clock."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from gatewayd.config import Budget, StoresConfig
from gatewayd.stores import RateDecision, Stores, StoreUnavailable, build_stores
from gatewayd.stores.memory import MemoryRateLimiter, MemoryReplayStore


def result(d: Deferred[Any]) -> Any:
    """The result of an already fired Deferred (memory stores answer synchronously)."""
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    return box[0]


def failure_of(d: Deferred[Any]) -> BaseException:
    outcome = result(d)
    assert not isinstance(outcome, (bool, RateDecision)), f"expected a failure, got {outcome!r}"
    return outcome.value  # type: ignore[no-any-return]


# -- replay ------------------------------------------------------------------------------------------------


def test_replay_reserves_once_until_the_ttl_passes() -> None:
    clock = Clock()
    store = MemoryReplayStore(clock)
    assert result(store.reserve("s1:r1", 10.0)) is True
    assert result(store.reserve("s1:r1", 10.0)) is False
    assert result(store.reserve("s1:r2", 10.0)) is True
    clock.advance(9.999)
    assert result(store.reserve("s1:r1", 10.0)) is False
    clock.advance(0.001)
    # expired exactly at its deadline: reserved anew, for a new ttl
    assert result(store.reserve("s1:r1", 10.0)) is True
    clock.advance(5.0)
    assert result(store.reserve("s1:r1", 10.0)) is False


def test_replay_sweeps_expired_entries_as_it_goes() -> None:
    clock = Clock()
    store = MemoryReplayStore(clock)
    for i in range(1000):
        store.reserve(f"old{i}", 1.0)
    clock.advance(2.0)
    for i in range(1000):
        assert result(store.reserve(f"new{i}", 100.0)) is True
    # two entries examined per call: the 1000 expired ones are gone after 500 calls
    assert len(store) == 1000


def test_replay_sweep_is_not_blocked_by_a_long_lived_entry() -> None:
    clock = Clock()
    store = MemoryReplayStore(clock)
    store.reserve("long", 3600.0)
    for i in range(500):
        store.reserve(f"short{i}", 1.0)
    clock.advance(2.0)
    for i in range(400):
        store.reserve(f"next{i}", 1.0)
    assert len(store) == 401  # "long" and the 400 new ones
    assert result(store.reserve("long", 1.0)) is False


def test_replay_fails_closed_when_full_of_live_reservations() -> None:
    clock = Clock()
    store = MemoryReplayStore(clock, max_entries=100)
    for i in range(100):
        assert result(store.reserve(f"k{i}", 10.0)) is True
    assert isinstance(failure_of(store.reserve("one-too-many", 10.0)), StoreUnavailable)
    # a key already held still answers (no new entry is needed)
    assert result(store.reserve("k5", 10.0)) is False
    assert len(store) == 100
    # once some expire there is room again, and the bound holds
    clock.advance(11.0)
    assert result(store.reserve("one-too-many", 10.0)) is True
    for i in range(1000):
        assert result(store.reserve(f"later{i}", 10.0)) is True
        clock.advance(0.2)  # about 50 live at a time
    assert len(store) <= 100


# -- rate --------------------------------------------------------------------------------------------------

# T = 1/rate = 0.25 s: exact in binary floating point, so times compare exactly.
BUDGET = Budget(rate=4.0, burst=5)


def test_rate_allows_the_burst_at_once_then_throttles_with_an_exact_retry_after() -> None:
    clock = Clock()
    clock.advance(1000.0)
    limiter = MemoryRateLimiter(clock)
    for _ in range(5):
        assert result(limiter.consume("ip:1", BUDGET)) == RateDecision(True, 0.0)
    denied = result(limiter.consume("ip:1", BUDGET))
    assert denied == RateDecision(False, 0.25)
    clock.advance(0.1)
    assert result(limiter.consume("ip:1", BUDGET)) == RateDecision(False, pytest.approx(0.15, abs=1e-12))
    # other keys have their own bucket
    assert result(limiter.consume("ip:2", BUDGET)).allowed


def test_rate_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock)
    for _ in range(5):
        assert result(limiter.consume("k", BUDGET)).allowed
    # sustained: one every 0.25 s, not more
    for _ in range(20):
        clock.advance(0.25)
        assert result(limiter.consume("k", BUDGET)).allowed
        assert not result(limiter.consume("k", BUDGET)).allowed
    # idle for a second: four units back, not five
    clock.advance(1.0)
    for _ in range(4):
        assert result(limiter.consume("k", BUDGET)).allowed
    assert result(limiter.consume("k", BUDGET)) == RateDecision(False, 0.25)
    # idle long enough: the whole burst again, never more
    clock.advance(60.0)
    allowed = sum(result(limiter.consume("k", BUDGET)).allowed for _ in range(10))
    assert allowed == 5


def test_rate_denied_calls_spend_nothing() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock)
    for _ in range(5):
        limiter.consume("k", BUDGET)
    for _ in range(100):
        assert not result(limiter.consume("k", BUDGET)).allowed
    clock.advance(0.25)
    assert result(limiter.consume("k", BUDGET)).allowed


def test_rate_cost_above_one() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock)
    assert result(limiter.consume("k", BUDGET, cost=3)).allowed
    # two units left: a cost of 3 waits until one more is back
    assert result(limiter.consume("k", BUDGET, cost=3)) == RateDecision(False, 0.25)
    assert result(limiter.consume("k", BUDGET, cost=2)).allowed
    with pytest.raises(ValueError):
        limiter.consume("k", BUDGET, cost=6)
    with pytest.raises(ValueError):
        limiter.consume("k", BUDGET, cost=0)


def test_rate_with_a_rate_that_is_not_exact_in_binary() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock)
    budget = Budget(rate=10.0, burst=3)
    for _ in range(3):
        assert result(limiter.consume("k", budget)).allowed
    decision = result(limiter.consume("k", budget))
    assert not decision.allowed
    assert decision.retry_after_s == pytest.approx(0.1, abs=1e-9)
    # exactly when it said: allowed, despite float rounding along the way
    for _ in range(50):
        clock.advance(0.1)
        assert result(limiter.consume("k", budget)).allowed
        assert not result(limiter.consume("k", budget)).allowed


def test_rate_forgets_full_buckets_and_stays_bounded() -> None:
    clock = Clock()
    limiter = MemoryRateLimiter(clock, max_keys=50)
    for i in range(50):
        limiter.consume(f"a{i}", BUDGET)
    # a bucket is forgettable once full again: 1/rate = 0.25 s after one unit
    clock.advance(0.25)
    for i in range(50):
        limiter.consume(f"b{i}", BUDGET)
    assert len(limiter) == 50
    # full of live buckets: new keys evict, the bound holds, new keys are served
    for i in range(200):
        assert result(limiter.consume(f"c{i}", BUDGET)).allowed
    assert len(limiter) == 50


def test_build_stores_memory_uses_the_given_clock() -> None:
    clock = Clock()
    stores = build_stores(StoresConfig(kind="memory"), clock)
    assert isinstance(stores, Stores)
    assert result(stores.ping()) is True
    assert result(stores.replay.reserve("k", 1.0)) is True
    clock.advance(1.0)
    assert result(stores.replay.reserve("k", 1.0)) is True
    assert result(stores.close()) is None


def test_consuming_several_budgets_at_once_decides_as_one_consume_each() -> None:
    """``consume_each_now`` (what ``admit`` charges) answers as ``consume_now`` per budget, in order."""
    tight, loose = Budget(rate=1.0, burst=2), Budget(rate=100.0, burst=100)
    budgets = [("a", tight), ("b", loose), ("a", tight)]
    one_by_one = MemoryRateLimiter(Clock())
    at_once = MemoryRateLimiter(Clock())
    for _ in range(3):
        expected = tuple(one_by_one.consume_now(key, budget) for key, budget in budgets)
        assert at_once.consume_each_now(budgets) == expected
    assert not expected[0].allowed and expected[0].retry_after_s > 0  # the tight budget ran out
    assert len(at_once) == len(one_by_one) == 2


def test_consume_each_now_matches_consume_now_as_buckets_fill_drain_and_are_forgotten() -> None:
    """The inline fast path of ``consume_each_now`` (a known key, allowed) decides exactly as
    ``consume_now``: same decisions and the same theoretical arrival times, over a random walk
    of the clock across refills, denials, swept keys and rates not exact in binary."""
    import random

    rng = random.Random(13)
    budgets = [Budget(rate=0.1, burst=3), Budget(rate=3.0, burst=5), Budget(rate=1e6, burst=1_000_000),
               Budget(rate=7.3, burst=1)]
    keys = ["a", "b", "c", "d", "e"]
    clock_one, clock_all = Clock(), Clock()
    one_by_one, at_once = MemoryRateLimiter(clock_one, max_keys=4), MemoryRateLimiter(clock_all, max_keys=4)
    denied = 0
    for _ in range(2000):
        step = rng.choice([0.0, 0.0, 0.001, 0.05, 0.3, 2.0, 40.0])
        clock_one.advance(step)
        clock_all.advance(step)
        pairs = [(rng.choice(keys), rng.choice(budgets)) for _ in range(rng.randint(1, 4))]
        one_by_one._deadlines.sweep(clock_one.seconds(), 2 * len(pairs) - 2)  # consume_each sweeps once for all
        expected = tuple(one_by_one.consume_now(key, budget) for key, budget in pairs[:1]) + tuple(
            one_by_one._spend(key, budget, 1, clock_one.seconds()) for key, budget in pairs[1:]
        )
        assert at_once.consume_each_now(pairs) == expected
        assert at_once._deadlines.entries == one_by_one._deadlines.entries
        denied += sum(not d.allowed for d in expected)
    assert denied > 100
