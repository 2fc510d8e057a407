"""ExecuteCommand (and SubscribeEvents) end to end: GatewayClient over gRPC, gRPC-Web and Connect
against a whole in-process gateway (real sockets, the reference backend on its own ports).

Each rejection row of PROTOCOL.md section 3 gets exactly its code over every protocol, and a
rejected request never reaches a user route (the backend's debug ``received`` log says so).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from gatewayd._proto.gateway.v1.gateway_pb2 import ExecuteCommandRequest, ExecuteCommandResponse
from gatewayd.client import DeviceKey, GatewayClient, RpcCallError, VerifiedEvent
from gatewayd.client.client import EXECUTE_COMMAND_PATH, DeviceSession
from gatewayd.client.wire import PROTOCOLS
from gatewayd.config import Budget
from gatewayd.rpc.codes import Code
from gatewayd.rpc.details import retry_delay_s
from gatewayd.signing import sha256
from gatewayd.testing.client import (
    RunningGateway,
    login,
    new_email,
    routes_with,
    running_gateway,
    signed_execute_request,
)
from gatewayd.testing.events import check_response
from gatewayd.testing.wait import until

MAX_MESSAGE_BYTES = 16 * 1024

# PROTOCOL.md section 5: backend HTTP status -> result_code.
STATUS_RESULT_CODES = {
    200: "ok", 201: "ok", 202: "ok",
    400: "invalid_argument", 401: "unauthenticated", 403: "permission_denied", 404: "not_found",
    409: "already_exists", 412: "failed_precondition", 429: "resource_exhausted",
    501: "unimplemented", 503: "unavailable", 504: "deadline_exceeded",
    500: "internal", 502: "internal", 599: "internal",
    405: "invalid_argument", 418: "invalid_argument", 422: "invalid_argument",
}
ROUTES = routes_with({f"debug.status.{s}": ("POST", f"debug/status/{s}") for s in STATUS_RESULT_CODES})


@pytest.fixture(params=PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _gateway(tmp_path: Any, **sections: Any) -> AbstractAsyncContextManager[RunningGateway]:
    return running_gateway(str(tmp_path / "state"), routes=ROUTES, server={"max_message_bytes": MAX_MESSAGE_BYTES},
                           **sections)


@pytest_twisted.async_yield_fixture
async def gateway(tmp_path: Any) -> AsyncIterator[RunningGateway]:
    async with _gateway(tmp_path) as gw:
        yield gw


class Device:
    """A logged-in device with a GatewayClient on one protocol."""

    def __init__(self, gw: RunningGateway, protocol: str, key: DeviceKey, session: DeviceSession) -> None:
        self.gw = gw
        self.key = key
        self.session = session
        self.client = GatewayClient(gw.url, protocol, key=key, session=session, timeout_s=5.0)

    @property
    def session_id(self) -> str:
        return self.session.device_session_id

    def request(self, message_type: str = "user.profile.get", payload: bytes = b"", **fields: Any
                ) -> ExecuteCommandRequest:
        return signed_execute_request(self.key, self.session_id, message_type, payload, **fields)

    async def raw_call(self, request: ExecuteCommandRequest | bytes) -> ExecuteCommandResponse:
        """Send bytes as they are, no verification (to provoke and read rejections)."""
        raw = request if isinstance(request, bytes) else request.SerializeToString()
        answer = await self.client.transport.unary(EXECUTE_COMMAND_PATH, raw, 5.0)
        response = ExecuteCommandResponse()
        response.ParseFromString(answer)
        return response

    async def rejection(self, request: ExecuteCommandRequest | bytes) -> RpcCallError:
        with pytest.raises(RpcCallError) as info:
            await self.raw_call(request)
        return info.value


@pytest_twisted.async_yield_fixture
async def device_factory(gateway: RunningGateway, protocol: str) -> AsyncIterator[Callable[..., Any]]:
    devices: list[Device] = []

    async def make(gw: RunningGateway = gateway) -> Device:
        key, session = await login(gw.url, new_email("user"))
        device = Device(gw, protocol, key, session)
        devices.append(device)
        return device

    try:
        yield make
    finally:
        for device in devices:
            await device.client.close()


def assert_signed_by_gateway(gw: RunningGateway, device: Device, response: ExecuteCommandResponse) -> None:
    """Verify independently of the client's own code, with the gateway's signing key."""
    signer = gw.gateway.keyring.signer
    check_response(response, device.session_id, {signer.key_id: signer.public_key})


# --- success -----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_correct_request_succeeds_with_a_verified_signature(
        gateway: RunningGateway, device_factory: Any, protocol: str) -> None:
    device = await device_factory()
    verified = await device.client.execute("user.notes.create", {"text": f"via {protocol}"})
    assert (verified.result_code, verified.json()["text"]) == ("ok", f"via {protocol}")
    assert verified.key_id == gateway.gateway.keyring.signer.key_id

    request = device.request("user.notes.list", request_id="list-1")
    response = await device.raw_call(request)
    assert response.envelope.request_id == "list-1" and response.envelope.result_code == "ok"
    assert_signed_by_gateway(gateway, device, response)
    assert [n["text"] for n in json.loads(response.payload_bytes)["notes"]] == [f"via {protocol}"]

    received = await gateway.received()
    assert [(r["method"], r["path"]) for r in received] == [("POST", "/api/v1/user/notes"),
                                                            ("GET", "/api/v1/user/notes")]
    assert received[0]["request_id"] == verified.request_id
    assert (received[1]["user_id"], received[1]["device_session_id"]) == (device.session.user_id,
                                                                         device.session_id)


@pytest_twisted.ensureDeferred
async def test_a_response_signed_for_another_session_fails_verification(
        gateway: RunningGateway, device_factory: Any) -> None:
    """The response signature covers the caller's session id: a client verifying it for another
    session must refuse it (the client's check is not a formality)."""
    from gatewayd.client import VerificationError

    device, other = await device_factory(), await device_factory()
    response = await device.raw_call(device.request())
    key = gateway.gateway.keyring.signer.public_key
    from gatewayd.client.verify import verify_response

    verify_response(response, device.session_id, response.envelope.request_id, key)
    with pytest.raises(VerificationError):
        verify_response(response, other.session_id, response.envelope.request_id, key)


# --- rejections (PROTOCOL.md section 3) ---------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_each_rejection_gets_exactly_its_code_and_reaches_no_user_route(
        gateway: RunningGateway, device_factory: Any) -> None:
    device = await device_factory()
    stranger = DeviceKey.generate()
    once = device.request(request_id="once")
    assert (await device.raw_call(once)).envelope.result_code == "ok"

    no_envelope = ExecuteCommandRequest(payload_bytes=b"", signature=bytes(64))
    long_id = device.request(request_id="x" * 129)
    bad_id = device.request(request_id="not allowed!")
    short_signature = device.request(signature=b"\x01" * 10)
    short_hash = device.request(payload_hash=b"\x02" * 31)
    version_2 = device.request(protocol_version=2)
    unknown_session = signed_execute_request(stranger, "ds_nobody_knows", "user.profile.get")
    wrong_hash = device.request("user.notes.create", b'{"text":"a"}', payload_hash=sha256(b'{"text":"b"}'))
    other_key = signed_execute_request(stranger, device.session_id, "user.profile.get")
    now_ms = int(reactor.seconds() * 1000)
    stale = device.request(timestamp_ms=now_ms - 301_000)
    future = device.request(timestamp_ms=now_ms + 301_000)
    unrouted = device.request("user.nothing.here")
    oversized = device.request("user.notes.create", json.dumps({"text": "x" * MAX_MESSAGE_BYTES}).encode())

    rows: list[tuple[str, ExecuteCommandRequest | bytes, Code]] = [
        ("garbage bytes", b"\xff\xff\xff", Code.INVALID_ARGUMENT),
        ("no envelope", no_envelope, Code.INVALID_ARGUMENT),
        ("request_id too long", long_id, Code.INVALID_ARGUMENT),
        ("request_id alphabet", bad_id, Code.INVALID_ARGUMENT),
        ("signature length", short_signature, Code.INVALID_ARGUMENT),
        ("hash length", short_hash, Code.INVALID_ARGUMENT),
        ("protocol_version 2", version_2, Code.FAILED_PRECONDITION),
        ("unknown session", unknown_session, Code.UNAUTHENTICATED),
        ("wrong payload hash", wrong_hash, Code.INVALID_ARGUMENT),
        ("bad signature", other_key, Code.UNAUTHENTICATED),
        ("stale timestamp", stale, Code.FAILED_PRECONDITION),
        ("future timestamp", future, Code.FAILED_PRECONDITION),
        ("replayed request_id", once, Code.ALREADY_EXISTS),
        ("unknown message_type", unrouted, Code.UNIMPLEMENTED),
        ("oversized message", oversized, Code.RESOURCE_EXHAUSTED),
    ]
    outcomes = {}
    for name, request, _ in rows:
        error = await device.rejection(request)
        outcomes[name] = error.code
        assert len(error.message) < 200 and "Traceback" not in error.message
    assert outcomes == {name: code for name, _, code in rows}

    stale_error = await device.rejection(device.request(timestamp_ms=now_ms - 301_000))
    assert re.search(r"\d{13}", stale_error.message), "the stale rejection names the gateway time"
    received = await gateway.received()
    assert [r["request_id"] for r in received] == ["once"]


