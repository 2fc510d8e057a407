"""A client that never reads cannot make the gateway buffer without bound (PROTOCOL.md section 3).

A raw HTTP/2 client (the h2 state machine on a Twisted connection, nothing of gatewayd's)
opens a gRPC SubscribeEvents stream advertising SETTINGS_INITIAL_WINDOW_SIZE 0 and never sends
a WINDOW_UPDATE, so the gateway can send it no DATA at all. Notes are created until the
gateway gives up on that stream (``server.stream_buffer_bytes`` = 4096): it leaves the hub, its
queue never grew past the bound by more than one message, and once the client finally opens
the window it reads the events that were queued and trailers with RESOURCE_EXHAUSTED. A
normal stream of the same user receives every event throughout.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
import pytest_twisted
from twisted.internet import defer, endpoints, reactor
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from gatewayd._proto.gateway.v1.gateway_pb2 import GatewayEvent, SubscribeEventsRequest
from gatewayd.client import GatewayClient
from gatewayd.client.client import SUBSCRIBE_EVENTS_PATH
from gatewayd.client.wire import make_transport
from gatewayd.rpc.codes import Code
from gatewayd.testing.client import Closer, RunningGateway, new_email, running_gateway
from gatewayd.testing.events import (
    RawStream,
    check_note,
    check_server_time,
    published_keys,
    same_user_sessions,
    subscribe_request,
)
from gatewayd.testing.wait import WAIT_S, until

BUFFER_BYTES = 4096
MAX_NOTES = 200  # far more than 4 KiB of events; the loop stops as soon as the stream is dropped


class StalledGrpcClient(Protocol):
    """One gRPC server-streaming call over h2c whose receive window starts (and stays) at 0.

    Flow control is only granted by ``open_window``; received DATA is never acknowledged
    otherwise. Records the response headers, the body bytes, trailers and any RST_STREAM.
    """

    def __init__(self) -> None:
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        # Our own settings, in force from the first SETTINGS frame: streams get no receive window.
        self.h2.local_settings = h2.settings.Settings(
            client=True, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0,
                                         h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100})
        self.stream_id = 0
        self.headers: dict[str, str] | None = None
        self.body = bytearray()
        self.trailers: dict[str, str] | None = None
        self.reset_code: int | None = None
        self.ended = False
        self.lost: defer.Deferred[None] = defer.Deferred()

    def connectionMade(self) -> None:
        self.h2.initiate_connection()
        self._flush()

    def call(self, authority: str, path: str, message: bytes) -> None:
        self.stream_id = self.h2.get_next_available_stream_id()
        self.h2.send_headers(self.stream_id, [
            (":method", "POST"), (":scheme", "http"), (":authority", authority), (":path", path),
            ("content-type", "application/grpc"), ("te", "trailers"),
        ])
        self.h2.send_data(self.stream_id, b"\x00" + struct.pack(">I", len(message)) + message, end_stream=True)
        self._flush()

    def open_window(self, size: int = 1 << 20) -> None:
        """Finally grant the gateway room to send: on the stream and on the connection."""
        self.h2.increment_flow_control_window(size, stream_id=self.stream_id)
        self.h2.increment_flow_control_window(size)
        self._flush()

    def dataReceived(self, data: bytes) -> None:
        for event in self.h2.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                self.headers = dict(event.headers)  # type: ignore[arg-type]
            elif isinstance(event, h2.events.DataReceived):
                self.body += event.data or b""
            elif isinstance(event, h2.events.TrailersReceived):
                self.trailers = dict(event.headers)  # type: ignore[arg-type]
            elif isinstance(event, h2.events.StreamEnded):
                self.ended = True
            elif isinstance(event, h2.events.StreamReset):
                self.reset_code = event.error_code
                self.ended = True
        self._flush()

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost.callback(None)

    def messages(self) -> list[GatewayEvent]:
        """The body's gRPC length-prefixed messages, parsed; a partial one would fail."""
        events, body = [], bytes(self.body)
        while body:
            assert len(body) >= 5 and body[0] == 0, body[:5]
            (size,) = struct.unpack(">I", body[1:5])
            assert len(body) >= 5 + size, "truncated gRPC message"
            event = GatewayEvent()
            event.ParseFromString(body[5:5 + size])
            events.append(event)
            body = body[5 + size:]
        return events


async def stalled_subscribe(gw: RunningGateway, request: SubscribeEventsRequest) -> StalledGrpcClient:
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", gw.port.getHost().port)
    client = StalledGrpcClient()
    await endpoints.connectProtocol(endpoint, client)
    client.call(f"127.0.0.1:{gw.port.getHost().port}", SUBSCRIBE_EVENTS_PATH, request.SerializeToString())
    return client


@pytest_twisted.async_yield_fixture
async def gateway(tmp_path: Any) -> AsyncIterator[RunningGateway]:
    async with running_gateway(str(tmp_path / "state"), push_connected=True,
                               server={"stream_buffer_bytes": BUFFER_BYTES}) as gw:
        yield gw


