"""Tracing (PROTOCOL.md section 8) against a whole in-process gateway and the reference backend, whose
HTTP site records the ``traceparent``/``tracestate`` of every request it receives.

With ``[tracing]`` on, spans go to an in-memory exporter: the call's span continues the client's
trace (or starts one), each stage is its child, the session lookup, the store request and the user
route are children of their stages, and the backend receives exactly those spans' ids. With tracing
off, the client's trace context reaches the backend unchanged, and no span exists.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_twisted
import treq
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from twisted.internet import threads
from twisted.web.resource import Resource

from gatewayd._proto.gateway.v1.gateway_pb2 import ExecuteCommandRequest, ExecuteCommandResponse
from gatewayd.client.client import EXECUTE_COMMAND_PATH
from gatewayd.rpc.codes import Code
from gatewayd.rpc.framing import encode_frame
from gatewayd.testing.client import RunningGateway, login, new_email, signed_execute_request, start_gateway

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
TRACESTATE = "vendor=opaque-value,other=1"
STAGES = ["envelope", "session", "payload_hash", "signature", "freshness", "replay", "rate_limit", "route"]


@dataclass
class Received:
    method: str
    path: str
    traceparent: str | None
    tracestate: str | None
    device_session_id: str | None  # X-Device-Session-Id of a user route


class Recording(Resource):
    """In front of the reference backend's resource: remembers each request's trace headers."""

    isLeaf = True

    def __init__(self, inner: Any) -> None:
        super().__init__()
        self.inner = inner
        self.requests: list[Received] = []

    def render(self, request: Any) -> Any:
        def header(name: bytes) -> str | None:
            value = request.requestHeaders.getRawHeaders(name)
            return None if value is None else b", ".join(value).decode("latin-1")

        self.requests.append(Received(request.method.decode(), request.path.decode(), header(b"traceparent"),
                                      header(b"tracestate"), header(b"x-device-session-id")))
        return self.inner.render(request)

    def for_session(self, device_session_id: str) -> list[Received]:
        """The session lookups and user-route requests of one device session."""
        return [r for r in self.requests if r.path == f"/api/v1/internal/sessions/{device_session_id}"
                or r.device_session_id == device_session_id]


@dataclass
class Traced:
    gw: RunningGateway
    backend: Recording
    spans: InMemorySpanExporter | None

    @property
    def exported(self) -> InMemorySpanExporter:
        assert self.spans is not None, "tracing is off"
        return self.spans

    async def fresh_request(self) -> tuple[str, ExecuteCommandRequest]:
        """A new device session and a signed request of it; no span recorded so far."""
        device_session_id, request = await _request(self.gw)
        if self.spans is not None:
            self.spans.clear()
        return device_session_id, request

    async def stop(self) -> None:
        await self.gw.stop()
        if self.gw.gateway.tracing is not None:
            await self.gw.gateway.tracing.shutdown()


async def _start(tmp_path: Any, **sections: Any) -> Traced:
    gw = await start_gateway(str(tmp_path / "state"), **sections)
    site = gw.backend_service.http_port.factory
    site.resource = recording = Recording(site.resource)
    exporter = None
    if gw.gateway.tracing is not None:
        exporter = InMemorySpanExporter()
        gw.gateway.tracing.provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Traced(gw, recording, exporter)


@pytest_twisted.async_yield_fixture
async def traced(tmp_path: Any) -> AsyncIterator[Traced]:
    env = await _start(tmp_path, tracing={"enabled": True, "exporter": "none"})
    try:
        yield env
    finally:
        await env.stop()


@pytest_twisted.async_yield_fixture
async def untraced(tmp_path: Any) -> AsyncIterator[Traced]:
    env = await _start(tmp_path)
    try:
        yield env
    finally:
        await env.stop()


async def _request(gw: RunningGateway, message_type: str = "user.profile.get") -> tuple[str, ExecuteCommandRequest]:
    key, session = await login(gw.url, new_email("trace"))
    return session.device_session_id, signed_execute_request(key, session.device_session_id, message_type)


def _grpc(port: int, request: ExecuteCommandRequest, metadata: list[tuple[str, str]]) -> ExecuteCommandResponse:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        execute = channel.unary_unary(EXECUTE_COMMAND_PATH, request_serializer=ExecuteCommandRequest.SerializeToString,
                                      response_deserializer=ExecuteCommandResponse.FromString)
        response: ExecuteCommandResponse = execute(request, metadata=metadata, timeout=10)
        return response


async def _connect(gw: RunningGateway, request: ExecuteCommandRequest, headers: dict[str, str]) -> int:
    response = await treq.post(gw.url + EXECUTE_COMMAND_PATH, request.SerializeToString(),
                               headers={"content-type": "application/proto", **headers})
    await response.content()
    return int(response.code)


async def _grpc_web(gw: RunningGateway, request: ExecuteCommandRequest, headers: dict[str, str]) -> int:
    """The call's grpc-status (from the trailer frame, or the headers of a trailers-only answer)."""
    response = await treq.post(gw.url + EXECUTE_COMMAND_PATH, encode_frame(request.SerializeToString()),
                               headers={"content-type": "application/grpc-web+proto", **headers})
    body = (await response.content()).decode("latin-1")
    in_headers = response.headers.getRawHeaders("grpc-status")
    if in_headers:
        return int(in_headers[0])
    return int(body.rsplit("grpc-status:", 1)[1].split("\r\n")[0].strip())


