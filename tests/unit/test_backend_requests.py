"""The bytes of the pipeline's backend requests (user routes), checked without a network.

tests/integration/test_backend_http1.py checks a few of them as the backend receives them; here
``call_route`` is held to the request spelled out piece by piece, for values of every kind.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock

from gatewayd.backend import rest
from gatewayd.backend.rest import BackendClient
from gatewayd.config import Route


class Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[bytes, bool, str]] = []

    def request(self, data: bytes, retryable: bool = False, operation: str = "") -> Deferred[Any]:
        self.requests.append((data, retryable, operation))
        return Deferred()


def client() -> tuple[BackendClient, Recorder]:
    backend = BackendClient(MemoryReactorClock(), "http://backend.test:8081/base/", 5.0, 4)
    recorder = Recorder()
    backend.pool = recorder  # type: ignore[assignment]
    return backend, recorder


def sanitized(value: str) -> bytes:
    """What twisted.web's Headers does to a value with line breaks."""
    return value.encode().replace(b"\r\n", b" ").replace(b"\r", b" ").replace(b"\n", b" ")


def expected(route: Route, payload: bytes, user_id: str, session: str, request_id: str, headers: bytes) -> bytes:
    head = (route.method.encode() + b" /base/api/v1/user/" + route.path.encode()
            + b" HTTP/1.1\r\nHost: backend.test:8081\r\nContent-Type: application/json\r\n"
            b"Accept: application/json\r\n" + headers
            + b"X-User-Id: " + sanitized(user_id) + b"\r\nX-Device-Session-Id: " + sanitized(session)
            + b"\r\nX-Request-Id: " + sanitized(request_id) + b"\r\n")
    if route.method == "GET":
        return head + b"\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % len(payload) + payload


VALUES = ["usr_1", "", "é日本", "a\r\nb", "a\rb", "a\nb", "\r\n", "x\n\r\ny", "\n" * 3, "\r" * 3 + "z"]


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_route_requests_are_the_request_spelled_out(method: str) -> None:
    backend, recorder = client()
    route = Route(method, "notes/today")
    rng = random.Random(method)
    for _ in range(200):
        user_id, session, request_id = (rng.choice(VALUES) + rng.choice(VALUES) for _ in range(3))
        payload = rng.choice([b"", b"{}", b'{"text":"\xc3\xa9"}'])
        headers = rng.choice([b"", b"traceparent: 00-" + b"1" * 32 + b"-" + b"2" * 16 + b"-01\r\n"])
        backend.call_route(route, payload, user_id, session, request_id, headers)
        data, retryable, operation = recorder.requests[-1]
        assert data == expected(route, payload, user_id, session, request_id, headers)
        assert retryable == (method == "GET") and operation == "route"


def test_route_heads_are_kept_per_route_object_and_bounded() -> None:
    backend, recorder = client()
    first, same_fields = Route("POST", "a"), Route("POST", "a")
    backend.call_route(first, b"{}", "u", "s", "r")
    backend.call_route(same_fields, b"{}", "u", "s", "r")
    assert recorder.requests[0] == recorder.requests[1]
    routes = [Route("GET", f"r{n}") for n in range(rest._MAX_ROUTE_HEADS + 5)]
    for route in routes:
        backend.call_route(route, b"", "u", "s", "r")
        assert recorder.requests[-1][0].startswith(b"GET /base/api/v1/user/" + route.path.encode() + b" HTTP/1.1")
    assert len(backend._route_heads) <= rest._MAX_ROUTE_HEADS
