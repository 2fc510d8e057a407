"""Stage 6: the caller's rate budgets (IP, session, user, message_type per user).

The budgets are charged in the same store call as the replay reservation
(``Stores.admit``, one Redis round trip), which the replay stage makes with
the keys ``BudgetPlan`` names; this stage then decides on the answers it
left in ``ctx.budgets``.
"""

from __future__ import annotations

import math
from collections.abc import Container

from twisted.internet.defer import Deferred

from gatewayd.config import Budget, LimitsConfig
from gatewayd.peer_address import budget_address
from gatewayd.pipeline.context import RequestContext
from gatewayd.rpc.codes import Code
from gatewayd.rpc.details import retry_info
from gatewayd.rpc.errors import RpcError

#: The one budget key all message types without a route share, so a client inventing
#: types cannot mint fresh per-type budgets (they are UNIMPLEMENTED one stage later anyway).
UNROUTED = "~unrouted"

#: Peers whose IP budget key is remembered (parsing an address costs microseconds per call);
#: past this many the memo starts over, so it stays bounded whatever the peers.
_MAX_IP_KEYS = 4096


class BudgetPlan:
    """Which budgets a request spends: its IP (an IPv6 peer's /64: ``peer_address.budget_address``),
    session, user, and message type per user."""

    def __init__(self, limits: LimitsConfig, routed_types: Container[str]) -> None:
        self._limits = limits
        self._routed_types = routed_types
        self._ip_keys: dict[str, str] = {}  # peer -> its IP budget key

    def budgets(self, ctx: RequestContext) -> tuple[tuple[str, Budget], ...]:
        env = ctx.env
        user_id = ctx.caller.user_id
        limits = self._limits
        message_type = env.message_type if env.message_type in self._routed_types else UNROUTED
        peer = ctx.call.peer
        ip_key = self._ip_keys.get(peer)
        if ip_key is None:
            if len(self._ip_keys) >= _MAX_IP_KEYS:
                self._ip_keys.clear()
            ip_key = self._ip_keys[peer] = f"ip:{budget_address(peer)}"
        return (
            (ip_key, limits.ip),
            (f"session:{env.device_session_id}", limits.session),
            (f"user:{user_id}", limits.user),
            (f"type:{user_id}:{message_type}", limits.message_type),
        )


class RateLimitStage:
    """Any denied budget -> RESOURCE_EXHAUSTED with ``retry-after`` (whole seconds) and a
    ``google.rpc.RetryInfo`` detail (to the millisecond).

    Every budget was asked (in the replay stage's store call), each on its
    own: a request denied by one budget may still have spent the others,
    which only ever errs on the side of refusing. A store failure was
    UNAVAILABLE already: a budget is never skipped (fail closed).
    """

    name = "rate_limit"

    def check(self, ctx: RequestContext) -> Deferred[None] | None:
        decisions = ctx.budgets
        if decisions is None:
            raise RpcError(Code.INTERNAL, "stage order: budgets not asked")
        denied = [d.retry_after_s for d in decisions if not d.allowed]
        if denied:
            retry_after = max(1, math.ceil(max(denied)))
            raise RpcError(Code.RESOURCE_EXHAUSTED, "rate limit exceeded", {"retry-after": str(retry_after)},
                           [retry_info(max(denied))])
        return None
