"""Stage 7: route the command to its backend user route and sign whatever the backend answers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from gatewayd.backend.rest import BackendAnswer, BackendUnavailable
from gatewayd.config import Route
from gatewayd.pipeline.context import RequestContext
from gatewayd.pipeline.result_codes import result_code_for_status
from gatewayd.pipeline.signer import ResponseSigner
from gatewayd.rpc.call import Call
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError


class RouteCaller(Protocol):
    """What routing needs of the backend client; ``call`` is the call being routed (the backend
    request continues its trace: ``gatewayd.observability.propagation``)."""

    def call_route(
        self, route: Route, payload: bytes, user_id: str, device_session_id: str, request_id: str,
        call: Call | None = None,
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
            route, ctx.payload, session.user_id, env.device_session_id, env.request_id, ctx.call
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
