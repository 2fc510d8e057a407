"""In-process stores: replay reservations and GCRA rate budgets in dicts.

For ``--dev`` and single-instance deployments; several gateways must share
Redis instead. Every call is O(1) and answers synchronously with an already
fired Deferred.

Memory is bounded. Both stores keep ``key -> deadline`` (a replay
reservation's expiry; a bucket's theoretical arrival time, after which the
bucket is full and the key means nothing). Every call sweeps two entries
from the front of a queue of the keys (``admit``: two per budget it charges):
an expired one is dropped, a live one goes to the back. The sweep thus
cycles through all entries at twice the rate at which new keys can arrive,
so expired ones leave within a cycle,
whatever their mix of lifetimes. When a store is at its maximum, a new key
first sweeps harder (a bounded number of entries); if nothing has expired:

- the replay store fails closed (``StoreUnavailable``): forgetting a live
  reservation would let a replay through;
- the rate limiter evicts the entry at the front of the sweep order (the one
  left untouched by the sweep for longest, not strictly the soonest to
  expire): that only forgives one key's debt, where failing closed would deny
  every new key.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from gatewayd.config import Budget
from gatewayd.stores.base import (
    ALLOWED,
    REPLAYED,
    Admission,
    RateDecision,
    Stores,
    StoreUnavailable,
    check_cost,
)

#: Entries examined per call by the amortised sweep.
_SWEEP_STEP = 2
#: Entries examined, at most, to find room for a new key in a full store.
_ROOM_SEARCH = 32
#: Float slack (seconds) so rounding never denies a request that is exactly due.
_EPSILON = 1e-9


class _Clock(Protocol):
    """What these stores need of an ``IReactorTime`` (zope interfaces confuse mypy)."""

    def seconds(self) -> float: ...


class _Deadlines:
    """``key -> deadline`` with the amortised sweep described in the module docstring.

    The sweep order is a deque holding each key once: popping the front of a
    dict instead would make ``next(iter(dict))`` walk over the holes left by
    earlier pops, O(n) per call until the dict is resized.
    """

    __slots__ = ("entries", "max_entries", "order")

    def __init__(self, max_entries: int) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.entries: dict[str, float] = {}
        self.order: deque[str] = deque()
        self.max_entries = max_entries

    def add(self, key: str, deadline: float) -> None:
        """Insert a key that is not in ``entries`` (existing keys are updated in ``entries``)."""
        self.entries[key] = deadline
        self.order.append(key)

    def sweep(self, now: float, steps: int) -> bool:
        """Examine up to ``steps`` entries from the front; True when one was dropped."""
        entries, order = self.entries, self.order
        dropped = False
        while steps and order:
            steps -= 1
            key = order.popleft()
            if entries[key] > now:
                order.append(key)
            else:
                del entries[key]
                dropped = True
        return dropped

    def make_room(self, now: float, evict: bool) -> bool:
        """Free one slot in a full map; False when none could be freed without evicting."""
        if self.sweep(now, min(_ROOM_SEARCH, len(self.order))):
            return True
        if evict:
            del self.entries[self.order.popleft()]
            return True
        return False


class MemoryReplayStore:
    """``ReplayStore`` in one process; fails closed when ``max_entries`` live reservations exist."""

    def __init__(self, clock: IReactorTime, max_entries: int = 1_000_000) -> None:
        self._clock: _Clock = clock
        self._deadlines = _Deadlines(max_entries)

    def __len__(self) -> int:
        """Entries held now, expired ones not yet swept included."""
        return len(self._deadlines.entries)

    def reserve(self, key: str, ttl_s: float) -> Deferred[bool]:
        try:
            return defer.succeed(self.reserve_now(key, ttl_s))
        except StoreUnavailable:
            return defer.fail()

    def reserve_now(self, key: str, ttl_s: float) -> bool:
        """``reserve``'s answer, synchronously; raises ``StoreUnavailable``."""
        now = self._clock.seconds()
        deadlines = self._deadlines
        deadlines.sweep(now, _SWEEP_STEP)
        entries = deadlines.entries
        deadline = entries.get(key)
        if deadline is not None:
            if deadline > now:
                return False
            entries[key] = now + ttl_s
            return True
        if len(entries) >= deadlines.max_entries and not deadlines.make_room(now, evict=False):
            raise StoreUnavailable("replay store is full of live reservations")
        deadlines.add(key, now + ttl_s)
        return True


class MemoryRateLimiter:
    """``RateLimiter`` in one process; evicts when ``max_keys`` buckets are not full."""

    def __init__(self, clock: IReactorTime, max_keys: int = 1_000_000) -> None:
        self._clock: _Clock = clock
        self._deadlines = _Deadlines(max_keys)

    def __len__(self) -> int:
        """Buckets held now, full ones not yet swept included."""
        return len(self._deadlines.entries)

    def consume(self, key: str, budget: Budget, cost: int = 1) -> Deferred[RateDecision]:
        return defer.succeed(self.consume_now(key, budget, cost))

    def consume_now(self, key: str, budget: Budget, cost: int = 1) -> RateDecision:
        """``consume``'s answer, synchronously."""
        if cost != 1:
            check_cost(budget, cost)
        now = self._clock.seconds()
        self._deadlines.sweep(now, _SWEEP_STEP)
        return self._spend(key, budget, cost, now)

    def consume_each_now(self, budgets: Sequence[tuple[str, Budget]]) -> tuple[RateDecision, ...]:
        """``consume_now(key, budget)`` for each pair in order, at one instant (one clock read, one sweep)."""
        now = self._clock.seconds()
        self._deadlines.sweep(now, _SWEEP_STEP * len(budgets))
        spend = self._spend
        return tuple([spend(key, budget, 1, now) for key, budget in budgets])

    def _spend(self, key: str, budget: Budget, cost: int, now: float) -> RateDecision:
        deadlines = self._deadlines
        entries = deadlines.entries
        interval = 1.0 / budget.rate
        tat = entries.get(key)
        known = tat is not None
        if tat is None or tat < now:
            tat = now
        new_tat = tat + cost * interval
        wait = new_tat - budget.burst * interval - now
        if wait > _EPSILON:
            return RateDecision(False, wait)
        if known:
            entries[key] = new_tat
        else:
            if len(entries) >= deadlines.max_entries:
                deadlines.make_room(now, evict=True)
            deadlines.add(key, new_tat)
        return ALLOWED


class MemoryStores(Stores):
    """Both memory stores; ``admit`` is their synchronous calls in order, in one already fired Deferred."""

    def __init__(self, replay: MemoryReplayStore, rate: MemoryRateLimiter) -> None:
        super().__init__(replay, rate)
        self._reserve = replay.reserve_now
        self._consume_each = rate.consume_each_now

    def admit(self, replay_key: str, ttl_s: float, budgets: Sequence[tuple[str, Budget]]) -> Deferred[Admission]:
        try:
            decisions = self.admit_now(replay_key, ttl_s, budgets)
        except StoreUnavailable:
            return defer.fail()
        return defer.succeed(REPLAYED if decisions is None else Admission(True, decisions))

    def admit_now(
        self, replay_key: str, ttl_s: float, budgets: Sequence[tuple[str, Budget]]
    ) -> tuple[RateDecision, ...] | None:
        """``admit``'s answer, synchronously: the budgets' decisions, ``None`` for a replayed key;
        raises ``StoreUnavailable``."""
        if not self._reserve(replay_key, ttl_s):
            return None
        return self._consume_each(budgets)
