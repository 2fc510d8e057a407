"""The verification pipeline: every stage of PROTOCOL.md section 3, in one visible list.

``Pipeline.execute_command`` runs all of them (ending with routing and the signed
response); ``Pipeline.verify_subscription`` runs all but routing for
SubscribeEvents. The first stage that raises decides the call's status, and
nothing after it runs, so a rejected request never reaches a user route.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from twisted.internet.defer import Deferred

from gatewayd._proto.gateway.v1.gateway_pb2 import (
    ExecuteCommandRequest,
    ExecuteCommandResponse,
    GatewayEvent,
    SubscribeEventsRequest,
)
from gatewayd.backend.rest import Session
from gatewayd.config import LimitsConfig, Route
from gatewayd.pipeline.context import SUBSCRIBE_MESSAGE_TYPE, Clock, RequestContext, Stage
from gatewayd.pipeline.envelope import EnvelopeStage
from gatewayd.pipeline.freshness import FreshnessStage
from gatewayd.pipeline.payload_hash import PayloadHashStage
from gatewayd.pipeline.rate_limit import BudgetPlan, RateLimitStage
from gatewayd.pipeline.replay import ReplayStage
from gatewayd.pipeline.route import RouteCaller, RouteStage
from gatewayd.pipeline.session import SessionSource, SessionStage
from gatewayd.pipeline.signature import SignatureStage
from gatewayd.pipeline.signer import ResponseSigner
from gatewayd.rpc.call import Call
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.methods import Method, StreamHandler
from gatewayd.stores.base import Stores

EXECUTE_COMMAND_PATH = "/gateway.v1.Gateway/ExecuteCommand"
SUBSCRIBE_EVENTS_PATH = "/gateway.v1.Gateway/SubscribeEvents"

STAGE_KEY = "rejected_by"
"""``Call.context`` key: the name of the stage that rejected the call."""
DEVICE_SESSION_KEY = "device_session_id"
"""``Call.context`` key: the envelope's device_session_id, once the envelope was read."""

StageObserver = Callable[[str, float, str], None]
"""``on_stage(stage_name, seconds, outcome)``; outcome is ``"ok"``, a lowercase code name
(``"unauthenticated"``) or ``"error"`` (anything else, e.g. cancellation)."""


@dataclass(frozen=True, slots=True)
class VerifiedCaller:
    """A SubscribeEvents caller that passed stages 1-6."""

    session: Session
    request_id: str
    timestamp_ms: int

    @property
    def device_session_id(self) -> str:
        return self.session.device_session_id

    @property
    def user_id(self) -> str:
        return self.session.user_id


