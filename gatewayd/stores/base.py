"""What the pipeline asks of its stores: replay reservations and rate budgets.

Two implementations live next to this module: ``memory`` (one process, for
``--dev`` and single-instance deployments) and ``redis`` (shared by every
gateway host through one Redis). Both answer through Deferreds so the pipeline
does not care which one it talks to. A store that cannot answer errbacks
``StoreUnavailable``; callers fail closed with UNAVAILABLE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from gatewayd.config import Budget, StoresConfig


class StoreUnavailable(Exception):
    """The store could not answer in time; callers fail closed (UNAVAILABLE)."""


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

    def ping(self) -> Deferred[bool]:
        """Fire True when the stores can answer now, else False; never errbacks."""
        return defer.succeed(True)

    def close(self) -> Deferred[None]:
        """Release connections; fires once they are closed."""
        return defer.succeed(None)


def check_cost(budget: Budget, cost: int) -> None:
    """Refuse a cost no bucket of ``budget`` could ever pay (a caller's bug)."""
    if cost < 1 or cost > budget.burst:
        raise ValueError(f"cost must be between 1 and the burst ({budget.burst}), got {cost}")


def build_stores(config: StoresConfig, reactor: IReactorTime) -> Stores:
    """Build the stores ``config.kind`` names ("memory" or "redis").

    For Redis, ``config.key_prefix`` starts every key; in memory, keys need no
    namespace and are used as given. The Redis stores connect in the
    background; ``ping()`` tells when they are ready.
    """
    if config.kind == "memory":
        from gatewayd.stores.memory import MemoryRateLimiter, MemoryReplayStore

        return Stores(MemoryReplayStore(reactor), MemoryRateLimiter(reactor))
    if config.kind == "redis":
        from gatewayd.stores.redis import RedisStores

        return RedisStores.from_config(config, reactor)
    raise ValueError(f"unknown stores kind {config.kind!r}")
