"""Stage 6: the caller's rate budgets (IP, session, user, message_type per user)."""

from __future__ import annotations

import math
from collections.abc import Container
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from gatewayd.config import LimitsConfig
from gatewayd.pipeline.context import RequestContext
from gatewayd.rpc.codes import Code
from gatewayd.rpc.details import retry_info
from gatewayd.rpc.errors import RpcError
from gatewayd.stores.base import RateLimiter, StoreUnavailable

#: The one budget key all message types without a route share, so a client inventing
#: types cannot mint fresh per-type budgets (they are UNIMPLEMENTED one stage later anyway).
UNROUTED = "~unrouted"


def peer_host(peer: str) -> str:
    """The address part of ``peer``: ``1.2.3.4:5678`` -> ``1.2.3.4``, ``[::1]:80`` -> ``::1``.

    A bare address (IPv4 or IPv6) is returned as it is: the IP budget must not
    be per source port.
    """
    if peer.startswith("["):
        end = peer.find("]")
        return peer[1:end] if end > 0 else peer
    if peer.count(":") == 1:
        return peer.partition(":")[0]
    return peer


class RateLimitStage:
    """Spends one unit of each budget; any denial -> RESOURCE_EXHAUSTED with ``retry-after``
    (whole seconds) and a ``google.rpc.RetryInfo`` detail (to the millisecond).

    The four budgets are asked at once (one round trip of latency with Redis);
    a request denied by one budget may still have spent the others, which only
    ever errs on the side of refusing. A store failure -> UNAVAILABLE: never
    skip a budget (fail closed).
    """

    name = "rate_limit"

    def __init__(self, limiter: RateLimiter, limits: LimitsConfig, routed_types: Container[str]) -> None:
        self._limiter = limiter
        self._limits = limits
        self._routed_types = routed_types

    def check(self, ctx: RequestContext) -> Deferred[None] | None:
        env = ctx.env
        user_id = ctx.caller.user_id
        limits = self._limits
        message_type = env.message_type if env.message_type in self._routed_types else UNROUTED
        consume = self._limiter.consume
        gather = _Gather(4)
        consume(f"ip:{peer_host(ctx.call.peer)}", limits.ip).addBoth(gather.arrive)
        consume(f"session:{env.device_session_id}", limits.session).addBoth(gather.arrive)
        consume(f"user:{user_id}", limits.user).addBoth(gather.arrive)
        consume(f"type:{user_id}:{message_type}", limits.message_type).addBoth(gather.arrive)
        if gather.complete:
            # Every answer is in already (the memory store answers synchronously): no Deferred needed.
            _decide(gather.results)
            return None
        return gather.wait().addCallback(_decide)


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


def _decide(outcomes: list[Any]) -> None:
    # Failures first: a budget that could not be asked is never treated as allowed.
    for outcome in outcomes:
        if isinstance(outcome, Failure):
            if outcome.check(StoreUnavailable):
                raise RpcError(Code.UNAVAILABLE, "rate limit store unavailable")
            outcome.raiseException()
    denied = [d.retry_after_s for d in outcomes if not d.allowed]
    if denied:
        retry_after = max(1, math.ceil(max(denied)))
        raise RpcError(Code.RESOURCE_EXHAUSTED, "rate limit exceeded", {"retry-after": str(retry_after)},
                       [retry_info(max(denied))])
