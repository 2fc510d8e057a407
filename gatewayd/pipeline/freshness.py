"""Stage 5a: the request's timestamp is within the freshness window of the gateway's clock."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from gatewayd.pipeline.context import Clock, RequestContext, now_ms
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError


class FreshnessStage:
    """Rejects (FAILED_PRECONDITION) a request older or newer than ``window_s``.

    The message carries the gateway's time so a client with a skewed clock can correct itself.
    """

    name = "freshness"

    def __init__(self, clock: Clock, window_s: float) -> None:
        self._clock = clock
        self._window_ms = int(window_s * 1000)

    def check(self, ctx: RequestContext) -> Deferred[None] | None:
        now = now_ms(self._clock)
        if abs(now - ctx.env.timestamp_ms) > self._window_ms:
            raise RpcError(Code.FAILED_PRECONDITION, f"stale request; gateway time {now}")
        return None
