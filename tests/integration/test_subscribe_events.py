"""SubscribeEvents and the push pipeline end to end, with the Python client's transports.

A whole in-process gateway (``start_gateway``: the reference backend on its own loopback
ports, the gateway's push consumer holding a real SubscribePush call to it) is driven over
gRPC (HTTP/2), gRPC-Web (HTTP/1.1) and Connect streaming (HTTP/1.1). The raw stream
messages are checked here, independently of the client's own verification: every event's
payload hash, key id and Ed25519 signature against the key the gateway publishes at
``/api/v1/public/gateway-keys`` (``gatewayd.signing``).

The HTTP/2 variants of gRPC-Web and Connect are in ``tests/interop/test_subscribe_interop.py``
(connect-node); the slow client (RESOURCE_EXHAUSTED) in ``test_slow_client.py``. The checks
are ``gatewayd.testing.events``'.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor

from gatewayd.client import GatewayClient, RpcCallError
from gatewayd.client.wire import make_transport
from gatewayd.devbackend.listeners import serve_push
from gatewayd.rpc.codes import Code
from gatewayd.testing.client import Closer, RunningGateway, new_email, running_gateway
from gatewayd.testing.events import (
    RawStream,
    check_note,
    check_server_time,
    h2_stream_count,
    published_keys,
    same_user_sessions,
    subscribe_request,
)
from gatewayd.testing.wait import WAIT_S, bounded, until

# The Python client's transports: gRPC is HTTP/2 (h2c); gRPC-Web and Connect are HTTP/1.1.
PY_PROTOCOLS = ("grpc", "grpc-web", "connect")


# --- fixtures -------------------------------------------------------------------------------------


@pytest_twisted.async_yield_fixture
async def gateway(tmp_path: Any) -> AsyncIterator[RunningGateway]:
    async with running_gateway(str(tmp_path / "state"), push_connected=True) as gw:
        # start_gateway sets the push backoff small itself (0.05 s, capped at 0.2 s).
        assert gw.gateway.config.backend.push_backoff_max_s <= 0.2
        yield gw


@pytest.fixture(params=PY_PROTOCOLS)
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)




# --- tests ----------------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_events_are_signed_fanned_out_and_revocation_ends_only_that_session(
        gateway: RunningGateway, protocol: str, closer: Closer) -> None:
    keys = await published_keys(gateway.url)
    first, second = await same_user_sessions(gateway, new_email("subscriber"))
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
    actor = closer(GatewayClient(gateway.url, "connect", key=second[0], session=second[1], timeout_s=WAIT_S))
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
                                          timeout_s=WAIT_S))
    with pytest.raises(RpcCallError) as info:
        await revoked_client.execute("user.profile.get")
    assert info.value.code == Code.UNAUTHENTICATED

    stream_b.cancel()
    await until(lambda: len(gateway.gateway.hub) == 0, lambda: f"hub size {len(gateway.gateway.hub)}")


@pytest_twisted.ensureDeferred
async def test_a_cancelled_stream_leaves_the_hub_at_once(
        gateway: RunningGateway, protocol: str, closer: Closer) -> None:
    keys = await published_keys(gateway.url)
    (device,) = await same_user_sessions(gateway, new_email("subscriber"), count=1)
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
    first, second = await same_user_sessions(gateway, new_email("subscriber"))
    transport = closer(make_transport("grpc", reactor, gateway.url))
    stream = RawStream(transport, subscribe_request(first))
    await stream.wait_messages(1)
    actor = closer(GatewayClient(gateway.url, "connect", key=second[0], session=second[1], timeout_s=WAIT_S))
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
