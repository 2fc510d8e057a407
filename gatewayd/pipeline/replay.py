"""Stage 5b: a (device_session_id, request_id) pair is used once while it could still be fresh."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from gatewayd.pipeline.context import RequestContext
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from gatewayd.stores.base import ReplayStore, StoreUnavailable


def replay_key(device_session_id: str, request_id: str) -> str:
    return f"replay:{device_session_id}:{request_id}"


class ReplayStage:
    """Reserves the request id; a second use -> ALREADY_EXISTS, store down -> UNAVAILABLE.

    The reservation lives twice the freshness window: a request is fresh for
    ``window`` on either side of its timestamp, so it must be remembered for
    ``2 x window`` after first use to be refused for as long as it would pass
    the freshness stage. Freshness runs first, so a stale request reserves nothing.
    """

    name = "replay"

    def __init__(self, store: ReplayStore, window_s: float) -> None:
        self._store = store
        self._ttl_s = 2.0 * window_s

    def check(self, ctx: RequestContext) -> Deferred[None] | None:
        env = ctx.env
        d: Deferred[Any] = self._store.reserve(replay_key(env.device_session_id, env.request_id), self._ttl_s)
        return d.addCallbacks(self._reserved, self._failed)

    @staticmethod
    def _reserved(fresh: bool) -> None:
        if not fresh:
            raise RpcError(Code.ALREADY_EXISTS, "request_id already used")

    @staticmethod
    def _failed(failure: Failure) -> Failure:
        if failure.check(StoreUnavailable):
            raise RpcError(Code.UNAVAILABLE, "replay store unavailable")
        return failure