@pytest_twisted.ensureDeferred
async def test_a_stale_request_reserves_nothing(gateway: RunningGateway, device_factory: Any) -> None:
    """Freshness comes before replay: the same request_id, stale then fresh, is accepted the second time."""
    device = await device_factory()
    now_ms = int(reactor.seconds() * 1000)
    stale = await device.rejection(device.request(request_id="same", timestamp_ms=now_ms - 400_000))
    assert stale.code == Code.FAILED_PRECONDITION
    response = await device.raw_call(device.request(request_id="same"))
    assert response.envelope.result_code == "ok"


@pytest_twisted.ensureDeferred
async def test_stale_client_clock_is_rejected_through_the_client(
        gateway: RunningGateway, device_factory: Any) -> None:
    """The client stamps requests with its injected clock; a clock 6 minutes slow is refused."""
    device = await device_factory()
    slow = task.Clock()
    slow.advance(reactor.seconds() - 360)
    client = GatewayClient(gateway.url, device.client.protocol, key=device.key, session=device.session,
                           clock=slow, timeout_s=5.0)
    try:
        with pytest.raises(RpcCallError) as info:
            await client.execute("user.profile.get")
    finally:
        await client.close()
    assert info.value.code == Code.FAILED_PRECONDITION
    assert await gateway.received() == []


