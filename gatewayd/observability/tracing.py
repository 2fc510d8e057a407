"""OpenTelemetry tracing (PROTOCOL.md section 8, ``[tracing]``): a span per call, per stage, per backend
and store request, and W3C trace context on the backend requests.

Built only when ``tracing.enabled`` (``Gateway`` then uses ``Tracing``; otherwise nothing here is
imported and ``gatewayd.observability.propagation`` copies the client's trace context as it came).

The spans of one call:

- the call's span (kind SERVER, named ``gateway.v1.Gateway/ExecuteCommand``), a child of the
  client's ``traceparent`` when it sent a valid one, else the root of a new trace; started when
  the method's handler starts (``wrap_method``), ended when the call ends (an ``RpcApplication``
  observer) with the status code and, for a rejected call, the stage that rejected it;
- one child per pipeline stage (``stage session``, ...: ``wrap_stage`` wraps each stage of the
  pipeline's one list), a rejection marked as an error with the status code's name;
- one child of the running stage per backend request (kind CLIENT: the session lookup, the user
  route), whose span context is the ``traceparent`` (and ``tracestate``) the backend receives, and
  per store request (``store admit``).

Twisted runs callbacks long after the code that added them returned, so OpenTelemetry's implicit
context (contextvars) would not follow a call through its Deferreds. The call's spans travel on
the call instead: ``Call.context[TRACE_KEY]`` holds its ``CallTrace``, which stages and backend
requests read. The stores are not told which call asks; their span's parent is the stage whose
synchronous ``check`` is running (``Tracing.active``, set and restored around it), read only at the
moment the store request starts.

Sampling: a client's sampled flag is followed; new traces are recorded at ``sample_ratio``. A call
not sampled gets its own span only (not recorded, but with ids), so the backend still gets a
``traceparent``, and costs a fraction of a recorded one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from twisted.internet import threads
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from gatewayd.config import TracingConfig
from gatewayd.observability.propagation import client_trace_headers
from gatewayd.pipeline.pipeline import STAGE_KEY
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError

if TYPE_CHECKING:
    from gatewayd.backend.rest import BackendAnswer, BackendClient, Session
    from gatewayd.config import Budget, Route
    from gatewayd.pipeline.context import RequestContext, Stage
    from gatewayd.rpc.call import Call
    from gatewayd.rpc.methods import Method
    from gatewayd.stores.base import Admission, Stores

TRACE_KEY = "trace"
"""``Call.context`` key: the call's ``CallTrace``."""

# OpenTelemetry's RPC conventions: the codes a server span reports as errors.
_SERVER_ERRORS = frozenset({Code.UNKNOWN, Code.DEADLINE_EXCEEDED, Code.UNIMPLEMENTED, Code.INTERNAL,
                            Code.UNAVAILABLE, Code.DATA_LOSS})
_SESSION_TEMPLATE = "/api/v1/internal/sessions/{device_session_id}"


def build_provider(config: TracingConfig, exporter: SpanExporter | None = None) -> TracerProvider:
    """A provider of its own (never the global one) exporting to ``config.exporter`` (or ``exporter``)."""
    sampler = ParentBased(root=TraceIdRatioBased(config.sample_ratio))
    provider = TracerProvider(sampler=sampler, resource=Resource.create({"service.name": config.service_name}),
                              shutdown_on_exit=False)
    if exporter is None and config.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter(endpoint=config.endpoint or None)
    elif exporter is None and config.exporter == "console":
        exporter = ConsoleSpanExporter()
    if exporter is not None:
        # Exports from a thread of its own: the reactor never waits on a collector.
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


class CallTrace:
    """The spans of one call: its own, and the parent of what starts now (the running stage's span).

    A call not sampled (``recording`` False) gets no child spans at all: they would record
    nothing, and each costs about as much as a recorded one. Its backend requests carry the
    call's own (unrecorded) span as their parent, with the trace's "not sampled" flag.
    """

    __slots__ = ("context", "parent", "recording", "span")

    def __init__(self, span: Span) -> None:
        self.span = span
        self.recording = span.is_recording()
        self.context = trace.set_span_in_context(span)  # the call's span as a parent
        self.parent = self.context


def _rpc_attributes(call: Call) -> dict[str, Any]:
    _, service, method = call.method.split("/", 2) if call.method.count("/") == 2 else ("", "", call.method)
    system = "connect_rpc" if call.protocol.startswith("connect") else "grpc"
    return {"rpc.system": system, "rpc.service": service, "rpc.method": method,
            "gatewayd.protocol": call.protocol, "client.address": call.peer}