def _by_name(spans: list[ReadableSpan]) -> dict[str, ReadableSpan]:
    named = {span.name: span for span in spans}
    assert len(named) == len(spans), [s.name for s in spans]
    return named


def _hex(span: ReadableSpan) -> tuple[str, str]:
    context = span.get_span_context()
    assert context is not None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def _parent_of(span: ReadableSpan) -> str | None:
    return None if span.parent is None else f"{span.parent.span_id:016x}"


def _traceparent(span: ReadableSpan) -> str:
    context = span.get_span_context()
    assert context is not None
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


@pytest_twisted.ensureDeferred
async def test_a_call_continues_the_clients_trace_through_every_stage_to_the_backend(traced: Traced) -> None:
    gw, spans = traced.gw, traced.exported
    device_session_id, request = await traced.fresh_request()
    metadata = [("traceparent", f"00-{TRACE_ID}-{CLIENT_SPAN}-01"), ("tracestate", TRACESTATE)]
    response = await threads.deferToThread(_grpc, gw.port.getHost().port, request, metadata)
    assert response.envelope.result_code == "ok"

    named = _by_name(list(spans.get_finished_spans()))
    call = named["gateway.v1.Gateway/ExecuteCommand"]
    assert call.kind is SpanKind.SERVER
    assert _hex(call)[0] == TRACE_ID and _parent_of(call) == CLIENT_SPAN  # the client's trace, its span as parent
    assert call.attributes is not None
    assert call.attributes["rpc.system"] == "grpc" and call.attributes["rpc.grpc.status_code"] == 0
    assert call.attributes["rpc.service"] == "gateway.v1.Gateway" and call.attributes["rpc.method"] == "ExecuteCommand"
    call_id = _hex(call)[1]
    stages = sorted((s for s in named.values() if s.name.startswith("stage ")), key=lambda s: s.start_time or 0)
    assert [s.name for s in stages] == [f"stage {name}" for name in STAGES]
    for stage in stages:
        assert _hex(stage)[0] == TRACE_ID and _parent_of(stage) == call_id
        assert stage.attributes is not None and stage.attributes["gatewayd.outcome"] == "ok"
    stage_ids = {s.name: _hex(s)[1] for s in stages}

    lookup = named["GET /api/v1/internal/sessions/{device_session_id}"]
    route = named["GET /api/v1/user/profile"]
    store = named["store admit"]
    assert (lookup.kind, route.kind, store.kind) == (SpanKind.CLIENT,) * 3
    assert _parent_of(lookup) == stage_ids["stage session"]
    assert _parent_of(store) == stage_ids["stage replay"]
    assert _parent_of(route) == stage_ids["stage route"]
    assert route.attributes is not None and route.attributes["http.response.status_code"] == 200
    assert len(named) == 1 + len(STAGES) + 3

    # The backend got each request's own span as parent, in the client's trace, with its tracestate.
    received = traced.backend.for_session(device_session_id)
    assert [(r.method, r.path) for r in received] == [
        ("GET", f"/api/v1/internal/sessions/{device_session_id}"), ("GET", "/api/v1/user/profile")]
    assert [r.traceparent for r in received] == [_traceparent(lookup), _traceparent(route)]
    assert [r.tracestate for r in received] == [TRACESTATE, TRACESTATE]


@pytest_twisted.ensureDeferred
async def test_without_a_traceparent_the_gateway_starts_the_trace(traced: Traced) -> None:
    gw, spans = traced.gw, traced.exported
    device_session_id, request = await traced.fresh_request()
    assert await _connect(gw, request, {}) == 200
    named = _by_name(list(spans.get_finished_spans()))
    call = named["gateway.v1.Gateway/ExecuteCommand"]
    assert call.parent is None  # a root span: a new trace
    assert call.attributes is not None and call.attributes["rpc.system"] == "connect_rpc"
    trace_id = _hex(call)[0]
    assert trace_id != TRACE_ID
    received = traced.backend.for_session(device_session_id)
    assert [r.traceparent for r in received] == [
        _traceparent(named["GET /api/v1/internal/sessions/{device_session_id}"]),
        _traceparent(named["GET /api/v1/user/profile"]),
    ]
    assert all(r.tracestate is None for r in received)