@pytest_twisted.ensureDeferred
async def test_rate_limit_is_resource_exhausted_with_retry_after(tmp_path: Any, protocol: str) -> None:
    async with _gateway(tmp_path, limits={"session": Budget(rate=0.01, burst=3)}) as gw:
        key, session = await login(gw.url, "limited@example.com")
        device = Device(gw, protocol, key, session)
        try:
            for _ in range(3):
                assert (await device.client.execute("user.profile.get")).ok
            error = await device.rejection(device.request(request_id="over-budget"))
        finally:
            await device.client.close()
        assert error.code == Code.RESOURCE_EXHAUSTED
        assert error.metadata["retry-after"] == "100"  # one unit at 0.01/s, whole seconds
        # The google.rpc.RetryInfo detail, to the millisecond, as each protocol carries it.
        assert retry_delay_s(error.details) == pytest.approx(100, abs=0.5)
        assert error.retry_after == retry_delay_s(error.details)
        assert re.search(r"\(retry after (99\.\d{1,3}|100) s\)$", str(error)), str(error)
        assert "over-budget" not in [r["request_id"] for r in await gw.received()]
        assert len(await gw.received()) == 3


@pytest_twisted.ensureDeferred
async def test_backend_stopped_is_unavailable(gateway: RunningGateway, device_factory: Any) -> None:
    known, fresh = await device_factory(), await device_factory()
    assert (await known.client.execute("user.profile.get")).ok  # its session is now cached
    await gateway.stop_backend()
    route_error = await known.rejection(known.request())
    session_error = await fresh.rejection(fresh.request())
    assert (route_error.code, session_error.code) == (Code.UNAVAILABLE, Code.UNAVAILABLE)
    assert "127.0.0.1" not in route_error.message + session_error.message


# --- backend answers (PROTOCOL.md section 5) ----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_every_backend_status_becomes_its_signed_result_code(
        gateway: RunningGateway, device_factory: Any) -> None:
    device = await device_factory()
    seen = {}
    for status in STATUS_RESULT_CODES:
        verified = await device.client.execute(f"debug.status.{status}", {})
        seen[status] = verified.result_code
        assert verified.json() == {"status": status}
    assert seen == STATUS_RESULT_CODES
    received = await gateway.received()
    assert [r["path"] for r in received] == [f"/api/v1/user/debug/status/{s}" for s in STATUS_RESULT_CODES]