class Tracing:
    """One gateway's tracer and the hooks that put its spans on calls, stages, backend and store requests."""

    def __init__(self, config: TracingConfig, provider: TracerProvider | None = None) -> None:
        self.config = config
        self.provider = provider if provider is not None else build_provider(config)
        self.tracer = self.provider.get_tracer("gatewayd")
        self._propagator = TraceContextTextMapPropagator()
        self.active: CallTrace | None = None  # the call whose stage check runs right now (store spans)

    # --- calls -----------------------------------------------------------------------------------

    def wrap_method(self, method: Method) -> Method:
        """``method`` whose handler starts the call's span first."""
        start = self.call_started
        if method.unary is not None:
            unary = method.unary

            def traced_unary(call: Call, request: Any) -> Any:
                start(call)
                return unary(call, request)

            return dataclasses.replace(method, unary=traced_unary)
        stream = method.stream
        assert stream is not None

        def traced_stream(call: Call, request: Any, out: Any) -> Any:
            start(call)
            return stream(call, request, out)

        return dataclasses.replace(method, stream=traced_stream)

    def call_started(self, call: Call) -> CallTrace:
        """Start ``call``'s span, a child of the client's trace context if it sent one."""
        parent = self._propagator.extract(call.metadata)
        name = call.method.lstrip("/")
        span = self.tracer.start_span(name, context=parent, kind=SpanKind.SERVER, attributes=_rpc_attributes(call))
        call_trace = call.context[TRACE_KEY] = CallTrace(span)
        return call_trace

    def call_finished(self, call: Call, code: Code, seconds: float) -> None:
        """An ``RpcApplication`` observer: end the call's span with its status."""
        call_trace = call.context.get(TRACE_KEY)
        if not isinstance(call_trace, CallTrace):
            return
        span = call_trace.span
        if call.protocol.startswith("connect"):
            if code is not Code.OK:
                span.set_attribute("rpc.connect_rpc.error_code", code.connect_name)
        else:
            span.set_attribute("rpc.grpc.status_code", int(code))
        stage = call.context.get(STAGE_KEY)
        if stage is not None:
            span.set_attribute("gatewayd.rejected_by", str(stage))
        if code in _SERVER_ERRORS:
            span.set_status(Status(StatusCode.ERROR, code.connect_name))
        span.end()

    # --- stages ----------------------------------------------------------------------------------

    def wrap_stage(self, stage: Stage) -> Stage:
        """``stage`` with a span around each check (for ``Pipeline(wrap_stage=...)``)."""
        return _TracedStage(stage, self)

    # --- backend and stores ----------------------------------------------------------------------

    def backend(self, client: BackendClient, base_url: str) -> TracedBackend:
        """The pipeline's backend calls (to ``base_url``) with a span each and its trace context on the request."""
        return TracedBackend(client, self, base_url)

    def trace_stores(self, stores: Stores, kind: str) -> None:
        """Give ``stores.admit`` a span per request made from a traced stage (this instance only)."""
        admit = stores.admit
        attributes = {"db.system.name": kind, "db.operation.name": "admit"}
        tracer = self.tracer

        def traced_admit(replay_key: str, ttl_s: float, budgets: Sequence[tuple[str, Budget]]) -> Deferred[Admission]:
            call_trace = self.active
            if call_trace is None or not call_trace.recording:
                return admit(replay_key, ttl_s, budgets)
            span = tracer.start_span("store admit", context=call_trace.parent, kind=SpanKind.CLIENT,
                                     attributes=attributes)
            d = admit(replay_key, ttl_s, budgets)
            return d.addBoth(_end_span, span)

        stores.admit = traced_admit  # type: ignore[method-assign]

    def child_span(self, call_trace: CallTrace, name: str, kind: SpanKind, attributes: dict[str, Any]) -> Span:
        return self.tracer.start_span(name, context=call_trace.parent, kind=kind, attributes=attributes)

    # --- shutdown --------------------------------------------------------------------------------

    def shutdown(self) -> Deferred[None]:
        """Export what is left and stop the exporter (in a thread: it may wait on the collector)."""
        d: Deferred[Any] = threads.deferToThread(self.provider.shutdown)
        return d.addCallback(lambda _: None)


def trace_headers(span: Span) -> bytes:
    """``span`` as the ``traceparent`` (and ``tracestate``) header lines of a backend request."""
    context = span.get_span_context()
    lines = b"traceparent: 00-%032x-%016x-%02x\r\n" % (context.trace_id, context.span_id, context.trace_flags)
    if context.trace_state:
        lines += b"tracestate: " + context.trace_state.to_header().encode("ascii") + b"\r\n"
    return lines


