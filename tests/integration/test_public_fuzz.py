"""Hypothesis throws arbitrary bodies and headers at both auth endpoints, through gatewayd's real
listener (raw HTTP/1.1 bytes, or h2c), in front of the real reference backend. Every answer is a
4xx (or a 2xx for an accidentally valid request), never a 5xx, and the server still answers
``/healthz`` afterwards.

Hypothesis drives a synchronous test, and pytest-twisted runs tests inside the reactor's greenlet,
so the server (``python -m gatewayd.testing.public``: listener, PublicApp, reference backend) runs in
a process of its own and the test speaks to it with blocking sockets: raw HTTP/1.1 bytes, or h2c
through the sans-I/O ``h2`` library.
"""

from __future__ import annotations

import base64
import json
import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gatewayd.testing.public import Answer, parse_http1, public_key_b64

SEND = "/api/v1/public/auth/send-email-code"
CONFIRM = "/api/v1/public/auth/confirm-email-code"
TIMEOUT_S = 5.0

# Headers the framing depends on are set by the test itself.
_RESERVED = {
    "host",
    "content-length",
    "connection",
    "transfer-encoding",
    "expect",
    "te",
    "upgrade",
    "keep-alive",
    "proxy-connection",
    "http2-settings",
}
_header_names = st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,24}\Z").filter(lambda n: n.lower() not in _RESERVED)
_header_values = st.from_regex(r"\A[!-~]([ -~]{0,60}[!-~])?\Z")
_content_types = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "APPLICATION/JSON",
            "application/json;",
            "text/plain",
            "application/jsonp",
            "multipart/form-data; boundary=x",
            "application/x-www-form-urlencoded",
        ]
    ),
    _header_values,
)

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=40),
    st.emails(),
    st.from_regex(r"\A[A-Za-z0-9._:-]{1,130}\Z"),
    st.just(public_key_b64(bytes(32))),
    st.just("000000"),
)
_json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=10,
)
_field_names = st.sampled_from(["email", "challenge_id", "code", "client_public_key", "extra", ""])
_objects = st.dictionaries(_field_names, _json_values, max_size=5)
_bodies = st.one_of(
    st.binary(max_size=5000),
    _objects.map(lambda o: json.dumps(o).encode()),
    _json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda email: json.dumps({"email": email}).encode(), st.emails()),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.builds(
        lambda challenge_id, code, key: json.dumps(
            {"challenge_id": challenge_id, "code": code, "client_public_key": key}
        ).encode(),
        st.from_regex(r"\A[A-Za-z0-9._:-]{1,128}\Z"),
        st.one_of(st.just("000000"), st.from_regex(r"\A[A-Za-z0-9]{1,32}\Z")),
        st.binary(min_size=31, max_size=33).map(lambda b: base64.b64encode(b).decode()),
    ),
    st.binary(min_size=4000, max_size=6000),
)


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    """The port of a harness running in a child process (stopped by closing its stdin)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gatewayd.testing.public"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 15.0)
        assert ready, "harness process did not start"
        yield int(json.loads(process.stdout.readline())["port"])
    finally:
        assert process.stdin is not None
        process.stdin.close()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def http1_blocking(port: int, data: bytes) -> Answer:
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return parse_http1(b"".join(chunks))


def h2c_blocking(port: int, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> Answer:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="latin-1"))
    pseudo = [(":method", method), (":scheme", "http"), (":authority", f"127.0.0.1:{port}"), (":path", path)]
    fields = pseudo + list(headers.items()) + ([("content-length", str(len(body)))] if body else [])
    status, response_headers, data = 0, {}, []
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.initiate_connection()
        stream_id = conn.get_next_available_stream_id()
        conn.send_headers(stream_id, fields, end_stream=not body)
        if body:
            conn.send_data(stream_id, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        while True:
            chunk = sock.recv(65536)
            assert chunk, "connection closed before the answer ended"
            for event in conn.receive_data(chunk):
                if isinstance(event, h2.events.ResponseReceived):
                    for name, value in event.headers:
                        if name == ":status":
                            status = int(value)
                        else:
                            response_headers[str(name)] = str(value)
                elif isinstance(event, h2.events.DataReceived):
                    data.append(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    return Answer(status, response_headers, b"".join(data))
            sock.sendall(conn.data_to_send())


def _request_bytes(port: int, path: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _check(answer: Answer) -> None:
    assert 200 <= answer.status < 300 or 400 <= answer.status < 500, answer
    if answer.headers.get("content-type") == "application/json":
        body: Any = json.loads(answer.body)
        if answer.status >= 400:
            assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body


@settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    path=st.sampled_from([SEND, CONFIRM]),
    content_type=st.one_of(
        st.just("application/json"), st.just("application/json; charset=utf-8"), st.none(), _content_types
    ),
    headers=st.lists(st.tuples(_header_names, _header_values), max_size=6),
    body=_bodies,
    over_h2=st.booleans(),
)
def test_arbitrary_requests_never_get_a_5xx(
    port: int, path: str, content_type: str | None, headers: list[tuple[str, str]], body: bytes, over_h2: bool
) -> None:
    all_headers = headers + ([("Content-Type", content_type)] if content_type is not None else [])
    if over_h2:
        answer = h2c_blocking(port, "POST", path, {name.lower(): value for name, value in all_headers}, body)
    else:
        answer = http1_blocking(port, _request_bytes(port, path, all_headers, body))
    event(f"status {answer.status}")
    _check(answer)


def test_still_healthy_after_the_fuzz(port: int) -> None:
    # Runs after the property test in this module, against the same server process.
    for answer in (
        h2c_blocking(port, "GET", "/healthz", {}),
        http1_blocking(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    ):
        assert answer.status == 200 and answer.json() == {"status": "ok"}
