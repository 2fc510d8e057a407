"""SubscribeEvents and the push pipeline end to end, with the Python client's transports.

A whole in-process gateway (``start_gateway``: the reference backend on its own loopback
ports, the gateway's push consumer holding a real SubscribePush call to it) is driven over
gRPC (HTTP/2), gRPC-Web (HTTP/1.1) and Connect streaming (HTTP/1.1). The raw stream
messages are checked here, independently of the client's own verification: every event's
payload hash, key id and Ed25519 signature against the key the gateway publishes at
``/api/v1/public/gateway-keys`` (``gatewayd.signing``).

The HTTP/2 variants of gRPC-Web and Connect are in ``tests/interop/test_subscribe_interop.py``
(connect-node); the slow client (RESOURCE_EXHAUSTED) in ``test_slow_client.py``. Both import
the helpers below.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor, task
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool

from gatewayd._proto.gateway.v1.gateway_pb2 import GatewayEvent, SubscribeEventsRequest
from gatewayd.client import DeviceKey, GatewayClient, RpcCallError
from gatewayd.client.client import GATEWAY_KEYS_PATH, SUBSCRIBE_EVENTS_PATH, DeviceSession
from gatewayd.client.wire import RpcTransport, make_transport
from gatewayd.devbackend.listeners import serve_push
from gatewayd.rpc.codes import Code
from gatewayd.signing import event_signing_input, key_id_for, sha256, verify
from gatewayd.testing.client import RunningGateway, login, signed_subscribe_request, start_gateway

TIMEOUT = 5.0
SERVER_TIME = "gateway.server_time"
NOTE_CREATED = "user.note.created"
# The Python client's transports: gRPC is HTTP/2 (h2c); gRPC-Web and Connect are HTTP/1.1.
PY_PROTOCOLS = ("grpc", "grpc-web", "connect")


# --- helpers shared with test_slow_client.py and the interop test --------------------------------


async def until(predicate: Callable[[], bool], describe: Callable[[], str] | str,
                timeout: float = TIMEOUT) -> None:
    """Wait (bounded) until ``predicate()`` holds, checking every 5 ms on the reactor."""
    deadline = reactor.seconds() + timeout
    while not predicate():
        if reactor.seconds() > deadline:
            what = describe() if callable(describe) else describe
            raise AssertionError(f"still not true after {timeout} s: {what}")
        await task.deferLater(reactor, 0.005, lambda: None)


def bounded(d: defer.Deferred[Any], timeout: float = TIMEOUT) -> defer.Deferred[Any]:
    return d.addTimeout(timeout, reactor)


async def published_keys(url: str) -> dict[str, bytes]:
    """The gateway's published keys, ``{key_id: raw Ed25519 public key}``, each id checked."""
    pool = HTTPConnectionPool(reactor, persistent=False)
    try:
        response = await treq.get(url + GATEWAY_KEYS_PATH, pool=pool)
        body = await response.content()
    finally:
        await pool.closeCachedConnections()
    assert response.code == 200, body
    keys = {}
    for entry in json.loads(body)["keys"]:
        raw = base64.b64decode(entry["public_key"], validate=True)
        assert len(raw) == 32 and key_id_for(raw) == entry["key_id"], entry
        keys[entry["key_id"]] = raw
    assert keys
    return keys


def check_event(event: GatewayEvent, keys: dict[str, bytes]) -> Any:
    """Assert ``event`` is signed by a published gateway key over PROTOCOL.md's event signing
    input and its payload matches its hash; returns the payload parsed as JSON."""
    assert event.key_id in keys, (event.key_id, list(keys))
    assert event.payload_hash == sha256(event.payload_bytes), event
    signed = event_signing_input(event.event_type, event.event_id, event.timestamp_ms, event.payload_hash,
                                 event.key_id)
    assert verify(keys[event.key_id], signed, event.signature), f"bad signature on {event}"
    return json.loads(event.payload_bytes)


def check_server_time(event: GatewayEvent, keys: dict[str, bytes]) -> None:
    assert event.event_type == SERVER_TIME, event
    payload = check_event(event, keys)
    assert set(payload) == {"server_time_ms"}, payload
    now_ms = reactor.seconds() * 1000
    assert abs(payload["server_time_ms"] - now_ms) < 60_000, payload
    assert event.event_id


def check_note(event: GatewayEvent, keys: dict[str, bytes], note: dict[str, str]) -> None:
    assert event.event_type == NOTE_CREATED, event
    assert check_event(event, keys) == note


async def same_user_sessions(gw: RunningGateway, email: str, count: int = 2
                             ) -> list[tuple[DeviceKey, DeviceSession]]:
    """``count`` device sessions (each with its own key) of one user."""
    devices = [await login(gw.url, email) for _ in range(count)]
    assert len({s.user_id for _, s in devices}) == 1
    assert len({s.device_session_id for _, s in devices}) == count
    return devices


