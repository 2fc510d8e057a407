"""The pipeline against the real reference backend on a loopback socket, through BackendClient."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from gatewayd._proto.gateway.v1.gateway_pb2 import ExecuteCommandRequest, ExecuteCommandResponse
from gatewayd.backend.rest import BackendClient, BackendUnavailable
from gatewayd.backend.sessions import SessionCache
from gatewayd.config import DEFAULT_ROUTES, LimitsConfig, Route
from gatewayd.devbackend.service import DevBackend, make_http_site
from gatewayd.observability.propagation import ClientTraceBackend
from gatewayd.pipeline.pipeline import Pipeline
from gatewayd.pipeline.signer import ResponseSigner
from gatewayd.rpc.call import Call
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from gatewayd.signing import GatewayKey
from gatewayd.stores.base import Stores
from gatewayd.stores.memory import MemoryRateLimiter, MemoryReplayStore
from gatewayd.testing.events import check_response
from tests.support import record_connections
from tests.unit.test_pipeline_route import STATUS_TABLE
from tests.unit.test_pipeline_stages import Device

DEBUG_STATUSES = sorted({s for s, _ in STATUS_TABLE if 200 <= s <= 599 and s not in (204, 304)})
ROUTES: dict[str, Route] = {
    **DEFAULT_ROUTES,
    **{f"debug.status.{s}": Route("POST", f"debug/status/{s}") for s in DEBUG_STATUSES},
}


class Env:
    """A DevBackend Site on a loopback port and a Pipeline reaching it over HTTP, on the real reactor."""

    def __init__(self) -> None:
        self.backend = DevBackend(Clock(), random.Random(5).randbytes, fixed_code="000000", debug=True)
        self.port: Any = reactor.listenTCP(0, make_http_site(self.backend), interface="127.0.0.1")
        self.base = f"http://127.0.0.1:{self.port.getHost().port}"
        self.client = BackendClient(reactor, self.base, timeout_s=2.0, max_connections=4)
        self.calls = ClientTraceBackend(self.client)  # what the gateway gives its pipeline (tracing off)
        self.cache = SessionCache(self.calls.get_session, reactor, ttl_s=5.0, max_entries=1000)
        self.key = GatewayKey.generate()
        self.pipeline = Pipeline(
            clock=reactor,
            sessions=self.cache,
            stores=Stores(MemoryReplayStore(reactor), MemoryRateLimiter(reactor)),
            backend=self.calls,
            routes=ROUTES,
            signer=ResponseSigner(self.key, reactor),
            freshness_window_s=300.0,
            limits=LimitsConfig(),
        )
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self._seed = 10

    async def close(self) -> None:
        await self.client.close()
        await self.pool.closeCachedConnections()
        if self.port.connected:
            await self.port.stopListening()

    def login(self) -> Device:
        """A new device session at the backend (its in-process API; the HTTP path is tested elsewhere)."""
        self._seed += 1
        device = Device(reactor, seed=self._seed)
        challenge_id = self.backend.send_email_code(f"user{self._seed}@example.com")
        key = base64.b64encode(device.session.client_public_key).decode()
        created = self.backend.confirm_email_code(challenge_id, "000000", key)
        return Device(reactor, created.device_session_id, created.user_id, seed=self._seed)

    async def execute(self, request: ExecuteCommandRequest) -> ExecuteCommandResponse:
        call = Call("/gateway.v1.Gateway/ExecuteCommand", "grpc", {}, "127.0.0.1")
        response: ExecuteCommandResponse = await self.pipeline.execute_command(call, request)
        return response

    async def reject(self, request: ExecuteCommandRequest) -> RpcError:
        with pytest.raises(RpcError) as info:
            await self.execute(request)
        return info.value

    async def received(self) -> list[dict[str, Any]]:
        response = await treq.get(self.base + "/api/v1/internal/debug/received", pool=self.pool)
        assert response.code == 200
        entries: list[dict[str, Any]] = json.loads(await response.content())
        return entries


@pytest_twisted.async_yield_fixture
async def env() -> AsyncIterator[Env]:
    e = Env()
    try:
        yield e
    finally:
        await e.close()


def assert_signed_by(env: Env, device: Device, response: ExecuteCommandResponse) -> None:
    check_response(response, device.session.device_session_id, {env.key.key_id: env.key.public_key})


@pytest_twisted.ensureDeferred
async def test_valid_request_is_routed_with_identity_headers_and_signed(env: Env) -> None:
    device = env.login()
    response = await env.execute(device.command("user.notes.create", b'{"text":"hello"}', request_id="r-1"))
    assert response.envelope.result_code == "ok"
    assert response.envelope.request_id == "r-1"
    assert json.loads(response.payload_bytes)["text"] == "hello"
    assert_signed_by(env, device, response)
    listed = await env.execute(device.command("user.notes.list", b""))
    assert [n["text"] for n in json.loads(listed.payload_bytes)["notes"]] == ["hello"]
    received = await env.received()
    assert [(r["method"], r["path"]) for r in received] == [
        ("POST", "/api/v1/user/notes"), ("GET", "/api/v1/user/notes"),
    ]
    first = received[0]
    assert (first["user_id"], first["device_session_id"], first["request_id"]) == (
        device.session.user_id, device.session.device_session_id, "r-1",
    )
    assert first["body"] == '{"text":"hello"}' and received[1]["body"] == ""


@pytest_twisted.ensureDeferred
async def test_revoked_session_is_unauthenticated(env: Env) -> None:
    device = env.login()
    env.backend.revoke_sessions(device.session.user_id, device.session.device_session_id)
    error = await env.reject(device.command())
    assert error.code == Code.UNAUTHENTICATED
    assert await env.received() == []


@pytest_twisted.ensureDeferred
async def test_unknown_session_is_unauthenticated(env: Env) -> None:
    assert await env.client.get_session("ds_nobody:x") is None
    stranger = Device(reactor, "ds_nobody:x", "usr_none", seed=99)
    assert (await env.reject(stranger.command())).code == Code.UNAUTHENTICATED


@pytest_twisted.ensureDeferred
async def test_every_backend_status_becomes_its_result_code(env: Env) -> None:
    device = env.login()
    expected = dict(STATUS_TABLE)
    for status in DEBUG_STATUSES:
        response = await env.execute(device.command(f"debug.status.{status}", b"{}"))
        assert (status, response.envelope.result_code) == (status, expected[status])
        assert json.loads(response.payload_bytes) == {"status": status}
        assert_signed_by(env, device, response)


@pytest_twisted.ensureDeferred
async def test_rejected_requests_never_reach_a_user_route(env: Env) -> None:
    device = env.login()
    ok = device.command("user.profile.get", b"", request_id="once")
    await env.execute(ok)
    bad_signature = device.command()
    bad_signature.signature = bytes(64)
    tampered = device.command(payload=b'{"text":"a"}')
    tampered.payload_bytes = b'{"text":"b"}'
    rejected = {
        "replay": (ok, Code.ALREADY_EXISTS),
        "signature": (bad_signature, Code.UNAUTHENTICATED),
        "payload hash": (tampered, Code.INVALID_ARGUMENT),
        "stale": (device.command(timestamp_ms=1_000), Code.FAILED_PRECONDITION),
        "version": (device.command(protocol_version=2), Code.FAILED_PRECONDITION),
        "no route": (device.command("user.nothing.here"), Code.UNIMPLEMENTED),
    }
    for name, (request, code) in rejected.items():
        assert (name, (await env.reject(request)).code) == (name, code)
    received = await env.received()
    assert [r["request_id"] for r in received] == ["once"]


@pytest_twisted.ensureDeferred
async def test_backend_stopped_is_unavailable(env: Env) -> None:
    known, fresh = env.login(), env.login()
    await env.execute(known.command("user.profile.get", b""))  # its session is now cached
    await env.port.stopListening()
    await env.client.close()  # drop the kept-alive connection: the next call must connect anew
    route_error = await env.reject(known.command("user.profile.get", b""))
    assert route_error.code == Code.UNAVAILABLE
    session_error = await env.reject(fresh.command("user.profile.get", b""))
    assert session_error.code == Code.UNAVAILABLE
    assert "127.0.0.1" not in route_error.message + session_error.message


@pytest_twisted.ensureDeferred
async def test_backend_that_never_answers_times_out_as_unavailable() -> None:
    silent = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    client = BackendClient(reactor, f"http://127.0.0.1:{silent.getHost().port}", timeout_s=0.2,
                           max_connections=2)
    try:
        started = reactor.seconds()
        with pytest.raises(BackendUnavailable):
            await client.get_session("ds_1")
        assert 0.15 < reactor.seconds() - started < 2.0
    finally:
        await client.close()
        await silent.stopListening()


@pytest_twisted.ensureDeferred
async def test_connections_are_reused(env: Env) -> None:
    device = env.login()
    connections = record_connections(env.port.factory)
    for _ in range(5):
        await env.execute(device.command("user.profile.get", b""))
    assert len(connections) <= 1  # at most one new connection (the session lookup may have opened it)


@pytest_twisted.ensureDeferred
async def test_post_json_reaches_public_routes(env: Env) -> None:
    answer = await env.client.post_json("/api/v1/public/auth/send-email-code", b'{"email":"a@example.com"}')
    assert answer.status == 200 and "challenge_id" in json.loads(answer.body)
    bad = await env.client.post_json("/api/v1/public/auth/send-email-code", b'{"nope":1}')
    assert bad.status == 400


def test_base_url_must_be_http() -> None:
    with pytest.raises(ValueError):
        BackendClient(reactor, "ftp://example.com", 1.0, 1)




class _Big(Resource):
    """Answers ``size`` bytes: with a Content-Length, or (``/chunked``) in chunks without one."""

    isLeaf = True

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def render_GET(self, request: Any) -> Any:
        if request.path == b"/chunked":
            for _ in range(self.size // 100):
                request.write(b"x" * 100)
            request.finish()
            return NOT_DONE_YET
        return b"x" * self.size


@pytest_twisted.ensureDeferred
async def test_answers_over_the_body_limit_are_unavailable() -> None:
    server = reactor.listenTCP(0, Site(_Big(2000)), interface="127.0.0.1")
    base = f"http://127.0.0.1:{server.getHost().port}"
    small = BackendClient(reactor, base, timeout_s=2.0, max_connections=2, max_body_bytes=1000)
    large = BackendClient(reactor, base, timeout_s=2.0, max_connections=2, max_body_bytes=5000)
    try:
        for path in ("sized", "chunked"):
            with pytest.raises(BackendUnavailable):
                await small.call_route(Route("GET", path), b"", "u", "s", "r")
            answer = await large.call_route(Route("GET", path), b"", "u", "s", "r")
            assert (answer.status, len(answer.body)) == (200, 2000)
    finally:
        await small.close()
        await large.close()
        await server.stopListening()


@pytest_twisted.ensureDeferred
async def test_cancelling_a_call_stays_a_cancellation_and_closes_the_connection() -> None:
    lost: Deferred[None] = Deferred()
    opened: Deferred[None] = Deferred()

    class Silent(Protocol):
        """Reads the request and never answers."""

        def dataReceived(self, data: bytes) -> None:
            if not opened.called:
                opened.callback(None)

        def connectionLost(self, reason: Any = None) -> None:
            lost.callback(None)

    silent = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
    client = BackendClient(reactor, f"http://127.0.0.1:{silent.getHost().port}", timeout_s=5.0,
                           max_connections=2)
    try:
        call = client.call_route(Route("POST", "notes"), b"{}", "u", "s", "r")
        await opened
        call.cancel()
        with pytest.raises(CancelledError):
            await call
        await lost  # the server saw the connection go (bounded by the test timeout)
    finally:
        await client.close()
        await silent.stopListening()


@pytest_twisted.ensureDeferred
async def test_an_answer_waiting_in_the_socket_beats_its_timeout_on_a_busy_reactor() -> None:
    """A saturated reactor runs its due timers before it reads its sockets: an answer that
    arrived while the reactor was busy must still win over its own timeout."""
    import socket
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from gatewayd.testing.wait import until

    received, reactor_busy = threading.Event(), threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            received.set()
            reactor_busy.wait(5)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    class Busy(Protocol):
        """Keeps the reactor busy in its I/O phase, past the timeout, while the answer arrives."""

        def dataReceived(self, data: bytes) -> None:
            reactor_busy.set()
            time.sleep(0.6)

    backend = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=backend.serve_forever, daemon=True)
    thread.start()
    busy = reactor.listenTCP(0, Factory.forProtocol(Busy), interface="127.0.0.1")
    poke = socket.create_connection(("127.0.0.1", busy.getHost().port))
    client = BackendClient(reactor, f"http://127.0.0.1:{backend.server_address[1]}", timeout_s=0.2,
                           max_connections=2)
    try:
        answer = client.get_session("ds_busy")
        await until(received.is_set, "the backend to get the request")
        poke.sendall(b"x")
        assert await answer is None
    finally:
        poke.close()
        await client.close()
        await busy.stopListening()
        backend.shutdown()
        thread.join(5)