@pytest_twisted.ensureDeferred
async def test_a_rejected_call_names_its_stage_and_reaches_no_route(traced: Traced) -> None:
    gw, spans = traced.gw, traced.exported
    device_session_id, request = await traced.fresh_request()
    request.signature = bytes(64)
    status = await _grpc_web(gw, request, {"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"})
    assert status == Code.UNAUTHENTICATED
    named = _by_name(list(spans.get_finished_spans()))
    call = named["gateway.v1.Gateway/ExecuteCommand"]
    assert call.attributes is not None
    assert call.attributes["gatewayd.rejected_by"] == "signature"
    assert call.attributes["rpc.grpc.status_code"] == int(Code.UNAUTHENTICATED)
    assert call.attributes["gatewayd.protocol"] == "grpc-web"
    assert call.status.status_code is StatusCode.UNSET  # a client's mistake is no server error
    signature = named["stage signature"]
    assert signature.status.status_code is StatusCode.ERROR
    assert signature.attributes is not None and signature.attributes["gatewayd.outcome"] == "unauthenticated"
    assert "stage freshness" not in named and "stage route" not in named
    assert [r.path for r in traced.backend.for_session(device_session_id)] == [
        f"/api/v1/internal/sessions/{device_session_id}"]


@pytest_twisted.ensureDeferred
async def test_an_unsampled_client_trace_records_nothing_but_still_propagates(traced: Traced) -> None:
    gw, spans = traced.gw, traced.exported
    device_session_id, request = await traced.fresh_request()
    assert await _connect(gw, request, {"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-00"}) == 200
    assert list(spans.get_finished_spans()) == []
    received = traced.backend.for_session(device_session_id)
    assert len(received) == 2
    parents = set()
    for r in received:
        assert r.traceparent is not None
        version, trace_id, parent, flags = r.traceparent.split("-")
        # The client's trace and decision; the parent is the gateway's own (unrecorded) call span.
        assert (version, trace_id, flags) == ("00", TRACE_ID, "00") and parent != CLIENT_SPAN
        parents.add(parent)
    assert len(parents) == 1  # no child spans for a call not sampled


@pytest_twisted.ensureDeferred
async def test_sample_ratio_zero_records_no_new_trace_but_still_starts_one(tmp_path: Any) -> None:
    env = await _start(tmp_path, tracing={"enabled": True, "exporter": "none", "sample_ratio": 0.0})
    try:
        device_session_id, request = await env.fresh_request()
        assert await _connect(env.gw, request, {}) == 200
        assert list(env.exported.get_finished_spans()) == []
        received = env.backend.for_session(device_session_id)
        assert len(received) == 2 and received[0].traceparent == received[1].traceparent
        assert received[0].traceparent is not None
        _, trace_id, _, flags = received[0].traceparent.split("-")
        assert trace_id != "0" * 32 and int(flags, 16) & 1 == 0  # a new trace, not sampled
    finally:
        await env.stop()


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("protocol", ["grpc", "grpc-web", "connect"])
async def test_tracing_off_passes_the_clients_trace_context_through_unchanged(untraced: Traced,
                                                                              protocol: str) -> None:
    gw = untraced.gw
    assert gw.gateway.tracing is None
    traceparent = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
    device_session_id, request = await _request(gw)
    headers = {"traceparent": traceparent, "tracestate": TRACESTATE}
    if protocol == "grpc":
        await threads.deferToThread(_grpc, gw.port.getHost().port, request, list(headers.items()))
    elif protocol == "grpc-web":
        assert await _grpc_web(gw, request, headers) == Code.OK
    else:
        assert await _connect(gw, request, headers) == 200
    received = untraced.backend.for_session(device_session_id)
    assert [(r.traceparent, r.tracestate) for r in received] == [(traceparent, TRACESTATE)] * 2


@pytest_twisted.ensureDeferred
async def test_tracing_off_sends_no_trace_context_of_its_own_and_drops_an_invalid_one(untraced: Traced) -> None:
    gw = untraced.gw
    # Off: no stage is wrapped, no span is ever made.
    assert all(type(stage).__module__.startswith("gatewayd.pipeline.") for stage in gw.gateway.pipeline.stages)
    device_session_id, request = await _request(gw)
    assert await _connect(gw, request, {}) == 200
    _, second = await _request(gw)
    bad = {"traceparent": f"00-{'0' * 32}-{CLIENT_SPAN}-01", "tracestate": TRACESTATE}
    assert await _connect(gw, second, bad) == 200
    for session in (device_session_id, second.envelope.device_session_id):
        received = untraced.backend.for_session(session)
        assert len(received) == 2
        assert all(r.traceparent is None and r.tracestate is None for r in received)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("tracing", [True, False])
async def test_the_public_rest_proxy_passes_the_clients_trace_context_on(tmp_path: Any, tracing: bool) -> None:
    env = await _start(tmp_path, tracing={"enabled": tracing, "exporter": "none"})
    try:
        traceparent = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
        response = await treq.post(env.gw.url + "/api/v1/public/auth/send-email-code",
                                   b'{"email": "trace-rest@example.com"}',
                                   headers={"content-type": "application/json", "traceparent": traceparent,
                                            "tracestate": TRACESTATE})
        await response.content()
        assert response.code == 200
        (received,) = [r for r in env.backend.requests if r.path == "/api/v1/public/auth/send-email-code"]
        assert (received.traceparent, received.tracestate) == (traceparent, TRACESTATE)
    finally:
        await env.stop()