def subscribe_request(device: tuple[DeviceKey, DeviceSession]) -> SubscribeEventsRequest:
    key, session = device
    return signed_subscribe_request(key, session.device_session_id)


class RawStream:
    """One SubscribeEvents call on a client transport: raw messages parsed, not verified."""

    def __init__(self, transport: RpcTransport, request: SubscribeEventsRequest) -> None:
        self.messages: list[GatewayEvent] = []
        self.outcome: Any = None  # None while open; then None-result or Failure
        self.ended = False
        self.done = transport.server_streaming(SUBSCRIBE_EVENTS_PATH, request.SerializeToString(),
                                               self._message)
        self.done.addBoth(self._end)

    def _message(self, raw: bytes) -> None:
        event = GatewayEvent()
        event.ParseFromString(raw)
        self.messages.append(event)

    def _end(self, result: Any) -> None:
        self.ended = True
        self.outcome = result

    async def wait_messages(self, count: int) -> None:
        await until(lambda: len(self.messages) >= count or self.ended,
                    lambda: f"{count} messages; got {[m.event_type for m in self.messages]}")
        assert len(self.messages) >= count, (self.messages, self.outcome)

    async def wait_end(self) -> Any:
        await until(lambda: self.ended, "the stream to end")
        return self.outcome

    def status(self) -> Code:
        """The stream's end status (OK, or the RpcCallError's code)."""
        assert self.ended
        if isinstance(self.outcome, Failure):
            self.outcome.trap(RpcCallError)
            error = self.outcome.value
            assert isinstance(error, RpcCallError)
            return Code(error.code)
        return Code.OK

    def cancel(self) -> None:
        if not self.ended:
            self.done.cancel()


def h2_stream_count(gw: RunningGateway) -> int:
    return sum(len(conn.streams) for conn in gw.gateway.factory.h2_connections)


# --- fixtures -------------------------------------------------------------------------------------


_emails = iter(range(1_000_000))


def new_email() -> str:
    return f"subscriber{next(_emails)}@example.com"


@pytest_twisted.async_yield_fixture
async def gateway(tmp_path: Any) -> AsyncIterator[RunningGateway]:
    # start_gateway sets the push backoff small itself (0.05 s, capped at 0.2 s) and takes no
    # ``backend=`` override (it would collide with its own backend section).
    gw = await start_gateway(str(tmp_path / "state"))
    try:
        assert gw.gateway.config.backend.push_backoff_max_s <= 0.2
        await bounded(gw.gateway.push.when_connected())
        await until(lambda: gw.backend.bus.subscriber_count == 1, "the backend to see the push call")
        yield gw
    finally:
        await gw.stop()


@pytest.fixture(params=PY_PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Closer:
    """Transports and clients to close at the end of a test, whatever happens."""

    def __init__(self) -> None:
        self.things: list[Any] = []

    def __call__(self, thing: Any) -> Any:
        self.things.append(thing)
        return thing

    async def close(self) -> None:
        for thing in reversed(self.things):
            await thing.close()


@pytest_twisted.async_yield_fixture
async def closer() -> AsyncIterator[Closer]:
    c = Closer()
    try:
        yield c
    finally:
        await c.close()


# --- tests ----------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_events_are_signed_fanned_out_and_revocation_ends_only_that_session(
        gateway: RunningGateway, protocol: str, closer: Closer) -> None:
    keys = await published_keys(gateway.url)
    first, second = await same_user_sessions(gateway, new_email())
    transport = closer(make_transport(protocol, reactor, gateway.url))
    stream_a = RawStream(transport, subscribe_request(first))
    stream_b = RawStream(transport, subscribe_request(second))
    await stream_a.wait_messages(1)
    await stream_b.wait_messages(1)
    for stream in (stream_a, stream_b):
        check_server_time(stream.messages[0], keys)
    assert len(gateway.gateway.hub) == 2
    if protocol == "grpc":
        assert h2_stream_count(gateway) == 2  # both on the Python client's one HTTP/2 connection

    # Another session of the same user creates a note: both streams get the same signed event.
    actor = closer(GatewayClient(gateway.url, "connect", key=second[0], session=second[1], timeout_s=TIMEOUT))
    text = f"note over {protocol}"
    created = await actor.execute("user.notes.create", {"text": text})
    assert created.ok, created
    note = created.json()
    assert note["text"] == text
    await stream_a.wait_messages(2)
    await stream_b.wait_messages(2)
    for stream in (stream_a, stream_b):
        check_note(stream.messages[1], keys, note)
    # Signed once, fanned out: the very same event reached both.
    assert stream_a.messages[1].SerializeToString() == stream_b.messages[1].SerializeToString()

    # The second session revokes the first: only the first session's stream ends.
    revoked = await actor.execute("user.sessions.revoke", {"device_session_id": first[1].device_session_id})
    assert (revoked.result_code, revoked.json()) == ("ok", {"revoked": 1})
    await stream_a.wait_end()
    assert stream_a.status() == Code.FAILED_PRECONDITION, stream_a.outcome
    assert not stream_b.ended, stream_b.outcome
    assert len(gateway.gateway.hub) == 1

    # The second stream is still open: one more event reaches it, and nothing more reaches the first.
    later = await actor.execute("user.notes.create", {"text": "after the revocation"})
    assert later.ok
    await stream_b.wait_messages(3)
    check_note(stream_b.messages[2], keys, later.json())
    assert len(stream_a.messages) == 2
    assert not stream_b.ended

    # The revoked session is refused by the gateway at once (its cache entry was dropped).
    revoked_client = closer(GatewayClient(gateway.url, "connect", key=first[0], session=first[1],
                                          timeout_s=TIMEOUT))
    with pytest.raises(RpcCallError) as info:
        await revoked_client.execute("user.profile.get")
    assert info.value.code == Code.UNAUTHENTICATED

    stream_b.cancel()
    await until(lambda: len(gateway.gateway.hub) == 0, lambda: f"hub size {len(gateway.gateway.hub)}")


