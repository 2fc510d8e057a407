"""Stage 5b: a (device_session_id, request_id) pair is used once while it could still be fresh."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from gatewayd.config import Budget
from gatewayd.pipeline.context import RequestContext
from gatewayd.pipeline.rate_limit import BudgetPlan
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from gatewayd.stores.base import Admission, RateDecision, StoreUnavailable


def replay_key(device_session_id: str, request_id: str) -> str:
    return f"replay:{device_session_id}:{request_id}"


class Admitter(Protocol):
    """What this stage needs of the stores (``gatewayd.stores.base.Stores``)."""

    def admit(self, replay_key: str, ttl_s: float, budgets: Any) -> Deferred[Admission]: ...


SyncAdmit = Callable[[str, float, Any], "tuple[RateDecision, ...] | None"]
"""``admit_now(replay_key, ttl_s, budgets)`` of stores that answer at once (``MemoryStores``): the
budgets' decisions, ``None`` for a replayed key; raises ``StoreUnavailable``."""


class ReplayStage:
    """Reserves the request id; a second use -> ALREADY_EXISTS, store down -> UNAVAILABLE.

    The reservation lives twice the freshness window: a request is fresh for
    ``window`` on either side of its timestamp, so it must be remembered for
    ``2 x window`` after first use to be refused for as long as it would pass
    the freshness stage. Freshness runs first, so a stale request reserves nothing.

    The same store call charges the request's budgets (``plan``) when, and only
    when, the reservation is new (a replay charges nothing), and leaves their
    decisions in ``ctx.budgets`` for the rate-limit stage: one round trip for
    stages 5 and 6, with the outcome of running them one after the other.
    """

    name = "replay"

    def __init__(self, stores: Admitter, window_s: float, plan: BudgetPlan) -> None:
        self._stores = stores
        self._ttl_s = 2.0 * window_s
        self._plan = plan
        # Stores that answer at once (memory) are asked without a Deferred, unless ``admit`` was
        # replaced on the instance (tracing's span per call): then that one is what must be called.
        admit_now: SyncAdmit | None = getattr(stores, "admit_now", None)
        self._admit_now = None if "admit" in getattr(stores, "__dict__", ()) else admit_now

    def check(self, ctx: RequestContext) -> Deferred[None] | None:
        env = ctx.env
        budgets: tuple[tuple[str, Budget], ...] = self._plan.budgets(ctx)
        key = replay_key(env.device_session_id, env.request_id)
        admit_now = self._admit_now
        if admit_now is not None:
            try:
                decisions = admit_now(key, self._ttl_s, budgets)
            except StoreUnavailable:
                raise _unavailable() from None
            _decided(decisions, ctx)
            return None
        d: Deferred[Any] = self._stores.admit(key, self._ttl_s, budgets)
        if d.called and not d.paused and not isinstance(d.result, Failure):
            # The memory stores answer at once: decide now, without a callback (as _run_stages reads it too).
            admission: Any = d.result
            self._admitted(admission, ctx)
            return None
        return d.addCallbacks(self._admitted, self._failed, callbackArgs=(ctx,))

    @staticmethod
    def _admitted(admission: Admission, ctx: RequestContext) -> None:
        _decided(admission.decisions if admission.fresh else None, ctx)

    @staticmethod
    def _failed(failure: Failure) -> Failure:
        if failure.check(StoreUnavailable):
            raise _unavailable()
        return failure


def _decided(decisions: tuple[RateDecision, ...] | None, ctx: RequestContext) -> None:
    """The stores' answer: the budgets' decisions for a fresh request id, ``None`` for a replayed one."""
    if decisions is None:
        raise RpcError(Code.ALREADY_EXISTS, "request_id already used")
    ctx.budgets = decisions


def _unavailable() -> RpcError:
    return RpcError(Code.UNAVAILABLE, "replay or rate limit store unavailable")
