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
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from gatewayd._proto.gateway.v1.gateway_pb2 import (
    ExecuteCommandRequest,
    ExecuteCommandResponse,
    GatewayEvent,
    SubscribeEventsRequest,
)
from gatewayd.backend.rest import Session
from gatewayd.config import LimitsConfig, Route
from gatewayd.pipeline.context import SUBSCRIBE_MESSAGE_TYPE, Clock, Envelope, RequestContext, Stage
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

_T = TypeVar("_T")

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
            Envelope(request.envelope) if request.HasField("envelope") else None,
            request.payload_bytes,
            request.signature,
        )
        return self._drive(self.stages, ctx, _response)

    def verify_subscription(self, call: Call, request: SubscribeEventsRequest) -> Deferred[VerifiedCaller]:
        """Stages 1-6 for SubscribeEvents (message_type ``gateway.subscribe``, empty payload)."""
        ctx = RequestContext(
            call,
            Envelope(request.envelope) if request.HasField("envelope") else None,
            b"",
            request.signature,
            subscription=True,
        )
        return self._drive(self.subscription_stages, ctx, _verified_caller)

    def _drive(
        self, stages: Sequence[Stage], ctx: RequestContext, finish: Callable[[RequestContext], _T]
    ) -> Deferred[_T]:
        """Run ``stages`` in order, then ``finish(ctx)``; a Deferred of that, or of the first rejection.

        Cancelling the Deferred cancels the stage waiting at the time.
        """
        try:
            waiting = _run_stages(stages, 0, ctx, self._on_stage, self._timer, finish)
        except BaseException:  # whatever a stage raised is the call's failure
            _note_session(ctx)
            return fail()
        if waiting is None:  # every stage answered at once: nothing was waited on
            _note_session(ctx)
            try:
                return succeed(finish(ctx))
            except BaseException:
                return fail()
        return waiting  # fires with finish(ctx) (_resume notes the session and finishes)


def _note_session(ctx: RequestContext) -> None:
    """For the access log: which session asked, once the envelope stage accepted its syntax."""
    context = ctx.call.context
    if ctx.envelope is not None and context.get(STAGE_KEY) != "envelope":
        context[DEVICE_SESSION_KEY] = ctx.envelope.device_session_id


def _response(ctx: RequestContext) -> ExecuteCommandResponse:
    if ctx.response is None:
        raise RpcError(Code.INTERNAL, "no response")
    return ctx.response


def _verified_caller(ctx: RequestContext) -> VerifiedCaller:
    env = ctx.env
    return VerifiedCaller(ctx.caller, env.request_id, env.timestamp_ms)


def _rejected(stage: Stage, ctx: RequestContext, error: BaseException | None) -> str:
    """The outcome an observer is told; a rejection (RpcError) also names its stage in ``Call.context``."""
    if error is None:
        return "ok"
    if isinstance(error, RpcError):
        ctx.call.context[STAGE_KEY] = stage.name
        return error.code.connect_name
    return "error"


def _run_stages(stages: Sequence[Stage], index: int, ctx: RequestContext, observe: StageObserver | None,
                timer: Callable[[], float], finish: Callable[[RequestContext], Any],
                start: float | None = None) -> Deferred[Any] | None:
    """Run ``stages[index:]``: ``None`` when all passed at once, the first rejection raised
    when one refused at once, else the waiting stage's own Deferred, which goes on to fire
    with ``finish(ctx)`` after the rest (``_resume``), or with the first rejection.

    A stage that answers at once (``None``, or a Deferred that has already fired
    with a value, as the memory stores' do) costs no coroutine frame and no
    callback: the run moves on in the same call, as ``await`` on a fired
    Deferred would. A stage that waits gets ``_resume`` as its next callback, and
    its Deferred is the run's: no Deferred of our own to fire. A later stage that
    waits too is returned from ``_resume``, which chains the first Deferred to it
    (Twisted's own chaining), so cancelling the run's Deferred cancels whichever
    stage is waiting at the time. Each stage is reported to ``observe`` once, when
    it has decided, with the time from its start (``start``: when the previous one ended).
    """
    count = len(stages)
    if start is None:
        start = timer() if observe is not None else 0.0
    while index < count:
        stage = stages[index]
        try:
            pending = stage.check(ctx)
            # (called, paused and result are what Deferred.__await__ reads too.)
            if pending is not None and (not pending.called or pending.paused or isinstance(pending.result, Failure)):
                if pending.called and not pending.paused:  # it had already failed: a rejection at once
                    refused: Any = pending.result
                    pending.addErrback(_handled)  # raised here instead
                    refused.raiseException()
                return pending.addBoth(_resume, stages, index, ctx, observe, timer, finish, start)
        except BaseException as e:
            outcome = _rejected(stage, ctx, e)
            if observe is not None:
                observe(stage.name, timer() - start, outcome)
            raise
        if observe is not None:
            # One clock read ends this stage and starts the next (the observer's own time, well under
            # the smallest histogram bucket, goes to the next stage).
            end = timer()
            observe(stage.name, end - start, "ok")
            start = end
        index += 1
    return None


def _handled(_: Failure) -> None:
    """An errback that consumes a failure which was raised instead."""


def _resume(result: Any, stages: Sequence[Stage], index: int, ctx: RequestContext, observe: StageObserver | None,
            timer: Callable[[], float], finish: Callable[[RequestContext], Any], start: float) -> Any:
    """The callback of a waiting stage's Deferred: observe its decision, then run the stages after it.

    Returns ``finish(ctx)`` (the session noted first), the rejection, or the Deferred of a later
    stage that waits in turn (the run's Deferred then waits on it, cancellation included).
    """
    stage = stages[index]
    failed = isinstance(result, Failure)
    outcome = _rejected(stage, ctx, result.value if failed else None)
    end = 0.0
    if observe is not None:
        end = timer()
        observe(stage.name, end - start, outcome)
    if failed:
        _note_session(ctx)
        return result
    try:
        rest = _run_stages(stages, index + 1, ctx, observe, timer, finish, end)
    except BaseException:
        _note_session(ctx)
        raise
    if rest is not None:
        return rest  # waiting again, on a later stage
    _note_session(ctx)
    return finish(ctx)


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


