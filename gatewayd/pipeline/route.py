"""Stage 7: route the command to its backend user route and sign whatever the backend answers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from gatewayd.backend.rest import BackendAnswer, BackendUnavailable
from gatewayd.config import Route
from gatewayd.pipeline.context import RequestContext
from gatewayd.pipeline.signer import ResponseSigner
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError

# PROTOCOL.md section 5: the backend's HTTP status as the response's result_code.
_RESULT_CODES = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    409: "already_exists",
    412: "failed_precondition",
    429: "resource_exhausted",
    501: "unimplemented",
    503: "unavailable",
    504: "deadline_exceeded",
}


def result_code_for_status(status: int) -> str:
    """``ok`` for 2xx, the table's code, other 4xx ``invalid_argument``, anything else ``internal``.

    The protocol names 5xx as ``internal``; 1xx and 3xx (a backend that redirects)
    are the backend misbehaving too, so they are ``internal`` as well.
    """
    if 200 <= status < 300:
        return "ok"
    code = _RESULT_CODES.get(status)
    if code is not None:
        return code
    return "invalid_argument" if 400 <= status < 500 else "internal"


class RouteCaller(Protocol):
    """What routing needs of the backend client."""

    def call_route(
        self, route: Route, payload: bytes, user_id: str, device_session_id: str, request_id: str
    ) -> Deferred[BackendAnswer]: ...


class RouteStage:
    """No route -> UNIMPLEMENTED; backend unreachable or timed out -> UNAVAILABLE;
    any HTTP answer -> ``ctx.response``, a signed ExecuteCommandResponse."""

    name = "route"

    def __init__(self, routes: Mapping[str, Route], backend: RouteCaller, signer: ResponseSigner) -> None:
        self._routes = routes
        self._backend = backend
        self._signer = signer

    def check(self, ctx: RequestContext) -> Deferred[None] | None:
        env = ctx.env
        route = self._routes.get(env.message_type)
        if route is None:
            raise RpcError(Code.UNIMPLEMENTED, "no route for message_type")
        session = ctx.caller
        d: Deferred[Any] = self._backend.call_route(
            route, ctx.payload, session.user_id, env.device_session_id, env.request_id
        )
        return d.addCallbacks(self._answered, self._failed, callbackArgs=(ctx,))

    def _answered(self, answer: BackendAnswer, ctx: RequestContext) -> None:
        env = ctx.env
        ctx.response = self._signer.sign(
            env.device_session_id, env.request_id, result_code_for_status(answer.status), answer.body
        )

    @staticmethod
    def _failed(failure: Failure) -> Failure:
        if failure.check(BackendUnavailable):
            raise RpcError(Code.UNAVAILABLE, "backend unavailable")
        return failure