class Pipeline:
    """Verifies, routes and signs ExecuteCommand; verifies SubscribeEvents."""

    def __init__(
        self,
        *,
        clock: Clock,
        sessions: SessionSource,
        stores: Stores,
        backend: RouteCaller,
        routes: Mapping[str, Route],
        signer: ResponseSigner,
        freshness_window_s: float,
        limits: LimitsConfig,
        on_stage: StageObserver | None = None,
        timer: Callable[[], float] = time.perf_counter,
        wrap_stage: Callable[[Stage], Stage] | None = None,
    ) -> None:
        # ``wrap_stage`` (tracing: a span per stage) wraps each stage of the list below, keeping its name.
        self._wrap_stage = wrap_stage
        self._stores = stores
        self._freshness_window_s = freshness_window_s
        self._backend = backend
        self._signer = signer
        # PROTOCOL.md section 3, in order. The first failing stage decides the code.
        self.stages: tuple[Stage, ...] = (
            *self._wrapped(
                EnvelopeStage(),
                SessionStage(sessions),
                PayloadHashStage(),
                SignatureStage(),
                FreshnessStage(clock, freshness_window_s),  # before replay: a stale request reserves nothing
            ),
            *self._configured_stages(routes, limits),
        )
        # SubscribeEvents runs stages 1-6: everything but routing.
        self.subscription_stages: tuple[Stage, ...] = tuple(s for s in self.stages if s.name != RouteStage.name)
        self._on_stage = on_stage
        self._timer = timer

    def _configured_stages(self, routes: Mapping[str, Route], limits: LimitsConfig) -> tuple[Stage, Stage, Stage]:
        # Replay and rate limit share one store call (Stores.admit), so the budgets go to the replay stage.
        plan = BudgetPlan(limits, frozenset(routes) | {SUBSCRIBE_MESSAGE_TYPE})
        replay, rate, route = self._wrapped(
            ReplayStage(self._stores, self._freshness_window_s, plan),
            RateLimitStage(),
            RouteStage(routes, self._backend, self._signer),
        )
        return replay, rate, route

    def _wrapped(self, *stages: Stage) -> tuple[Stage, ...]:
        wrap = self._wrap_stage
        return stages if wrap is None else tuple(wrap(stage) for stage in stages)

    def reconfigure(self, routes: Mapping[str, Route], limits: LimitsConfig) -> None:
        """New routes and budgets for calls that start from now on (SIGHUP reload)."""
        replay, rate, route = self._configured_stages(routes, limits)
        self.stages = (*self.stages[:-3], replay, rate, route)
        self.subscription_stages = (*self.subscription_stages[:-2], replay, rate)

    def execute_command(self, call: Call, request: ExecuteCommandRequest) -> Deferred[ExecuteCommandResponse]:
        """The UnaryHandler of ExecuteCommand: the signed response, or ``RpcError``."""
        ctx = RequestContext(
            call,
            request.envelope if request.HasField("envelope") else None,
            request.payload_bytes,
            request.signature,
        )
        return Deferred.fromCoroutine(self._execute(ctx))

    def verify_subscription(self, call: Call, request: SubscribeEventsRequest) -> Deferred[VerifiedCaller]:
        """Stages 1-6 for SubscribeEvents (message_type ``gateway.subscribe``, empty payload)."""
        ctx = RequestContext(
            call,
            request.envelope if request.HasField("envelope") else None,
            b"",
            request.signature,
            subscription=True,
        )
        return Deferred.fromCoroutine(self._verify(ctx))

    async def _execute(self, ctx: RequestContext) -> ExecuteCommandResponse:
        await self._run(self.stages, ctx)
        if ctx.response is None:
            raise RpcError(Code.INTERNAL, "no response")
        return ctx.response

    async def _verify(self, ctx: RequestContext) -> VerifiedCaller:
        await self._run(self.subscription_stages, ctx)
        env = ctx.env
        return VerifiedCaller(ctx.caller, env.request_id, env.timestamp_ms)

    async def _run(self, stages: Sequence[Stage], ctx: RequestContext) -> None:
        try:
            await self._run_stages(stages, ctx)
        finally:
            # For the access log: which session asked, once the envelope stage accepted its syntax.
            context = ctx.call.context
            if ctx.envelope is not None and context.get(STAGE_KEY) != "envelope":
                context[DEVICE_SESSION_KEY] = ctx.envelope.device_session_id

    async def _run_stages(self, stages: Sequence[Stage], ctx: RequestContext) -> None:
        observe = self._on_stage
        if observe is None:
            for stage in stages:
                try:
                    pending = stage.check(ctx)
                    if pending is not None:
                        await pending
                except RpcError:
                    ctx.call.context[STAGE_KEY] = stage.name
                    raise
            return
        timer = self._timer
        for stage in stages:
            start = timer()
            try:
                pending = stage.check(ctx)
                if pending is not None:
                    await pending
            except RpcError as e:
                ctx.call.context[STAGE_KEY] = stage.name
                observe(stage.name, timer() - start, e.code.connect_name)
                raise
            except BaseException:
                observe(stage.name, timer() - start, "error")
                raise
            observe(stage.name, timer() - start, "ok")


def gateway_methods(pipeline: Pipeline, subscribe: StreamHandler) -> list[Method]:
    """The ``gateway.v1.Gateway`` method table entries: ExecuteCommand through ``pipeline``,
    SubscribeEvents through ``subscribe`` (which calls ``pipeline.verify_subscription``)."""
    return [
        Method(
            EXECUTE_COMMAND_PATH,
            ExecuteCommandRequest,
            ExecuteCommandResponse,
            unary=pipeline.execute_command,
        ),
        Method(SUBSCRIBE_EVENTS_PATH, SubscribeEventsRequest, GatewayEvent, stream=subscribe),
    ]