@pytest_twisted.ensureDeferred
async def test_a_cancelled_stream_leaves_the_hub_at_once(
        gateway: RunningGateway, protocol: str, closer: Closer) -> None:
    keys = await published_keys(gateway.url)
    (device,) = await same_user_sessions(gateway, new_email(), count=1)
    transport = closer(make_transport(protocol, reactor, gateway.url))
    stream = RawStream(transport, subscribe_request(device))
    await stream.wait_messages(1)
    check_server_time(stream.messages[0], keys)
    assert len(gateway.gateway.hub) == 1
    assert len(gateway.gateway.rpc.active) == 1

    stream.cancel()
    # "At once": the client's RST_STREAM (HTTP/2) or closed connection (HTTP/1.1) is all it takes.
    await until(lambda: len(gateway.gateway.hub) == 0, lambda: f"hub size {len(gateway.gateway.hub)}",
                timeout=2.0)
    await until(lambda: not gateway.gateway.rpc.active, lambda: f"active calls {gateway.gateway.rpc.active}",
                timeout=2.0)
    if protocol == "grpc":
        conns = gateway.gateway.factory.h2_connections
        assert len(conns) == 1  # the connection survives a cancelled stream...
        await until(lambda: h2_stream_count(gateway) == 0,
                    lambda: f"h2 streams {[list(c.streams) for c in conns]}", timeout=2.0)
        # ...and serves the next subscription on it.
        again = RawStream(transport, subscribe_request(device))
        await again.wait_messages(1)
        check_server_time(again.messages[0], keys)
        assert len(conns) == 1 and h2_stream_count(gateway) == 1
        again.cancel()
        await until(lambda: len(gateway.gateway.hub) == 0 and h2_stream_count(gateway) == 0,
                    lambda: f"hub {len(gateway.gateway.hub)}, streams {h2_stream_count(gateway)}", timeout=2.0)


@pytest_twisted.ensureDeferred
async def test_events_flow_again_after_the_push_consumer_reconnects(
        gateway: RunningGateway, closer: Closer) -> None:
    keys = await published_keys(gateway.url)
    first, second = await same_user_sessions(gateway, new_email())
    transport = closer(make_transport("grpc", reactor, gateway.url))
    stream = RawStream(transport, subscribe_request(first))
    await stream.wait_messages(1)
    actor = closer(GatewayClient(gateway.url, "connect", key=second[0], session=second[1], timeout_s=TIMEOUT))
    consumer = gateway.gateway.push
    bus = gateway.backend.bus

    before = await actor.execute("user.notes.create", {"text": "before the outage"})
    await stream.wait_messages(2)
    check_note(stream.messages[1], keys, before.json())

    # The backend's push listener goes away (port closed, SubscribePush connection aborted).
    push_server = gateway.backend_service.push_server
    port = push_server.port_number
    await push_server.stop()
    gateway.backend_service.push_server = None
    await bounded(consumer.when_state("backoff"))
    assert bus.subscriber_count == 0
    assert not stream.ended  # a push outage does not end client streams
    # A redial fails while nothing listens: connecting, then back to backoff, never connected.
    await bounded(consumer.when_state("connecting", "connected"))
    assert consumer.state == "connecting"
    await bounded(consumer.when_state("backoff", "connected"))
    assert consumer.state == "backoff"

    # The listener comes back on the same port; the consumer redials within its (small) backoff.
    gateway.backend_service.push_server = await serve_push(
        reactor, f"tcp:{port}:interface=127.0.0.1", gateway.backend)
    await bounded(consumer.when_connected())
    await until(lambda: bus.subscriber_count == 1, "the backend to see the new push call")

    after = await actor.execute("user.notes.create", {"text": "after the outage"})
    assert after.ok
    await stream.wait_messages(3)
    check_note(stream.messages[2], keys, after.json())
    assert not stream.ended and len(gateway.gateway.hub) == 1
    stream.cancel()
