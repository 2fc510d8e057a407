"""The public auth surface over real sockets: gatewayd's listener (HTTP/1.1 and h2c) in front of the
reference backend on its own port. HTTP/2 is spoken by a raw client on the sans-I/O ``h2`` library
(``gatewayd.testing.public.h2c``), prior knowledge, on the same port as HTTP/1.1."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from gatewayd.config import Budget, PublicConfig
from gatewayd.stores.base import RateDecision, StoreUnavailable
from gatewayd.testing.public import DEV_CODE, Answer, PublicHarness, h2c, http1, http1_raw, public_key_b64
from gatewayd.transport.cors import CorsPolicy

SEND = "/api/v1/public/auth/send-email-code"
CONFIRM = "/api/v1/public/auth/confirm-email-code"
JSON = {"Content-Type": "application/json"}
KEY = public_key_b64(bytes(32))


@pytest_twisted.async_yield_fixture
async def harness() -> AsyncIterator[PublicHarness]:
    h = await PublicHarness.start()
    yield h
    await h.stop()


def error(answer: Answer) -> dict[str, Any]:
    """The error object of a JSON error answer (and check the shape is exactly that)."""
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


# -- full login -----------------------------------------------------------------------------


@pytest.mark.parametrize("over_h2", [False, True], ids=["http1", "h2c"])
@pytest_twisted.ensureDeferred
async def test_full_login(harness: PublicHarness, over_h2: bool) -> None:
    sent, confirmed = await harness.login("Alice@Example.com", over_h2=over_h2, key=KEY)
    assert sent.status == 200, sent
    assert set(sent.json()) == {"challenge_id"}
    assert sent.headers["cache-control"] == "no-store"
    assert confirmed.status == 200, confirmed
    body = confirmed.json()
    assert set(body) == {"device_session_id", "user_id"}
    session = harness.backend.session(body["device_session_id"])
    assert session is not None and session.user_id == body["user_id"] and session.status == "active"
    assert session.client_public_key == KEY
    assert harness.backend_received == [("POST", SEND), ("POST", CONFIRM)]


@pytest_twisted.ensureDeferred
async def test_same_email_same_user_over_both_protocols(harness: PublicHarness) -> None:
    _, first = await harness.login("bob@example.com")
    _, second = await harness.login("BOB@example.com", over_h2=True)
    assert first.json()["user_id"] == second.json()["user_id"]
    assert first.json()["device_session_id"] != second.json()["device_session_id"]


@pytest_twisted.ensureDeferred
async def test_backend_4xx_is_passed_on(harness: PublicHarness) -> None:
    sent = await http1(harness.port, "POST", SEND, JSON, json.dumps({"email": "carol@example.com"}).encode())
    challenge_id = sent.json()["challenge_id"]
    wrong = json.dumps({"challenge_id": challenge_id, "code": "123456", "client_public_key": KEY}).encode()
    answer = await http1(harness.port, "POST", CONFIRM, JSON, wrong)
    assert answer.status == 401
    assert error(answer)["code"] == "unauthenticated"
    unknown = json.dumps({"challenge_id": "ch_nope", "code": DEV_CODE, "client_public_key": KEY}).encode()
    answer = await h2c(harness.port, "POST", CONFIRM, JSON, unknown)
    assert answer.status == 404
    assert error(answer)["code"] == "not_found"


# -- anti-abuse: every rule, with nothing reaching the backend ------------------------------------

GOOD_SEND = json.dumps({"email": "dave@example.com"}).encode()
GOOD_CONFIRM = json.dumps({"challenge_id": "ch_1", "code": "000000", "client_public_key": KEY}).encode()

def confirm_body(**fields: Any) -> bytes:
    """A confirm-email-code body: a well-formed one with ``fields`` replaced (or added, at the end)."""
    return json.dumps({"challenge_id": "ch_1", "code": "000000", "client_public_key": KEY, **fields}).encode()


REFUSED = [
    # (path, headers, body, status)
    (SEND, {}, GOOD_SEND, 415),
    (SEND, {"Content-Type": "text/plain"}, GOOD_SEND, 415),
    (SEND, {"Content-Type": "application/x-www-form-urlencoded"}, b"email=a%40b.c", 415),
    (SEND, {"Content-Type": "application/jsonx"}, GOOD_SEND, 415),
    (CONFIRM, {"Content-Type": "text/json"}, GOOD_CONFIRM, 415),
    (SEND, JSON, b'{"email": "' + b"a" * 5000 + b'@example.com"}', 413),
    (CONFIRM, JSON, b" " * 4097, 413),
    (SEND, JSON, b"", 400),
    (SEND, JSON, b"not json", 400),
    (SEND, JSON, b'["dave@example.com"]', 400),
    (SEND, JSON, b'{"email": "dave@example.com", "extra": 1}', 400),
    (SEND, JSON, b'{"email": "dave@example.com", "email": "eve@example.com"}', 400),
    (SEND, JSON, b'{"email": 5}', 400),
    (SEND, JSON, b'{"email": null}', 400),
    (SEND, JSON, b"{}", 400),
    (SEND, JSON, b'{"email": "no-at-sign"}', 400),
    (SEND, JSON, b'{"email": "two@@example.com"}', 400),
    (SEND, JSON, b'{"email": "dave@localhost"}', 400),
    (SEND, JSON, b'{"email": " dave@example.com"}', 400),
    (SEND, JSON, b'{"email": "d\\u0000ave@example.com"}', 400),
    (SEND, JSON, json.dumps({"email": "a" * 65 + "@example.com"}).encode(), 400),
    (SEND, JSON, json.dumps({"email": "a@" + "b" * 250 + ".com"}).encode(), 400),
    (SEND, JSON, b'\xff\xfe{"email": "dave@example.com"}', 400),
    (SEND, JSON, b"[" * 3000, 400),
    (CONFIRM, JSON, b'{"challenge_id": "ch_1", "code": "000000"}', 400),
    (CONFIRM, JSON, confirm_body(challenge_id="ch 1", code="0"), 400),
    (CONFIRM, JSON, confirm_body(challenge_id="c" * 129, code="0"), 400),
    (CONFIRM, JSON, confirm_body(code=""), 400),
    (CONFIRM, JSON, confirm_body(code="0" * 33), 400),
    (CONFIRM, JSON, confirm_body(code="00 00"), 400),
    (CONFIRM, JSON, confirm_body(client_public_key=base64.b64encode(bytes(31)).decode()), 400),
    (CONFIRM, JSON, confirm_body(client_public_key=base64.b64encode(bytes(33)).decode()), 400),
    (CONFIRM, JSON, confirm_body(client_public_key=KEY.rstrip("=")), 400),
    (CONFIRM, JSON, confirm_body(client_public_key="!" * 44), 400),
    (CONFIRM, JSON, confirm_body(device="x"), 400),
    (
        CONFIRM,
        JSON,
        b'{"challenge_id": "ch_1", "code": 0, "client_public_key": "' + KEY.encode() + b'"}',
        400,
    ),
    (
        CONFIRM,
        JSON,
        b'{"challenge_id": "ch_1", "code": NaN, "client_public_key": "' + KEY.encode() + b'"}',
        400,
    ),
]


@pytest.mark.parametrize("over_h2", [False, True], ids=["http1", "h2c"])
@pytest_twisted.ensureDeferred
async def test_anti_abuse_rules(harness: PublicHarness, over_h2: bool) -> None:
    request = h2c if over_h2 else http1
    for path, headers, body, status in REFUSED:
        answer = await request(harness.port, "POST", path, headers, body)
        assert answer.status == status, (path, headers, body[:80], answer)
        expected = {400: "invalid_argument", 413: "resource_exhausted", 415: "invalid_argument"}[status]
        assert error(answer)["code"] == expected
    assert harness.backend_received == []


@pytest_twisted.ensureDeferred
async def test_content_type_parameters_are_allowed(harness: PublicHarness) -> None:
    answer = await http1(
        harness.port, "POST", SEND, {"Content-Type": "Application/JSON; charset=utf-8"}, GOOD_SEND
    )
    assert answer.status == 200, answer
    assert harness.backend_received == [("POST", SEND)]


@pytest_twisted.ensureDeferred
async def test_two_content_types_are_refused(harness: PublicHarness) -> None:
    data = (
        f"POST {SEND} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {len(GOOD_SEND)}\r\n\r\n"
    ).encode() + GOOD_SEND
    answer = await http1_raw(harness.port, data)
    assert answer.status == 415
    assert harness.backend_received == []


@pytest_twisted.ensureDeferred
async def test_order_content_type_before_size_before_shape() -> None:
    h = await PublicHarness.start(config=PublicConfig(max_body_bytes=64))
    try:
        big_and_bad = b"x" * 100
        assert (await http1(h.port, "POST", SEND, {"Content-Type": "text/plain"}, big_and_bad)).status == 415
        assert (await http1(h.port, "POST", SEND, JSON, big_and_bad)).status == 413
        assert (await http1(h.port, "POST", SEND, JSON, b"x" * 64)).status == 400
        assert h.backend_received == []
    finally:
        await h.stop()


@pytest_twisted.ensureDeferred
async def test_shape_is_checked_before_budgets() -> None:
    # A budget of one: malformed requests must not spend it.
    tight = PublicConfig(login_ip=Budget(rate=0.001, burst=1))
    h = await PublicHarness.start(config=tight)
    try:
        for _ in range(3):
            assert (await http1(h.port, "POST", SEND, JSON, b"{}")).status == 400
        assert (await http1(h.port, "POST", SEND, JSON, GOOD_SEND)).status == 200
        refused = await http1(h.port, "POST", SEND, JSON, GOOD_SEND)
        assert refused.status == 429
        assert error(refused)["code"] == "resource_exhausted"
        assert int(refused.headers["retry-after"]) >= 1
        assert h.backend_received == [("POST", SEND)]
    finally:
        await h.stop()


@pytest_twisted.ensureDeferred
async def test_wrong_method_and_unknown_path_are_json(harness: PublicHarness) -> None:
    answer = await http1(harness.port, "GET", SEND)
    assert answer.status == 405
    assert error(answer)["code"] == "unimplemented"
    assert "POST" in answer.headers["allow"]
    answer = await h2c(harness.port, "GET", "/api/v1/public/nothing-here")
    assert answer.status == 404
    assert error(answer)["code"] == "not_found"
    assert harness.backend_received == []


# -- backend failures ---------------------------------------------------------------------------


class _Hostile(Resource):
    """A backend that answers every POST with a fixed status and body."""

    isLeaf = True

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__()
        self.status, self.body = status, body

    def render_POST(self, request: Request) -> bytes:
        request.setResponseCode(self.status)
        request.setHeader(b"content-type", b"application/json")
        return self.body


LEAKY = json.dumps(
    {
        "error": {
            "code": "invalid_argument",
            "message": 'Traceback (most recent call last):\n  File "/srv/app.py"',
        },
        "debug": {"sql": "SELECT * FROM users"},
        "internal_host": "10.1.2.3",
    }
).encode()


@pytest.mark.parametrize(
    ("status", "body", "expected_status", "expected_code"),
    [
        (400, LEAKY, 400, "invalid_argument"),
        (403, b"<html>forbidden by nginx</html>", 403, "permission_denied"),
        (
            409,
            json.dumps({"error": {"code": "not-a-code", "message": "x" * 1000}}).encode(),
            409,
            "already_exists",
        ),
        (429, b"{}", 429, "resource_exhausted"),
        (500, LEAKY, 503, "unavailable"),
        (502, b"bad gateway", 503, "unavailable"),
        (200, b'{"unexpected": true}', 503, "unavailable"),
        (200, b"not json", 503, "unavailable"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_backend_answers_are_sanitized(
    status: int, body: bytes, expected_status: int, expected_code: str
) -> None:
    h = await PublicHarness.start(backend_site=Site(_Hostile(status, body)))
    try:
        answer = await http1(h.port, "POST", SEND, JSON, GOOD_SEND)
        assert answer.status == expected_status
        err = error(answer)
        assert err["code"] == expected_code
        for secret in ("Traceback", "SELECT", "10.1.2.3", "nginx", "app.py", "x" * 200):
            assert secret not in answer.body.decode()
        if expected_status == 429:
            assert int(answer.headers["retry-after"]) >= 1
    finally:
        await h.stop()


@pytest_twisted.ensureDeferred
async def test_backend_extra_success_fields_are_dropped() -> None:
    body = json.dumps(
        {"challenge_id": "ch_1", "email_sent_via": "smtp-internal-3", "code": "123456"}
    ).encode()
    h = await PublicHarness.start(backend_site=Site(_Hostile(200, body)))
    try:
        answer = await http1(h.port, "POST", SEND, JSON, GOOD_SEND)
        assert answer.status == 200
        assert answer.json() == {"challenge_id": "ch_1"}
    finally:
        await h.stop()


@pytest.mark.parametrize("over_h2", [False, True], ids=["http1", "h2c"])
@pytest_twisted.ensureDeferred
async def test_backend_unreachable_is_503(harness: PublicHarness, over_h2: bool) -> None:
    await harness.backend_port.stopListening()
    request = h2c if over_h2 else http1
    answer = await request(harness.port, "POST", SEND, JSON, GOOD_SEND)
    assert answer.status == 503
    assert error(answer) == {"code": "unavailable", "message": "backend unavailable; retry later"}


@pytest_twisted.ensureDeferred
async def test_backend_timeout_is_503() -> None:
    class Silent(Resource):
        isLeaf = True

        def render_POST(self, request: Request) -> Any:
            from twisted.web.server import NOT_DONE_YET

            return NOT_DONE_YET

    h = await PublicHarness.start(backend_site=Site(Silent()), backend_timeout_s=0.2)
    try:
        answer = await http1(h.port, "POST", SEND, JSON, GOOD_SEND)
        assert answer.status == 503
        assert error(answer)["code"] == "unavailable"
    finally:
        await h.stop()


class _BrokenStore:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def consume(self, key: str, budget: Budget, cost: int = 1) -> Deferred[RateDecision]:
        def fail() -> RateDecision:
            raise self.error

        return deferLater(reactor, 0, fail)  # answers later, as a networked store would


@pytest.mark.parametrize("failure", [StoreUnavailable("down"), RuntimeError("bug")])
@pytest_twisted.ensureDeferred
async def test_store_failing_fails_closed(failure: Exception) -> None:
    h = await PublicHarness.start(rate=_BrokenStore(failure))
    try:
        for path, body in ((SEND, GOOD_SEND), (CONFIRM, GOOD_CONFIRM)):
            answer = await http1(h.port, "POST", path, JSON, body)
            assert answer.status == 503
            assert error(answer)["code"] == "unavailable"
        assert h.backend_received == []
    finally:
        await h.stop()


# -- keys, CORS -------------------------------------------------------------------------------


@pytest.mark.parametrize("over_h2", [False, True], ids=["http1", "h2c"])
@pytest_twisted.ensureDeferred
async def test_gateway_keys(harness: PublicHarness, over_h2: bool) -> None:
    request = h2c if over_h2 else http1
    answer = await request(harness.port, "GET", "/api/v1/public/gateway-keys")
    assert answer.status == 200
    assert answer.json() == harness.keyring.as_json()
    (key,) = answer.json()["keys"]
    assert base64.b64decode(key["public_key"]) == harness.keyring.signer.public_key
    assert "max-age=60" in answer.headers["cache-control"]


@pytest_twisted.ensureDeferred
async def test_cors_preflight_and_actual_responses() -> None:
    h = await PublicHarness.start(cors=CorsPolicy(["https://app.example.com"]))
    try:
        good = {
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        }
        for path in (SEND, CONFIRM, "/api/v1/public/gateway-keys"):
            answer = await http1(h.port, "OPTIONS", path, good)
            assert answer.status == 204, (path, answer)
            assert answer.headers["access-control-allow-origin"] == "https://app.example.com"
            assert "POST" in answer.headers["access-control-allow-methods"]
            assert answer.headers["access-control-allow-headers"] == "content-type"
        refused = await http1(h.port, "OPTIONS", SEND, {**good, "Origin": "https://evil.example"})
        assert refused.status == 403
        assert "access-control-allow-origin" not in refused.headers

        answer = await h2c(h.port, "POST", SEND, {**JSON, "Origin": "https://app.example.com"}, GOOD_SEND)
        assert answer.status == 200
        assert answer.headers["access-control-allow-origin"] == "https://app.example.com"
        assert "retry-after" in answer.headers["access-control-expose-headers"]
        bad = await http1(h.port, "POST", SEND, {**JSON, "Origin": "https://app.example.com"}, b"{}")
        assert bad.status == 400
        assert bad.headers["access-control-allow-origin"] == "https://app.example.com"
        other = await http1(h.port, "POST", SEND, {**JSON, "Origin": "https://evil.example"}, GOOD_SEND)
        assert "access-control-allow-origin" not in other.headers
        assert h.backend_received == [("POST", SEND), ("POST", SEND)]
    finally:
        await h.stop()