def _end_span(result: Any, span: Span) -> Any:
    """End ``span`` with ``result`` (a Failure marks it an error); pass ``result`` on unchanged."""
    if isinstance(result, Failure):
        span.set_status(Status(StatusCode.ERROR, type(result.value).__name__))
        span.set_attribute("error.type", type(result.value).__name__)
    span.end()
    return result


class _TracedStage:
    """A stage whose every check is a child span of the call's span (and the parent of what it starts)."""

    __slots__ = ("_inner", "_span_name", "_tracing", "name")

    def __init__(self, inner: Stage, tracing: Tracing) -> None:
        self._inner = inner
        self._tracing = tracing
        self.name = inner.name
        self._span_name = f"stage {inner.name}"

    def check(self, ctx: RequestContext) -> Deferred[None] | None:
        call_trace = ctx.call.context.get(TRACE_KEY)
        if not isinstance(call_trace, CallTrace) or not call_trace.recording:
            return self._inner.check(ctx)
        tracing = self._tracing
        span = tracing.tracer.start_span(self._span_name, context=call_trace.context,
                                         attributes={"gatewayd.stage": self.name})
        call_trace.parent = trace.set_span_in_context(span)
        previous, tracing.active = tracing.active, call_trace
        try:
            pending = self._inner.check(ctx)
        except BaseException:
            self._ended(Failure(), span, call_trace)
            raise
        finally:
            tracing.active = previous
        if pending is None:
            self._ended(None, span, call_trace)
            return None
        return pending.addBoth(self._ended, span, call_trace)

    @staticmethod
    def _ended(result: Any, span: Span, call_trace: CallTrace) -> Any:
        call_trace.parent = call_trace.context
        if isinstance(result, Failure):
            error = result.value
            outcome = error.code.connect_name if isinstance(error, RpcError) else "error"
            span.set_attribute("gatewayd.outcome", outcome)
            span.set_status(Status(StatusCode.ERROR, outcome))
        else:
            span.set_attribute("gatewayd.outcome", "ok")
        span.end()
        return result


class TracedBackend:
    """The pipeline's backend calls (as ``propagation.ClientTraceBackend``) with a CLIENT span each,
    whose context the backend receives as its ``traceparent``."""

    def __init__(self, backend: BackendClient, tracing: Tracing, base_url: str) -> None:
        self._backend = backend
        self._tracing = tracing
        parts = urlsplit(base_url)
        self._server = {"server.address": parts.hostname or "", "server.port": parts.port or
                        (443 if parts.scheme == "https" else 80)}

    def get_session(self, device_session_id: str, call: Call | None = None) -> Deferred[Session | None]:
        """``BackendClient.get_session`` for ``call`` (a ``SessionCache`` lookup)."""
        call_trace = None if call is None else call.context.get(TRACE_KEY)
        if not isinstance(call_trace, CallTrace):
            return self._backend.get_session(device_session_id, _client_headers(call))
        if not call_trace.recording:
            return self._backend.get_session(device_session_id, trace_headers(call_trace.span))
        span = self._tracing.child_span(
            call_trace, f"GET {_SESSION_TEMPLATE}", SpanKind.CLIENT,
            {"http.request.method": "GET", "url.template": _SESSION_TEMPLATE, **self._server},
        )
        d: Deferred[Any] = self._backend.get_session(device_session_id, trace_headers(span))
        return d.addBoth(_end_span, span)

    def call_route(
        self, route: Route, payload: bytes, user_id: str, device_session_id: str, request_id: str,
        call: Call | None = None,
    ) -> Deferred[BackendAnswer]:
        """``BackendClient.call_route`` for ``call`` (the pipeline's ``RouteCaller``)."""
        call_trace = None if call is None else call.context.get(TRACE_KEY)
        if not isinstance(call_trace, CallTrace):
            return self._backend.call_route(route, payload, user_id, device_session_id, request_id,
                                            _client_headers(call))
        if not call_trace.recording:
            return self._backend.call_route(route, payload, user_id, device_session_id, request_id,
                                            trace_headers(call_trace.span))
        template = "/api/v1/user/" + route.path
        span = self._tracing.child_span(
            call_trace, f"{route.method} {template}", SpanKind.CLIENT,
            {"http.request.method": route.method, "url.template": template, **self._server},
        )
        d = self._backend.call_route(route, payload, user_id, device_session_id, request_id, trace_headers(span))
        return d.addBoth(_answered, span)


def _answered(result: BackendAnswer | Failure, span: Span) -> Any:
    if not isinstance(result, Failure):
        span.set_attribute("http.response.status_code", result.status)
        if result.status >= 400:  # OpenTelemetry's HTTP client convention
            span.set_status(Status(StatusCode.ERROR))
    return _end_span(result, span)


def _client_headers(call: Call | None) -> bytes:
    return b"" if call is None else client_trace_headers(call.metadata)

