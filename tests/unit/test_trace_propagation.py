"""W3C trace context as the gateway passes it on with tracing off (observability/propagation.py)."""

from __future__ import annotations

import pytest

from gatewayd.observability.propagation import MAX_TRACESTATE_CHARS, client_trace_headers, valid_traceparent

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
VALID = f"00-{TRACE_ID}-{PARENT}-01"


@pytest.mark.parametrize("value", [
    VALID,
    f"00-{TRACE_ID}-{PARENT}-00",  # not sampled: still passed on
    f"01-{TRACE_ID}-{PARENT}-01",  # a later version...
    f"cc-{TRACE_ID}-{PARENT}-01-what-comes-next",  # ... may carry more fields after a dash
])
def test_valid_traceparents(value: str) -> None:
    assert valid_traceparent(value)


@pytest.mark.parametrize("value", [
    "",
    "garbage",
    VALID.upper(),  # upper-case hex
    f"ff-{TRACE_ID}-{PARENT}-01",  # ff is no version
    f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
    f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
    f"00-{TRACE_ID}-{PARENT}-01-extra",  # version 00 has four fields exactly
    f"00-{TRACE_ID}-{PARENT}-1",
    f"00-{TRACE_ID[:-1]}-{PARENT}-01",
    f"01-{TRACE_ID}-{PARENT}-01x",  # after the four fields, only a dash may follow
    VALID + "\r\nX-Evil: 1",
])
def test_invalid_traceparents(value: str) -> None:
    assert not valid_traceparent(value)


def test_header_lines_carry_both_headers_unchanged() -> None:
    state = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    assert client_trace_headers({"traceparent": VALID, "tracestate": state}) == (
        f"traceparent: {VALID}\r\ntracestate: {state}\r\n".encode()
    )
    assert client_trace_headers({"traceparent": VALID}) == f"traceparent: {VALID}\r\n".encode()


def test_nothing_without_a_valid_traceparent() -> None:
    assert client_trace_headers({}) == b""
    assert client_trace_headers({"tracestate": "a=b"}) == b""  # a tracestate alone means nothing
    assert client_trace_headers({"traceparent": VALID.upper(), "tracestate": "a=b"}) == b""


def test_a_tracestate_too_long_or_not_printable_is_dropped_alone() -> None:
    only_parent = f"traceparent: {VALID}\r\n".encode()
    too_long = "a=" + "b" * (MAX_TRACESTATE_CHARS - 1)
    assert client_trace_headers({"traceparent": VALID, "tracestate": too_long}) == only_parent
    assert client_trace_headers({"traceparent": VALID, "tracestate": "a=b\r\nX-Evil: 1"}) == only_parent
    assert client_trace_headers({"traceparent": VALID, "tracestate": "a=\u00e9"}) == only_parent
    assert client_trace_headers({"traceparent": VALID, "tracestate": ""}) == only_parent


@pytest.mark.parametrize(("metadata", "lines"), [
    ({}, b""),
    ({"tracestate": "a=1"}, b""),  # a tracestate alone is not passed on
    ({"traceparent": "garbage", "tracestate": "a=1"}, b""),
    ({"traceparent": VALID}, f"traceparent: {VALID}\r\n".encode()),
    ({"traceparent": VALID, "tracestate": "a=1"}, f"traceparent: {VALID}\r\ntracestate: a=1\r\n".encode()),
    (None, b""),  # no call at all
])
def test_the_pipelines_backend_requests_carry_the_clients_trace_context(metadata: dict[str, str] | None,
                                                                        lines: bytes) -> None:
    from gatewayd.config import Route
    from gatewayd.observability.propagation import ClientTraceBackend
    from gatewayd.rpc.call import Call
    from tests.unit.test_backend_requests import client

    backend, recorder = client()
    calls = ClientTraceBackend(backend)
    call = None if metadata is None else Call("/gateway.v1.Gateway/ExecuteCommand", "grpc", metadata, "peer")
    calls.call_route(Route("POST", "notes"), b"{}", "u", "s", "r", call)
    calls.get_session("s", call)
    route_request, session_request = recorder.requests[0][0], recorder.requests[1][0]
    assert route_request.split(b"Accept: application/json\r\n")[1].startswith(lines + b"X-User-Id: u\r\n")
    assert session_request.endswith(b"Accept: application/json\r\n" + lines + b"\r\n")
