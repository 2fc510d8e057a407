"""``push.fanout.send_together`` writes what ``stream.send`` on each stream writes.

Two identical servers (real HTTP/2 cores, real gRPC calls opened by an h2 client) get the
same event: one through ``send_together``, the other one stream at a time. The bytes each
connection writes, h2's windows, the calls' counters and what the client reads must match,
also when some streams cannot take the event at once (a full window, a reset stream, a call
that has ended): those are handed back and sent one by one.
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from hyperframe.frame import Frame
from twisted.internet import defer
from twisted.internet.task import Clock

from gatewayd._proto.gateway.v1.gateway_pb2 import GatewayEvent, SubscribeEventsRequest
from gatewayd.config import ServerConfig
from gatewayd.http2.core import ServerConnectionCore
from gatewayd.push.fanout import send_together
from gatewayd.push.hub import Hub, Subscription, connection_of
from gatewayd.rpc.call import Call, Encoded, ServerStream
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.framing import encode_frame
from gatewayd.rpc.methods import Method, MethodTable
from gatewayd.rpc.server import ServerCall
from gatewayd.transport.server import build_factory

PATH = "/test.Events/Subscribe"
STREAMS = 12


class _IO:
    def __init__(self) -> None:
        self.written = bytearray()

    def write(self, data: bytes) -> None:
        self.written += data

    def take(self) -> bytes:
        out = bytes(self.written)
        self.written.clear()
        return out

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def close(self) -> None: ...
    def abort(self) -> None: ...


class _Server:
    """One core with STREAMS open subscriptions, each registered with a hub."""

    def __init__(self, window: int) -> None:
        self.clock = Clock()
        self.hub = Hub(self.clock)
        self.subs: list[Subscription] = []

        def subscribe(call: Call, request: Any, stream: ServerStream) -> defer.Deferred[None]:
            self.subs.append(self.hub.register("usr", "ds", stream))
            stream.send(Encoded(GatewayEvent(event_type="gateway.server_time", event_id="st")))
            return defer.Deferred()

        table = MethodTable()
        table.add(Method(PATH, SubscribeEventsRequest, GatewayEvent, stream=subscribe))
        config = ServerConfig(max_concurrent_streams=STREAMS + 10, idle_timeout_s=0, keepalive_interval_s=0)
        factory, app = build_factory(table, self.clock, config)
        self.io = _IO()
        self.core = ServerConnectionCore(app, self.clock, factory.limits, lambda s: None,  # type: ignore[arg-type,return-value]
                                         self.io, factory.turn_budget)
        self.core.start("127.0.0.1")
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        self.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        self.client.increment_flow_control_window(1 << 20)
        self.received: dict[int, bytes] = {}
        for _ in range(STREAMS):
            sid = self.client.get_next_available_stream_id()
            self.client.send_headers(sid, [(b":method", b"POST"), (b":scheme", b"http"), (b":path", PATH.encode()),
                                           (b":authority", b"t"), (b"content-type", b"application/grpc"),
                                           (b"te", b"trailers")])
            self.client.send_data(sid, encode_frame(b""), end_stream=True)
            self.received[sid] = b""
        self.exchange()

    def exchange(self) -> bytes:
        """Pump both ways (turning the clock) until quiet; what the server wrote."""
        written = b""
        while True:
            up = self.client.data_to_send()
            if up:
                self.core.receive(up)
            self.clock.advance(0)
            down = self.io.take()
            written += down
            if down:
                for ev in self.client.receive_data(down):
                    if isinstance(ev, h2.events.DataReceived):
                        self.received[ev.stream_id] += ev.data
            if not up and not down:
                return written

    def state(self) -> tuple[Any, ...]:
        h2conn = self.core.h2
        return (h2conn.outbound_flow_control_window,
                [(s.stream_id, h2conn.streams[s.stream_id].outbound_flow_control_window if s.stream_id in h2conn.streams
                  else None, len(s._queue), s.buffered_bytes) for s in self.core.streams.values()],
                [(sub.stream.bytes_out, sub.stream.finished) for sub in self.subs],  # type: ignore[attr-defined]
                dict(self.received))


def _frames(data: bytes) -> dict[int, list[tuple[int, int, bytes]]]:
    """Frames by stream, in order: (type, flags, payload)."""
    frames: dict[int, list[tuple[int, int, bytes]]] = {}
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frames.setdefault(frame.stream_id, []).append((data[3], data[4], data[9:9 + length]))
        data = data[9 + length:]
    return frames


def _event(i: int, size: int = 40) -> Encoded:
    return Encoded(GatewayEvent(event_type="user.note.created", event_id=f"evt_{i}", payload_bytes=b"p" * size))


def _send_both(together: _Server, alone: _Server, event_together: Encoded, event_alone: Encoded) -> tuple[int, int]:
    sent, left = send_together(together.subs, event_together)
    for sub in left:
        sub.stream.send(event_together)
    for sub in alone.subs:
        if sub.live:
            sub.stream.send(event_alone)
    return sent, len(left)


def test_every_stream_ready_gives_the_same_bytes_windows_and_counters() -> None:
    together, alone = _Server(1 << 20), _Server(1 << 20)
    assert together.state() == alone.state()
    sent, left = _send_both(together, alone, _event(1), _event(1))
    assert (sent, left) == (STREAMS, 0)
    assert together.state() == alone.state()
    written = together.exchange()
    assert written == alone.exchange()
    assert len(_frames(written)) == STREAMS
    assert together.state() == alone.state()


@pytest.mark.parametrize("situation", ["full-window", "reset", "finished", "not-live", "paused"])
def test_streams_that_cannot_take_it_at_once_are_handed_back_and_end_up_alike(situation: str) -> None:
    size = 200
    window = 2 * (size + 60) if situation == "full-window" else 1 << 20
    together, alone = _Server(window), _Server(window)
    victims = (3, 7)
    for server in (together, alone):
        for k in victims:
            sub = server.subs[k]
            if situation == "reset":
                server.client.reset_stream(sub.stream.exchange.stream_id)  # type: ignore[attr-defined]
            elif situation == "finished":
                sub.stream._finish_with(RpcError(Code.UNAVAILABLE, "gone"))  # type: ignore[attr-defined]
            elif situation == "not-live":
                server.hub.unregister(sub)
            elif situation == "full-window":
                # Fill this stream's window: the next event waits in its queue.
                sub.stream.send(_event(0, size))
                sub.stream.send(_event(0, size))
        if situation == "paused":
            server.core.pause_sending()
        server.exchange()
    assert together.state() == alone.state()
    sent, left = _send_both(together, alone, _event(1, size), _event(1, size))
    expected_left = {"full-window": 2, "reset": 2, "finished": 2, "not-live": 0, "paused": STREAMS}[situation]
    assert left == expected_left
    if situation != "paused":
        assert sent == STREAMS - len(victims)
    assert together.state() == alone.state()
    if situation == "paused":
        together.core.resume_sending()
        alone.core.resume_sending()
    assert _frames(together.exchange()) == _frames(alone.exchange())
    assert together.state() == alone.state()


def test_what_is_not_a_started_grpc_call_on_an_http2_core_is_handed_back() -> None:
    together = _Server(1 << 20)
    subs = list(together.subs)
    # A wrapped stream (not a ServerCall itself) goes through its own send().
    wrapped = Subscription("usr", "ds", _Wrapper(subs[5].stream))
    sent, left = send_together([*subs[:5], wrapped, *subs[5:]], _event(1))
    assert (sent, left) == (STREAMS, [wrapped])
    # Subscriptions written through something that is not an HTTP/2 core: all handed back.
    fake = Subscription("usr", "ds", _Wrapper(None))
    assert send_together([fake, fake], _event(2)) == (0, [fake, fake])


class _Wrapper:
    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.closed = False

    def send(self, message: Any) -> None:
        self.stream.send(message)


def test_a_grpc_call_over_http2_is_grouped_by_its_core_a_wrapper_by_the_call_it_wraps() -> None:
    server = _Server(1 << 20)
    call = server.subs[0].stream
    assert type(call) is ServerCall
    assert [sub.connection for sub in server.subs] == [server.core] * STREAMS
    assert connection_of(_Wrapper(call)) is server.core


def test_a_call_over_http1_is_its_own_connection() -> None:
    class Http1Exchange:  # no ``conn``: an HTTP/1.1 exchange carries one call
        pass

    call = ServerCall.__new__(ServerCall)
    call.exchange = Http1Exchange()  # type: ignore[assignment]
    assert connection_of(call) is call
    wrapper = _Wrapper(call)
    assert connection_of(wrapper) is wrapper  # (as before: the stream registered, when no connection)
