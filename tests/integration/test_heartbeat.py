"""Heartbeats on idle event streams (server.heartbeat_interval_s), driven by a Clock over the real
HTTP/2 transport: an empty DATA frame by default, a signed gateway.heartbeat event on request, nothing
over HTTP/1.1 unless asked; the first event stays the stream's own."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from hyperframe.frame import DataFrame
from twisted.internet import defer, task

from gatewayd._proto.gateway.v1 import gateway_pb2
from gatewayd.heartbeat import HEARTBEAT_EVENT, Heartbeats
from gatewayd.pipeline.signer import EventSigner
from gatewayd.rpc.framing import encode_frame
from gatewayd.rpc.methods import Method
from gatewayd.signing import GatewayKey, event_signing_input_of, verify
from gatewayd.testing.harness import STREAM, Harness
from gatewayd.testing.server import serve

INTERVAL = 15.0
HOLD = encode_frame(gateway_pb2.ExecuteCommandRequest(payload_bytes=b'{"count": 1, "hold": true}').SerializeToString())


async def _serve(harness: Harness, clock: task.Clock, key: GatewayKey) -> None:
    beats = Heartbeats(clock, INTERVAL, EventSigner(key, clock))
    methods = [m if m.path != STREAM else Method(m.path, m.request_type, m.response_type,
                                                  stream=beats.wrap(m.stream))  # type: ignore[arg-type]
               for m in harness.methods.methods()]
    harness.server = await serve(methods)


def _empty_frames(client: Any, sid: int) -> int:
    return sum(1 for f in client.frames if isinstance(f, DataFrame) and f.stream_id == sid and not f.data
               and "END_STREAM" not in f.flags)


async def _turns(n: int = 5) -> None:
    """Let the real reactor carry what the Clock's timers wrote (a few turns, no wall-clock wait)."""
    from twisted.internet import reactor

    for _ in range(n):
        d: defer.Deferred[None] = defer.Deferred()
        reactor.callLater(0, d.callback, None)
        await d


@pytest_twisted.ensureDeferred
async def test_an_idle_h2_stream_gets_empty_data_frames_that_carry_no_message(harness: Harness) -> None:
    clock = task.Clock()
    await _serve(harness, clock, GatewayKey.generate())
    client = await harness.h2()
    sid = client.open_stream(STREAM, body=HOLD)
    response = client.responses[sid]
    await client.wait(lambda: len(response.messages()) == 1, "the stream's first message")
    clock.advance(INTERVAL - 1)
    await _turns()
    assert _empty_frames(client, sid) == 0
    clock.advance(1)
    await client.wait(lambda: _empty_frames(client, sid) == 1, "a heartbeat")
    clock.advance(INTERVAL)
    await client.wait(lambda: _empty_frames(client, sid) == 2, "a second heartbeat")
    assert len(response.messages()) == 1 and not response.done  # nothing for a decoder; the stream is open
    await harness.assert_healthy()


@pytest_twisted.ensureDeferred
async def test_events_on_request_are_signed_gateway_heartbeats(harness: Harness) -> None:
    clock = task.Clock()
    clock.advance(1_700_000_000)
    key = GatewayKey.generate()
    await _serve(harness, clock, key)
    client = await harness.h2()
    sid = client.open_stream(STREAM, body=HOLD, extra=[("gateway-heartbeat", "events")])
    response = client.responses[sid]
    await client.wait(lambda: len(response.messages()) == 1, "the stream's first message")
    clock.advance(INTERVAL)
    await client.wait(lambda: len(response.messages()) == 2, "a heartbeat event")
    first = gateway_pb2.GatewayEvent.FromString(response.messages()[0][1])
    beat = gateway_pb2.GatewayEvent.FromString(response.messages()[1][1])
    assert first.event_type != HEARTBEAT_EVENT
    assert beat.event_type == HEARTBEAT_EVENT and beat.payload_bytes == b'{"server_time_ms":1700000015000}'
    assert beat.key_id == key.key_id and verify(key.public_key, event_signing_input_of(beat), beat.signature)
    assert _empty_frames(client, sid) == 0


class _Stream:
    """A ServerStream over a fake exchange, for the timing rules."""

    def __init__(self, http2: bool) -> None:
        self.sent: list[Any] = []
        self.closed = False
        self.exchange = self
        self.http2 = http2
        self.buffered_bytes = 0
        self.empty = 0

    def send(self, message: Any) -> None:
        self.sent.append(message)

    def send_data(self, data: bytes) -> None:
        assert data == b""
        self.empty += 1


def _run(http2: bool, interval: float = INTERVAL, metadata: dict[str, str] | None = None
         ) -> tuple[task.Clock, _Stream, Any, defer.Deferred[None]]:
    clock = task.Clock()
    beats = Heartbeats(clock, interval, EventSigner(GatewayKey.generate(), clock))
    held: defer.Deferred[None] = defer.Deferred()
    streams: list[Any] = []

    def handler(call: Any, request: Any, stream: Any) -> defer.Deferred[None]:
        streams.append(stream)
        return held

    fake = _Stream(http2)
    call = type("C", (), {"metadata": metadata or {}})()
    d = beats.wrap(handler)(call, None, fake)
    return clock, fake, streams[0], d


def test_no_beat_before_the_first_message_and_traffic_postpones_it() -> None:
    clock, fake, stream, _ = _run(http2=True)
    clock.advance(3 * INTERVAL)
    assert fake.empty == 0  # headers not even sent: nothing to keep alive yet
    stream.send("server_time")
    clock.advance(10)
    stream.send("event")
    clock.advance(INTERVAL - 1)
    assert fake.empty == 0
    clock.advance(1)
    assert fake.empty == 1


def test_http1_gets_nothing_unless_events_were_asked_for() -> None:
    clock, fake, stream, _ = _run(http2=False)
    stream.send("server_time")
    clock.advance(3 * INTERVAL)
    assert fake.empty == 0 and fake.sent == ["server_time"]
    clock, fake, stream, _ = _run(http2=False, metadata={"gateway-heartbeat": "events"})
    stream.send("server_time")
    clock.advance(INTERVAL)
    assert len(fake.sent) == 2 and fake.sent[1].message.event_type == HEARTBEAT_EVENT


def test_the_timer_goes_when_the_stream_ends_and_zero_is_off() -> None:
    clock, fake, stream, d = _run(http2=True)
    stream.send("server_time")
    assert clock.getDelayedCalls()
    d.callback(None)
    assert not clock.getDelayedCalls()
    clock, fake, stream, _ = _run(http2=True, interval=0.0)
    assert stream is fake  # not wrapped at all
