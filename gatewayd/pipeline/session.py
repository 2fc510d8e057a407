"""Stage 2: the device session is known to the backend and active."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from gatewayd.backend.rest import BackendUnavailable, Session
from gatewayd.pipeline.context import RequestContext
from gatewayd.rpc.call import Call
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError


class SessionSource(Protocol):
    """Where sessions come from (a ``SessionCache``); ``call`` is the call asking (the backend
    request it may cause continues that call's trace)."""

    def get(self, device_session_id: str, call: Call | None = None) -> Deferred[Session | None]: ...


class SessionStage:
    """Looks the session up; unknown or not active -> UNAUTHENTICATED, backend down -> UNAVAILABLE."""

    name = "session"

    def __init__(self, sessions: SessionSource) -> None:
        self._sessions = sessions
        # A cache that tells its fresh answers at once (``SessionCache.fresh_entry``) is asked that
        # first, without a Deferred.
        self._fresh: Callable[[str], tuple[float, Session | None] | None] | None = getattr(
            sessions, "fresh_entry", None)

    def check(self, ctx: RequestContext) -> Deferred[None] | None:
        device_session_id = ctx.env.device_session_id
        fresh = self._fresh
        if fresh is not None:
            entry = fresh(device_session_id)
            if entry is not None:  # what get() would answer at once
                self._found(entry[1], ctx)
                return None
        d: Deferred[Any] = self._sessions.get(device_session_id, ctx.call)
        if d.called and not d.paused and not isinstance(d.result, Failure):
            # A cache hit (already fired): decide now, without a callback (as _run_stages reads it too).
            found: Any = d.result
            self._found(found, ctx)
            return None
        return d.addCallbacks(self._found, self._failed, callbackArgs=(ctx,))

    @staticmethod
    def _found(session: Session | None, ctx: RequestContext) -> None:
        # One message for both cases: do not tell a prober which session ids exist.
        if session is None or not session.active:
            raise RpcError(Code.UNAUTHENTICATED, "unknown or inactive session")
        ctx.session = session

    @staticmethod
    def _failed(failure: Failure) -> Failure:
        if failure.check(BackendUnavailable):
            raise RpcError(Code.UNAVAILABLE, "session backend unavailable")
        return failure
