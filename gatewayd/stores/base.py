"""What the pipeline asks of its stores: replay reservations and rate budgets.

Two implementations live next to this module: ``memory`` (one process, for
``--dev`` and single-instance deployments) and ``redis`` (shared by every
gateway host through one Redis). Both answer through Deferreds so the pipeline
does not care which one it talks to. A store that cannot answer errbacks
``StoreUnavailable``; callers fail closed with UNAVAILABLE.

``Stores.admit`` is what a verified request asks: reserve its request id and,
only when that was fresh, spend one unit of each of its budgets. Here it is
the two stores' calls in that order; the Redis stores do it in one round trip
(one Lua script) with exactly the same outcome.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from gatewayd.config import Budget, StoresConfig


class StoreUnavailable(Exception):
    """The store could not answer in time; callers fail closed (UNAVAILABLE)."""


StoreObserver = Callable[[str, str, float, "Failure | None"], None]
"""``observer(store, operation, seconds, failure)``: one settled round trip to a store server;
``failure`` is None when it answered."""


@dataclass(frozen=True, slots=True)
class RateDecision:
    """The answer of a rate budget.

    ``retry_after_s`` is 0 when ``allowed``; otherwise it is > 0: the seconds
    until the same request (same cost) would be allowed.
    """

    allowed: bool
    retry_after_s: float


#: The one "allowed" answer; RateDecision is immutable, so it is shared.
ALLOWED = RateDecision(True, 0.0)


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer of ``Stores.admit``.

    ``fresh`` is False when the request id was reserved before; then no budget
    was charged and ``decisions`` is empty. Otherwise ``decisions`` holds one
    ``RateDecision`` per budget asked, in order.
    """

    fresh: bool
    decisions: tuple[RateDecision, ...]


#: The answer to a replayed request id: nothing was charged.
REPLAYED = Admission(False, ())


class ReplayStore(Protocol):
    """Remembers keys for a while, to refuse a second use of the same one."""

    def reserve(self, key: str, ttl_s: float) -> Deferred[bool]:
        """Reserve ``key`` for ``ttl_s`` seconds.

        Fires True when newly reserved, False when it was already reserved and
        that reservation has not expired (``SET NX PX`` semantics). Errbacks
        ``StoreUnavailable`` when the store cannot tell.
        """
        ...


class RateLimiter(Protocol):
    """Rate budgets keyed by strings, by the generic cell rate algorithm (GCRA)."""

    def consume(self, key: str, budget: Budget, cost: int = 1) -> Deferred[RateDecision]:
        """Spend ``cost`` units of ``key``'s budget, atomically, if they are available.

        From an empty state ``budget.burst`` units are allowed at once, then
        ``budget.rate`` per second. A denied call spends nothing. ``cost``
        must be between 1 and ``budget.burst`` (else ``ValueError``).
        Errbacks ``StoreUnavailable`` when the store cannot tell.

        GCRA keeps one number per key, the theoretical arrival time ``tat``:
        when the bucket is full again. With the emission interval ``T =
        1/rate``, a request of cost ``c`` at ``now`` moves it to ``new =
        max(tat, now) + c*T`` and is allowed when ``new - burst*T <= now``;
        otherwise it would be allowed ``new - burst*T - now`` from now. The
        key can be forgotten once ``tat <= now``.
        """
        ...


class Stores:
    """Both stores of one gateway, with readiness and shutdown.

    This base serves in-process stores: always ready, nothing to close.
    Stores backed by a server override ``ping`` and ``close``.
    """

    def __init__(self, replay: ReplayStore, rate: RateLimiter) -> None:
        self.replay = replay
        self.rate = rate

    def admit(self, replay_key: str, ttl_s: float, budgets: Sequence[tuple[str, Budget]]) -> Deferred[Admission]:
        """Reserve ``replay_key`` for ``ttl_s``; when that was fresh, spend one unit of each budget.

        A replayed key charges nothing (``REPLAYED``). Each budget is decided on
        its own: one denied budget does not refund the others (which only errs
        on the side of refusing), and a denied budget spends nothing. The
        reservation stands whatever the budgets say: a request refused for its
        budgets has used its request id. Errbacks ``StoreUnavailable`` when any
        part could not be answered (fail closed).
        """
        d: Deferred[Any] = self.replay.reserve(replay_key, ttl_s)
        return d.addCallback(self._charge, budgets)

    def _charge(self, fresh: bool, budgets: Sequence[tuple[str, Budget]]) -> Deferred[Admission] | Admission:
        if not fresh:
            return REPLAYED
        consume = self.rate.consume
        gather = _Gather(len(budgets))
        for key, budget in budgets:
            consume(key, budget).addBoth(gather.arrive)
        if gather.complete:
            # Every answer is in already (the memory store answers synchronously): no Deferred needed.
            return _admission(gather.results)
        return gather.wait().addCallback(_admission)

    def ping(self) -> Deferred[bool]:
        """Fire True when the stores can answer now, else False; never errbacks."""
        return defer.succeed(True)

    def close(self) -> Deferred[None]:
        """Release connections; fires once they are closed."""
        return defer.succeed(None)


class _Gather:
    """Collect ``count`` outcomes (decisions or Failures); cheaper than gatherResults when they
    arrive synchronously, as they do from the memory store."""

    __slots__ = ("count", "results", "waiting")

    def __init__(self, count: int) -> None:
        self.count = count
        self.results: list[Any] = []
        self.waiting: Deferred[list[Any]] | None = None

    @property
    def complete(self) -> bool:
        return len(self.results) == self.count

    def arrive(self, outcome: Any) -> None:
        self.results.append(outcome)
        if self.waiting is not None and self.complete:
            self.waiting.callback(self.results)

    def wait(self) -> Deferred[list[Any]]:
        """Fires with the outcomes once all have arrived (call once, when not yet complete)."""
        self.waiting = Deferred()
        return self.waiting


def _admission(outcomes: list[Any]) -> Admission:
    # Failures first: a budget that could not be asked is never treated as allowed.
    for outcome in outcomes:
        if isinstance(outcome, Failure):
            outcome.raiseException()
    return Admission(True, tuple(outcomes))


def check_cost(budget: Budget, cost: int) -> None:
    """Refuse a cost no bucket of ``budget`` could ever pay (a caller's bug)."""
    if cost < 1 or cost > budget.burst:
        raise ValueError(f"cost must be between 1 and the burst ({budget.burst}), got {cost}")


def build_stores(config: StoresConfig, reactor: IReactorTime, observer: StoreObserver | None = None) -> Stores:
    """Build the stores ``config.kind`` names ("memory" or "redis").

    For Redis, ``config.key_prefix`` starts every key; in memory, keys need no
    namespace and are used as given. The Redis stores connect in the
    background; ``ping()`` tells when they are ready, and they report their
    round trips to ``observer``. The memory stores answer synchronously from
    dicts: nothing worth observing.
    """
    if config.kind == "memory":
        from gatewayd.stores.memory import MemoryRateLimiter, MemoryReplayStore, MemoryStores

        return MemoryStores(MemoryReplayStore(reactor), MemoryRateLimiter(reactor))
    if config.kind == "redis":
        from gatewayd.stores.redis import RedisStores

        return RedisStores.from_config(config, reactor, observer)
    raise ValueError(f"unknown stores kind {config.kind!r}")