def queued_bytes(gw: RunningGateway) -> dict[tuple[int, int], int]:
    """What the gateway holds for each HTTP/2 stream it serves: ``{(connection, stream id): bytes}``."""
    return {(id(conn), sid): stream.buffered_bytes
            for conn in gw.gateway.factory.h2_connections for sid, stream in conn.streams.items()}


@pytest_twisted.ensureDeferred
async def test_a_client_that_never_reads_is_dropped_resource_exhausted(
        gateway: RunningGateway, closer: Closer, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = gateway.gateway.hub
    keys = await published_keys(gateway.url)
    slow_device, fast_device = await same_user_sessions(gateway, new_email("subscriber"))

    fast = RawStream(closer(make_transport("grpc", reactor, gateway.url)), subscribe_request(fast_device))
    await fast.wait_messages(1)
    slow = await stalled_subscribe(gateway, subscribe_request(slow_device))
    await until(lambda: len(hub) == 2, lambda: f"hub size {len(hub)}")
    # The slow stream is answered (HEADERS are not flow-controlled), but no DATA can reach it.
    await until(lambda: slow.headers is not None, "the slow stream's response headers")
    assert slow.headers is not None and slow.headers[":status"] == "200", slow.headers
    assert slow.headers["content-type"].startswith("application/grpc")

    # Every publish is sampled right after the gateway wrote the event to each stream.
    peak: dict[tuple[int, int], int] = {}
    original_publish = hub.publish

    def sampled_publish(*args: Any) -> int:
        delivered = original_publish(*args)
        for key, size in queued_bytes(gateway).items():
            peak[key] = max(peak.get(key, 0), size)
        return delivered

    monkeypatch.setattr(hub, "publish", sampled_publish)

    actor = closer(GatewayClient(gateway.url, "connect", key=fast_device[0], session=fast_device[1],
                                 timeout_s=WAIT_S))
    notes: list[dict[str, str]] = []
    delivered_before = hub.delivered
    while len(hub) == 2 and len(notes) < MAX_NOTES:
        answer = await actor.execute("user.notes.create", {"text": f"note {len(notes):03d} " + "x" * 64})
        assert answer.ok, answer
        notes.append(answer.json())
        # Wait for this event to be published before the next one, so the hub size is current.
        await until(lambda: fast.ended or len(fast.messages) >= 1 + len(notes), "the fast stream's event")
    monkeypatch.undo()

    # The slow stream was dropped; the fast one is still registered.
    assert len(hub) == 1, f"slow stream still registered after {len(notes)} events"
    assert not fast.ended, fast.outcome
    # Every event went to both streams; the last one is the write that overflowed the slow one.
    assert hub.delivered - delivered_before == 2 * len(notes)

    # The normal stream received every event, in order, each signed.
    await fast.wait_messages(1 + len(notes))
    check_server_time(fast.messages[0], keys)
    for event, note in zip(fast.messages[1:], notes, strict=True):
        check_note(event, keys, note)

    # The gateway's queue for the slow stream reached the bound but never passed it by more
    # than one message (the one whose write found the buffer full).
    largest_frame = max(5 + len(m.SerializeToString()) for m in fast.messages)
    slow_peak = max(peak.values())
    assert BUFFER_BYTES < slow_peak <= BUFFER_BYTES + largest_frame, (slow_peak, largest_frame, peak)
    assert sorted(peak.values())[:-1] == [0] * (len(peak) - 1), peak  # the fast stream kept up

    # Nothing has reached the stalled client yet; once it opens its window it reads the
    # queued events, then the trailers that end its stream.
    assert not slow.body and not slow.ended
    slow.open_window()
    await until(lambda: slow.ended, lambda: f"slow stream end; got {len(slow.body)} bytes")
    assert slow.reset_code is None, slow.reset_code
    assert slow.trailers is not None, slow.trailers
    assert slow.trailers.get("grpc-status") == str(int(Code.RESOURCE_EXHAUSTED)), slow.trailers
    received = slow.messages()
    # Everything that was queued: the server time and every event, the overflowing one included.
    assert len(received) == 1 + len(notes), (len(received), len(notes))
    check_server_time(received[0], keys)
    for event, note in zip(received[1:], notes, strict=True):
        check_note(event, keys, note)
    sizes = [5 + len(m.SerializeToString()) for m in received]
    assert sum(sizes) == slow_peak
    # Dropped at the first write that took the queue over the bound, not later.
    assert sum(sizes[:-1]) <= BUFFER_BYTES < sum(sizes), sizes

    # The gateway forgot the stream; the fast one still gets events.
    await until(lambda: sum(len(c.streams) for c in gateway.gateway.factory.h2_connections) == 1,
                lambda: f"h2 streams {queued_bytes(gateway)}")
    later = await actor.execute("user.notes.create", {"text": "still flowing"})
    await fast.wait_messages(2 + len(notes))
    check_note(fast.messages[-1], keys, later.json())

    assert slow.transport is not None
    slow.transport.loseConnection()
    await slow.lost
    fast.cancel()
    await until(lambda: len(hub) == 0, lambda: f"hub size {len(hub)}")