# --- SubscribeEvents -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_subscribe_delivers_verified_events_and_ends_on_revocation(
        gateway: RunningGateway, device_factory: Any) -> None:
    await gateway.gateway.push.when_connected()
    device = await device_factory()
    events: list[VerifiedEvent] = []
    stream = device.client.subscribe(events.append)
    await until(lambda: len(events) >= 1, "gateway.server_time")
    assert events[0].event_type == "gateway.server_time"
    assert abs(events[0].json()["server_time_ms"] - reactor.seconds() * 1000) < 60_000

    await device.client.execute("user.notes.create", {"text": "pushed"})
    await until(lambda: len(events) >= 2, "user.note.created")
    assert (events[1].event_type, events[1].json()["text"]) == ("user.note.created", "pushed")
    assert {e.key_id for e in events} == {gateway.gateway.keyring.signer.key_id}

    await device.client.execute("user.sessions.revoke", {"device_session_id": device.session_id})
    with pytest.raises(RpcCallError) as info:
        await stream
    assert info.value.code == Code.FAILED_PRECONDITION


@pytest_twisted.ensureDeferred
async def test_subscribe_ends_unavailable_when_the_hub_closes(
        gateway: RunningGateway, device_factory: Any) -> None:
    from gatewayd.rpc.errors import RpcError

    device = await device_factory()
    events: list[VerifiedEvent] = []
    stream = device.client.subscribe(events.append)
    await until(lambda: len(events) >= 1, "gateway.server_time")
    gateway.gateway.hub.close(RpcError(Code.UNAVAILABLE, "gateway is shutting down"))
    with pytest.raises(RpcCallError) as info:
        await stream
    assert info.value.code == Code.UNAVAILABLE


@pytest_twisted.ensureDeferred
async def test_subscribe_rejections(gateway: RunningGateway, device_factory: Any) -> None:
    """SubscribeEvents runs stages 1-6: a foreign key is UNAUTHENTICATED, an unknown session too."""
    device = await device_factory()
    stranger = GatewayClient(gateway.url, device.client.protocol, key=DeviceKey.generate(),
                             session=device.session, timeout_s=5.0)
    nobody = GatewayClient(gateway.url, device.client.protocol, key=device.key,
                           session=DeviceSession("ds_nobody", "usr_nobody"), timeout_s=5.0)
    try:
        codes = []
        for client in (stranger, nobody):
            with pytest.raises(RpcCallError) as info:
                await client.subscribe(lambda e: None)
            codes.append(info.value.code)
    finally:
        await stranger.close()
        await nobody.close()
    assert codes == [Code.UNAUTHENTICATED, Code.UNAUTHENTICATED]


@pytest_twisted.ensureDeferred
async def test_cancelling_a_subscription_frees_it(gateway: RunningGateway, device_factory: Any) -> None:
    device = await device_factory()
    events: list[VerifiedEvent] = []
    stream = device.client.subscribe(events.append)
    await until(lambda: len(events) >= 1, "gateway.server_time")
    assert len(gateway.gateway.hub) == 1
    stream.cancel()
    with pytest.raises(defer.CancelledError):
        await stream
    await until(lambda: len(gateway.gateway.hub) == 0, "the hub to drop the stream")


@pytest_twisted.ensureDeferred
async def test_subscribe_envelope_rejections_get_their_codes(
        gateway: RunningGateway, device_factory: Any) -> None:
    from gatewayd.client.client import SUBSCRIBE_EVENTS_PATH
    from gatewayd.testing.client import signed_subscribe_request

    device = await device_factory()
    now_ms = int(reactor.seconds() * 1000)

    def sub(**fields: Any) -> bytes:
        return signed_subscribe_request(device.key, device.session_id, **fields).SerializeToString()

    first = sub(request_id="sub-once")
    messages: list[bytes] = []
    opened = device.client.transport.server_streaming(SUBSCRIBE_EVENTS_PATH, first, messages.append)
    await until(lambda: len(messages) >= 1, "gateway.server_time")
    rows = {
        "wrong message_type": (sub(message_type="user.profile.get"), Code.INVALID_ARGUMENT),
        "protocol_version 2": (sub(protocol_version=2), Code.FAILED_PRECONDITION),
        "stale": (sub(timestamp_ms=now_ms - 301_000), Code.FAILED_PRECONDITION),
        "replayed request_id": (first, Code.ALREADY_EXISTS),
    }
    outcomes = {}
    for name, (raw, _) in rows.items():
        with pytest.raises(RpcCallError) as info:
            await device.client.transport.server_streaming(SUBSCRIBE_EVENTS_PATH, raw, lambda m: None)
        outcomes[name] = info.value.code
    assert outcomes == {name: code for name, (_, code) in rows.items()}
    assert len(gateway.gateway.hub) == 1
    opened.cancel()
    with pytest.raises(defer.CancelledError):
        await opened
