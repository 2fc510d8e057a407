"""The reference backend over real sockets (treq against its Site), its push bus and SubscribePush handler."""

from __future__ import annotations

import base64
import json
import random
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
import treq
from google.protobuf.message import Message
from twisted.internet import reactor
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.web.client import HTTPConnectionPool

from gatewayd._proto.push.v1 import push_pb2
from gatewayd.devbackend.listeners import DevBackendService, serve_push
from gatewayd.devbackend.push import SUBSCRIBE_PUSH_PATH, PushBus, SubscribePushHandler, push_methods
from gatewayd.devbackend.service import DevBackend, make_http_site
from gatewayd.rpc.call import Call, Encoded
from gatewayd.testing.wait import until

ID_CHARSET = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
KEY_A = base64.b64encode(bytes(range(32))).decode()
KEY_B = base64.b64encode(bytes(range(32, 64))).decode()
START = 1_700_000_000.0


class Harness:
    """A DevBackend on a loopback port, a treq pool, the logged codes and the published events."""

    def __init__(self, *, fixed_code: str | None = None, debug: bool = True) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.backend = DevBackend(self.clock, random.Random(7).randbytes, fixed_code=fixed_code, debug=debug)
        self.port = reactor.listenTCP(0, make_http_site(self.backend), interface="127.0.0.1")
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.codes: dict[str, str] = {}  # challenge_id -> code, read from the log
        self.events: list[push_pb2.PushEvent] = []
        self.backend.bus.subscribe(lambda encoded: self.events.append(encoded.message))
        globalLogPublisher.addObserver(self._observe)

    def _observe(self, event: dict[str, Any]) -> None:
        if "challenge_id" in event and "code" in event:
            self.codes[event["challenge_id"]] = event["code"]

    async def close(self) -> None:
        globalLogPublisher.removeObserver(self._observe)
        await self.pool.closeCachedConnections()
        await self.port.stopListening()

    async def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """Send ``body`` (JSON-encoded unless bytes); return (status, decoded JSON answer)."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        response = await treq.request(
            method, self.base + path, data=data, headers=all_headers, pool=self.pool
        )
        content = await response.content()
        assert response.headers.getRawHeaders("content-type") == ["application/json"]
        return response.code, json.loads(content)

    async def login(self, email: str, key: str = KEY_A) -> dict[str, str]:
        status, sent = await self.request("POST", "/api/v1/public/auth/send-email-code", {"email": email})
        assert status == 200, sent
        challenge_id = sent["challenge_id"]
        status, confirmed = await self.request(
            "POST",
            "/api/v1/public/auth/confirm-email-code",
            {"challenge_id": challenge_id, "code": self.codes[challenge_id], "client_public_key": key},
        )
        assert status == 200, confirmed
        return confirmed

    async def user(
        self, method: str, path: str, who: dict[str, str], body: Any = None, request_id: str = "r1"
    ) -> tuple[int, Any]:
        headers = {
            "X-User-Id": who["user_id"],
            "X-Device-Session-Id": who["device_session_id"],
            "X-Request-Id": request_id,
        }
        return await self.request(method, "/api/v1/user/" + path, body, headers)


@pytest_twisted.async_yield_fixture
async def h() -> AsyncIterator[Harness]:
    harness = Harness()
    try:
        yield harness
    finally:
        await harness.close()


@pytest_twisted.async_yield_fixture
async def h_fixed() -> AsyncIterator[Harness]:
    harness = Harness(fixed_code="000000", debug=False)
    try:
        yield harness
    finally:
        await harness.close()


def error_code(body: Any) -> str:
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return str(body["error"]["code"])


# -- login ----------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_login_flow_logs_code_and_maps_email_to_one_user(h: Harness) -> None:
    first = await h.login("Alice@Example.com")
    assert set(first) == {"device_session_id", "user_id"}
    assert ID_CHARSET.match(first["device_session_id"])
    assert len(h.codes) == 1 and re.fullmatch(r"[0-9]{6}", next(iter(h.codes.values())))

    again = await h.login("alice@example.com", KEY_B)
    assert again["user_id"] == first["user_id"]
    assert again["device_session_id"] != first["device_session_id"]

    other = await h.login("bob@example.com")
    assert other["user_id"] != first["user_id"]


@pytest_twisted.ensureDeferred
async def test_fixed_code_is_accepted_only_when_configured(h: Harness, h_fixed: Harness) -> None:
    for harness, expected in ((h_fixed, 200), (h, 401)):
        _, sent = await harness.request("POST", "/api/v1/public/auth/send-email-code", {"email": "c@d.io"})
        if harness.codes[sent["challenge_id"]] == "000000":  # pragma: no cover - seeded, never the case
            pytest.skip("issued code happens to equal the fixed code")
        status, body = await harness.request(
            "POST",
            "/api/v1/public/auth/confirm-email-code",
            {"challenge_id": sent["challenge_id"], "code": "000000", "client_public_key": KEY_A},
        )
        assert status == expected, body


@pytest_twisted.ensureDeferred
async def test_confirm_rejections(h: Harness) -> None:
    confirm = "/api/v1/public/auth/confirm-email-code"
    _, sent = await h.request("POST", "/api/v1/public/auth/send-email-code", {"email": "e@f.io"})
    cid = sent["challenge_id"]
    code = h.codes[cid]
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"

    status, body = await h.request(
        "POST", confirm, {"challenge_id": "ch_nope", "code": code, "client_public_key": KEY_A}
    )
    assert (status, error_code(body)) == (404, "not_found")
    status, body = await h.request(
        "POST", confirm, {"challenge_id": cid, "code": wrong, "client_public_key": KEY_A}
    )
    assert (status, error_code(body)) == (401, "unauthenticated")
    for bad_key in ("not base64!", base64.b64encode(b"short").decode(), KEY_A.rstrip("=")):
        status, body = await h.request(
            "POST", confirm, {"challenge_id": cid, "code": code, "client_public_key": bad_key}
        )
        assert (status, error_code(body)) == (400, "invalid_argument"), bad_key

    # The right code still works after one wrong try, and only once.
    status, _ = await h.request(
        "POST", confirm, {"challenge_id": cid, "code": code, "client_public_key": KEY_A}
    )
    assert status == 200
    status, body = await h.request(
        "POST", confirm, {"challenge_id": cid, "code": code, "client_public_key": KEY_A}
    )
    assert (status, error_code(body)) == (404, "not_found")


@pytest_twisted.ensureDeferred
async def test_challenge_expires_and_wears_out(h: Harness) -> None:
    confirm = "/api/v1/public/auth/confirm-email-code"
    _, sent = await h.request("POST", "/api/v1/public/auth/send-email-code", {"email": "g@h.io"})
    h.clock.advance(h.backend.challenge_ttl_s + 1)
    status, _ = await h.request(
        "POST",
        confirm,
        {
            "challenge_id": sent["challenge_id"],
            "code": h.codes[sent["challenge_id"]],
            "client_public_key": KEY_A,
        },
    )
    assert status == 404

    _, sent = await h.request("POST", "/api/v1/public/auth/send-email-code", {"email": "g@h.io"})
    cid, code = sent["challenge_id"], h.codes[sent["challenge_id"]]
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    for _ in range(h.backend.max_code_attempts):
        status, _ = await h.request(
            "POST", confirm, {"challenge_id": cid, "code": wrong, "client_public_key": KEY_A}
        )
        assert status == 401
    status, _ = await h.request(
        "POST", confirm, {"challenge_id": cid, "code": code, "client_public_key": KEY_A}
    )
    assert status == 404


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'"x@y.io"',
        b"",
        b'{"email": 5}',
        b'{"email": "x@y.io", "extra": 1}',
        b'{"email": "x@y.io", "email": "z@y.io"}',
        b'{"mail": "x@y.io"}',
        b'{"email": "no-at-sign"}',
        b'{"email": NaN}',
        b"\xff\xfe",
    ],
)
@pytest_twisted.ensureDeferred
async def test_send_email_code_strict_json(h: Harness, body: bytes) -> None:
    status, answer = await h.request("POST", "/api/v1/public/auth/send-email-code", body)
    assert (status, error_code(answer)) == (400, "invalid_argument")
    assert h.codes == {}


# -- sessions -------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_session_lookup_active_revoked_unknown(h: Harness) -> None:
    who = await h.login("s@t.io", KEY_B)
    path = "/api/v1/internal/sessions/" + who["device_session_id"]
    status, body = await h.request("GET", path)
    assert status == 200
    assert body == {
        "device_session_id": who["device_session_id"],
        "user_id": who["user_id"],
        "client_public_key": KEY_B,
        "status": "active",
    }

    status, body = await h.user("POST", "sessions/revoke", who, {})
    assert body == {"revoked": 1}
    status, body = await h.request("GET", path)
    assert (status, body["status"]) == (200, "revoked")

    status, body = await h.request("GET", "/api/v1/internal/sessions/ds_unknown")
    assert (status, error_code(body)) == (404, "not_found")


# -- user routes ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_profile_get_and_update_pushes_event(h: Harness) -> None:
    who = await h.login("p@q.io")
    status, profile = await h.user("GET", "profile", who)
    assert (status, profile) == (200, {"user_id": who["user_id"], "email": "p@q.io", "display_name": ""})

    h.clock.advance(2.5)
    status, profile = await h.user("PATCH", "profile", who, {"display_name": "Pat"})
    assert (status, profile["display_name"]) == (200, "Pat")
    status, again = await h.user("GET", "profile", who)
    assert again == profile

    [event] = h.events
    assert event.WhichOneof("kind") == "client_event"
    ce = event.client_event
    assert (ce.user_id, ce.device_session_id, ce.event_type) == (who["user_id"], "", "user.profile.updated")
    assert json.loads(ce.payload_bytes) == profile
    assert ce.timestamp_ms == int((START + 2.5) * 1000)

    for bad in ({"display_name": 3}, {"display_name": "x" * 101}, {}, {"display_name": "a", "x": 1}):
        status, body = await h.user("PATCH", "profile", who, bad)
        assert (status, error_code(body)) == (400, "invalid_argument"), bad
    assert len(h.events) == 1


@pytest_twisted.ensureDeferred
async def test_notes_create_list_and_push(h: Harness) -> None:
    who = await h.login("n@o.io")
    other = await h.login("m@o.io")
    created = []
    for text in ("first", "second ✓"):
        status, note = await h.user("POST", "notes", who, {"text": text})
        assert status == 200 and note["text"] == text and ID_CHARSET.match(note["note_id"])
        created.append(note)
    status, listed = await h.user("GET", "notes", who)
    assert (status, listed) == (200, {"notes": created})
    status, listed = await h.user("GET", "notes", other)
    assert listed == {"notes": []}

    assert [e.client_event.event_type for e in h.events] == ["user.note.created"] * 2
    assert [json.loads(e.client_event.payload_bytes) for e in h.events] == created
    assert all(e.client_event.user_id == who["user_id"] for e in h.events)
    assert len({e.client_event.event_id for e in h.events}) == 2

    for bad in (b"{", {"text": ""}, {"text": None}, {"text": "x" * 4097}):
        status, body = await h.user("POST", "notes", who, bad)
        assert (status, error_code(body)) == (400, "invalid_argument"), bad


@pytest_twisted.ensureDeferred
async def test_user_routes_need_gateway_headers_and_known_routes(h: Harness) -> None:
    who = await h.login("hd@r.io")
    full = {"X-User-Id": who["user_id"], "X-Device-Session-Id": who["device_session_id"], "X-Request-Id": "r"}
    for missing in full:
        headers = {k: v for k, v in full.items() if k != missing}
        status, body = await h.request("GET", "/api/v1/user/profile", None, headers)
        assert (status, error_code(body)) == (400, "invalid_argument"), missing

    status, body = await h.user("GET", "profile", {**who, "user_id": "usr_unknown"})
    assert (status, error_code(body)) == (404, "not_found")
    status, body = await h.user("DELETE", "profile", who)
    assert status == 405 and error_code(body) == "unimplemented"
    status, body = await h.user("GET", "nowhere", who)
    assert (status, error_code(body)) == (404, "not_found")


@pytest_twisted.ensureDeferred
async def test_revoke_semantics_and_invalidations(h: Harness) -> None:
    s1 = await h.login("r@v.io")
    s2 = await h.login("r@v.io")
    s3 = await h.login("r@v.io")
    stranger = await h.login("x@v.io")

    async def status_of(who: dict[str, str]) -> str:
        _, body = await h.request("GET", "/api/v1/internal/sessions/" + who["device_session_id"])
        return str(body["status"])

    # Someone else's session is not ours to revoke.
    status, body = await h.user(
        "POST", "sessions/revoke", s1, {"device_session_id": stranger["device_session_id"]}
    )
    assert (status, body) == (200, {"revoked": 0})
    assert await status_of(stranger) == "active"
    assert h.events == []

    status, body = await h.user("POST", "sessions/revoke", s1, {"device_session_id": s2["device_session_id"]})
    assert body == {"revoked": 1}
    assert [await status_of(s) for s in (s1, s2, s3)] == ["active", "revoked", "active"]
    [event] = h.events
    inv = event.session_invalidation
    assert (inv.user_id, inv.device_session_id, inv.reason) == (
        s1["user_id"],
        s2["device_session_id"],
        "revoked",
    )

    # Revoking an already revoked session counts nothing and pushes nothing.
    status, body = await h.user("POST", "sessions/revoke", s1, {"device_session_id": s2["device_session_id"]})
    assert body == {"revoked": 0} and len(h.events) == 1

    # No id (empty body, as an empty payload arrives): all of the user's sessions; one invalidation, empty id.
    status, body = await h.user("POST", "sessions/revoke", s1, b"")
    assert body == {"revoked": 2}
    assert [await status_of(s) for s in (s1, s2, s3)] == ["revoked"] * 3
    assert await status_of(stranger) == "active"
    assert len(h.events) == 2
    inv = h.events[1].session_invalidation
    assert (inv.user_id, inv.device_session_id) == (s1["user_id"], "")

    for bad in ({"device_session_id": ""}, {"device_session_id": 1}, {"other": "x"}, b"[1]"):
        status, body = await h.user("POST", "sessions/revoke", s1, bad)
        assert (status, error_code(body)) == (400, "invalid_argument"), bad


# -- debug surface --------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_debug_status_answers_with_the_status(h: Harness) -> None:
    who = await h.login("d@s.io")
    for code in (200, 400, 401, 403, 404, 409, 412, 418, 429, 500, 501, 503, 504):
        status, body = await h.user("GET", f"debug/status/{code}", who)
        assert (status, body) == (code, {"status": code})
    for bad in ("99", "600", "204", "abc", "2000"):
        status, body = await h.user("GET", f"debug/status/{bad}", who)
        assert (status, error_code(body)) == (400, "invalid_argument"), bad


@pytest_twisted.ensureDeferred
async def test_received_log_records_user_routes_and_clears(h: Harness) -> None:
    who = await h.login("l@g.io")
    await h.user("POST", "notes", who, {"text": "hi"}, request_id="req-1")
    await h.request("GET", "/api/v1/user/profile", None, {"X-Request-Id": "req-2"})
    await h.user("PUT", "no/such/route", who, b"raw", request_id="req-3")
    await h.request("GET", "/api/v1/internal/sessions/" + who["device_session_id"])

    status, received = await h.request("GET", "/api/v1/internal/debug/received")
    assert status == 200
    assert received == [
        {
            "method": "POST",
            "path": "/api/v1/user/notes",
            "user_id": who["user_id"],
            "device_session_id": who["device_session_id"],
            "request_id": "req-1",
            "body": '{"text": "hi"}',
        },
        {
            "method": "GET",
            "path": "/api/v1/user/profile",
            "user_id": None,
            "device_session_id": None,
            "request_id": "req-2",
            "body": "",
        },
        {
            "method": "PUT",
            "path": "/api/v1/user/no/such/route",
            "user_id": who["user_id"],
            "device_session_id": who["device_session_id"],
            "request_id": "req-3",
            "body": "raw",
        },
    ]
    status, _ = await h.request("DELETE", "/api/v1/internal/debug/received")
    assert status == 200
    _, received = await h.request("GET", "/api/v1/internal/debug/received")
    assert received == []


@pytest_twisted.ensureDeferred
async def test_debug_routes_absent_without_debug(h_fixed: Harness) -> None:
    who = await h_fixed.login("nd@s.io")
    status, body = await h_fixed.user("GET", "debug/status/503", who)
    assert (status, error_code(body)) == (404, "not_found")
    status, body = await h_fixed.request("GET", "/api/v1/internal/debug/received")
    assert (status, error_code(body)) == (404, "not_found")
    assert list(h_fixed.backend.received) == []


# -- push -----------------------------------------------------------------------------------------


class RecordingStream:
    """A ServerStream that records what it is sent."""

    def __init__(self) -> None:
        self.sent: list[Message | Encoded] = []
        self.closed = False

    def send(self, message: Message | Encoded) -> None:
        self.sent.append(message)


def push_call() -> Call:
    return Call(method=SUBSCRIBE_PUSH_PATH, protocol="grpc", metadata={}, peer="127.0.0.1:1")


def test_push_methods_table() -> None:
    [method] = push_methods(PushBus())
    assert method.path == "/push.v1.Push/SubscribePush"
    assert method.server_streaming and method.unary is None
    assert (method.request_type, method.response_type) == (push_pb2.SubscribePushRequest, push_pb2.PushEvent)


@pytest_twisted.ensureDeferred
async def test_subscribe_push_streams_events_until_cancelled(h: Harness) -> None:
    handler = SubscribePushHandler(h.backend.bus)
    streams = [RecordingStream(), RecordingStream()]
    calls = [
        handler(push_call(), push_pb2.SubscribePushRequest(gateway_id=f"gw{i}"), s)
        for i, s in enumerate(streams)
    ]
    assert h.backend.bus.subscriber_count == 3  # the harness's own subscriber plus two streams

    who = await h.login("push@x.io")
    await h.user("POST", "notes", who, {"text": "n1"})
    await h.user("POST", "sessions/revoke", who, {})
    for stream in streams:
        assert [type(m) for m in stream.sent] == [Encoded, Encoded]
        assert [m.message.WhichOneof("kind") for m in stream.sent] == ["client_event", "session_invalidation"]
        assert stream.sent[0].message == h.events[0]
    # Encoded once, the same object for every stream.
    assert streams[0].sent[0] is streams[1].sent[0]
    decoded = push_pb2.PushEvent.FromString(streams[0].sent[0].proto)
    assert decoded.client_event.event_type == "user.note.created"
    assert not calls[0].called

    calls[0].cancel()
    failures: list[Any] = []
    calls[0].addErrback(failures.append)
    assert failures and failures[0].check(CancelledError)
    assert h.backend.bus.subscriber_count == 2

    # A closed stream that was not cancelled stops being fed at the next event.
    streams[1].closed = True
    who2 = await h.login("push2@x.io")
    await h.user("POST", "notes", who2, {"text": "n2"})
    assert len(streams[0].sent) == 2 and len(streams[1].sent) == 2
    assert h.backend.bus.subscriber_count == 1
    calls[1].cancel()
    calls[1].addErrback(lambda f: f.trap(CancelledError))


def test_bus_survives_a_failing_subscriber() -> None:
    bus = PushBus()
    got: list[Encoded] = []

    def broken(_: Encoded) -> None:
        raise RuntimeError("boom")

    bus.subscribe(broken)
    token = bus.subscribe(got.append)
    event = push_pb2.PushEvent(session_invalidation=push_pb2.SessionInvalidation(user_id="u"))
    encoded = bus.publish(event)
    assert got == [encoded] and encoded.message is event
    bus.unsubscribe(token)
    bus.unsubscribe(token)
    bus.publish(event)
    assert len(got) == 1


@pytest_twisted.ensureDeferred
async def test_push_port_delivers_events_to_the_gateway_push_consumer(h: Harness) -> None:
    from gatewayd.backend.push_consumer import PushConsumer

    server = await serve_push(reactor, "tcp:0:interface=127.0.0.1", h.backend)
    got: list[push_pb2.PushEvent] = []
    consumer = PushConsumer.from_endpoint_string(
        reactor, f"tcp:host=127.0.0.1:port={server.port_number}", "gw-test", got.append
    )
    try:
        consumer.start()
        await consumer.when_connected()
        await until(lambda: h.backend.bus.subscriber_count == 2, "the SubscribePush call to subscribe")

        who = await h.login("wire@push.io")
        await h.user("POST", "notes", who, {"text": "over the wire"})
        await h.user("POST", "sessions/revoke", who, {"device_session_id": who["device_session_id"]})
        await until(lambda: len(got) == 2, "two events")
        assert got == h.events
        assert json.loads(got[0].client_event.payload_bytes)["text"] == "over the wire"
        assert got[1].session_invalidation.device_session_id == who["device_session_id"]

        # The consumer cancelling its call (RST_STREAM) cancels the handler, which unsubscribes.
        await consumer.stop()
        await until(lambda: h.backend.bus.subscriber_count == 1, "the cancelled call to unsubscribe")
    finally:
        await consumer.stop()
        await server.stop()


# -- service and plugin ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_plugin_service_serves_http() -> None:
    from twisted.plugins.gatewayd_devbackend_plugin import DevBackendOptions, serviceMaker

    options = DevBackendOptions()
    options.parseOptions(["--http", "tcp:0:interface=127.0.0.1", "--push", "tcp:0:interface=127.0.0.1"])
    assert serviceMaker.tapname == "gatewayd-devbackend"
    service = serviceMaker.makeService(options)
    assert isinstance(service, DevBackendService)
    assert service.backend.fixed_code == "000000" and service.backend.debug
    await service.startService()
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        port = service.http_port.getHost().port
        response = await treq.post(
            f"http://127.0.0.1:{port}/api/v1/public/auth/send-email-code",
            json={"email": "plug@in.io"},
            pool=pool,
        )
        assert response.code == 200
        assert "challenge_id" in await response.json()
        assert service.push_server is not None and service.push_server.port_number > 0
    finally:
        await pool.closeCachedConnections()
        await service.stopService()
    assert service.http_port is None and service.push_server is None

    bad = DevBackendOptions()
    with pytest.raises(Exception, match="six digits"):
        bad.parseOptions(["--email-code", "12ab"])
