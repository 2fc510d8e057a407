"""The HTTP/2 connection core on a Clock with an in-memory raw client: drain, timers, abuse, flow control.

Every test drives ``ServerConnectionCore`` without a socket (``CorePair``) and
asserts the frames the client received; time passes only when the test says so.
"""

from __future__ import annotations

import gc

import h2.stream
from h2.errors import ErrorCodes
from h2.stream import StreamClosedBy, StreamState
from hyperframe.frame import ContinuationFrame, DataFrame, GoAwayFrame, HeadersFrame, PingFrame, SettingsFrame
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent

from gatewayd._proto.gateway.v1 import gateway_pb2
from gatewayd.config import ServerConfig
from gatewayd.http2.h2adapter import max_header_block_bytes
from gatewayd.http2.stream import H2Stream
from gatewayd.rpc.codes import Code
from gatewayd.rpc.framing import encode_frame
from gatewayd.rpc.server import ServerCall
from gatewayd.testing.harness import CHECK, ECHO, SLOW, STREAM, check_request, echo_request
from gatewayd.transport.turn_writes import TurnWrites
from tests.unit.h2_memory import CorePair

MAX_STREAM_ID = 2**31 - 1
SLOW_BODY = encode_frame(echo_request(b""))
CHECK_BODY = encode_frame(check_request())


def pings(pair: CorePair) -> list[PingFrame]:
    """PINGs the server sent (not its ACKs)."""
    return [f for f in pair.client.frames if isinstance(f, PingFrame) and "ACK" not in f.flags]


def finish_slow(pair: CorePair, index: int = 0, payload: bytes = b"done") -> None:
    pair.methods.slow[index].callback(gateway_pb2.ExecuteCommandResponse(payload_bytes=payload))
    pair.turn()


def check(pair: CorePair) -> int:
    """A Health Check on the pair's connection: its grpc-status."""
    sid = pair.open(CHECK, CHECK_BODY)
    pair.turn()
    return pair.client.responses[sid].grpc_status()


# --- graceful shutdown ------------------------------------------------------------------


def test_shutdown_goaway_ping_goaway_then_close_when_the_last_stream_ends() -> None:
    pair = CorePair()
    first = pair.open(SLOW, SLOW_BODY)
    assert len(pair.methods.slow) == 1
    done = pair.core.shutdown()
    pair.pump()  # the client acknowledges the PING at once
    assert pair.client.goaways == [(MAX_STREAM_ID, ErrorCodes.NO_ERROR), (first, ErrorCodes.NO_ERROR)]
    goaways = [i for i, f in enumerate(pair.client.frames) if isinstance(f, GoAwayFrame)]
    ping_at = pair.client.frames.index(pings(pair)[0])
    assert goaways[0] < ping_at < goaways[1]
    # A stream opened after the final GOAWAY is refused; the open one still finishes.
    late = pair.open(CHECK, CHECK_BODY)
    assert pair.client.responses[late].reset == ErrorCodes.REFUSED_STREAM
    pair.advance(60)
    assert not pair.closed and not done.called
    finish_slow(pair, payload=b"finished")
    assert pair.closed and done.called
    response = pair.client.responses[first]
    assert response.grpc_status() == 0
    [(_, payload)] = response.messages()
    assert gateway_pb2.ExecuteCommandResponse.FromString(payload).payload_bytes == b"finished"


def test_streams_sent_before_the_final_goaway_are_served() -> None:
    # Between GOAWAY(2^31-1) and the final GOAWAY, streams the client sent before it saw the
    # first one are still accepted: that is what the two-step drain is for.
    pair = CorePair(auto_ping_ack=False)
    done = pair.core.shutdown()
    pair.pump()
    assert pair.client.goaways == [(MAX_STREAM_ID, ErrorCodes.NO_ERROR)]
    in_flight = pair.open(CHECK, CHECK_BODY)
    pair.turn()
    assert pair.client.responses[in_flight].grpc_status() == 0
    pair.client.write_frame(PingFrame(0, pings(pair)[0].opaque_data, flags=["ACK"]))
    pair.pump()
    assert pair.client.goaways[-1] == (in_flight, ErrorCodes.NO_ERROR)
    assert pair.closed and done.called


def test_an_unanswered_drain_ping_sends_the_final_goaway_after_its_bound() -> None:
    pair = CorePair(ServerConfig(), auto_ping_ack=False)
    done = pair.core.shutdown()
    pair.pump()
    bound = pair.core.limits.shutdown_ping_timeout_s
    pair.advance(bound - 0.01)
    assert len(pair.client.goaways) == 1 and not pair.closed
    pair.advance(0.02)
    assert pair.client.goaways == [(MAX_STREAM_ID, ErrorCodes.NO_ERROR), (0, ErrorCodes.NO_ERROR)]
    assert pair.closed and done.called


def test_abort_drops_the_connection_and_cancels_running_calls() -> None:
    pair = CorePair()
    pair.open(SLOW, SLOW_BODY)
    done = pair.core.shutdown()
    pair.core.abort()
    pair.pump()
    assert pair.io.aborted and pair.closed and done.called
    assert pair.methods.cancelled == [SLOW] and not pair.core.streams and not pair.app.active


# --- idle and keepalive timers ----------------------------------------------------------


def test_idle_connection_gets_goaway_and_is_closed() -> None:
    pair = CorePair(ServerConfig(idle_timeout_s=10))
    pair.advance(9.9)
    assert not pair.closed
    pair.advance(0.2)
    assert pair.client.goaways == [(0, ErrorCodes.NO_ERROR)] and pair.closed


def test_a_connection_with_an_open_stream_is_not_idle_and_idleness_counts_from_its_end() -> None:
    pair = CorePair(ServerConfig(idle_timeout_s=10))
    pair.advance(5)
    slow = pair.open(SLOW, SLOW_BODY)
    pair.advance(60)
    assert not pair.closed
    finish_slow(pair)
    assert pair.client.responses[slow].grpc_status() == 0
    pair.advance(9.9)
    assert not pair.closed
    pair.advance(0.2)
    assert pair.client.goaways == [(slow, ErrorCodes.NO_ERROR)] and pair.closed


def test_keepalive_pings_while_answered_and_closes_when_an_ack_is_late() -> None:
    config = ServerConfig(keepalive_interval_s=30, keepalive_timeout_s=5)
    answering = CorePair(config)
    answering.advance(30)
    answering.advance(30)
    assert [p.opaque_data for p in pings(answering)] == [b"gwkalive", b"gwkalive"]
    assert not answering.closed
    silent = CorePair(config, auto_ping_ack=False)
    silent.advance(30)
    assert len(pings(silent)) == 1
    silent.advance(4.9)
    assert not silent.closed
    silent.advance(0.2)
    assert silent.client.goaways == [(0, ErrorCodes.NO_ERROR)] and silent.closed


# --- abuse ------------------------------------------------------------------------------


def test_rapid_reset_gets_goaway_enhance_your_calm() -> None:
    pair = CorePair()
    for _ in range(150):
        sid = pair.client.open_stream(SLOW, body=SLOW_BODY, end_stream=False)
        pair.client.reset_stream(sid)
    pair.pump()
    pair.turn()  # the streams beyond this turn's budget
    # Half of the last ~200 streams reset unanswered: the 100th premature reset (stream 199) trips it.
    assert pair.client.goaways == [(199, ErrorCodes.ENHANCE_YOUR_CALM)]
    assert pair.closed and not pair.core.streams and not pair.app.active


def test_answered_streams_reset_afterwards_are_not_rapid_reset() -> None:
    pair = CorePair()
    for _ in range(150):
        sid = pair.open(CHECK, CHECK_BODY)
        pair.turn()
        assert pair.client.responses[sid].grpc_status() == 0
        pair.client.reset_stream(sid)
    assert check(pair) == 0 and not pair.client.goaways


def test_settings_and_ping_floods_get_enhance_your_calm_and_the_budget_refills_with_time() -> None:
    for frame in (SettingsFrame(0, settings={0x4: 65535}), PingFrame(0, b"12345678")):
        pair = CorePair()
        pair.client.write_frame(*[frame] * 150)
        pair.pump()
        pair.advance(10)  # 20 per second refill the burst of 200
        pair.client.write_frame(*[frame] * 150)
        pair.pump()
        assert not pair.client.goaways, frame
        pair.client.write_frame(*[frame] * 100)
        pair.pump()
        assert pair.client.goaways == [(0, ErrorCodes.ENHANCE_YOUR_CALM)], frame
        assert pair.closed


def test_garbage_after_the_preface_is_a_protocol_error() -> None:
    pair = CorePair()
    pair.client_transport.write(b"\x00\x00\x04\x09\x00\x00\x00\x00\x00junk")  # CONTINUATION out of nowhere
    pair.pump()
    assert pair.client.goaways == [(0, ErrorCodes.PROTOCOL_ERROR)] and pair.closed


def test_oversized_header_block_closes_the_connection() -> None:
    pair = CorePair(ServerConfig(max_header_list_bytes=4096))
    ok = pair.open(CHECK, CHECK_BODY, extra=[("x-fits", "a" * 1000)])
    pair.turn()
    assert pair.client.responses[ok].grpc_status() == 0
    huge = pair.open(CHECK, CHECK_BODY, extra=[("x-huge", "a" * 20_000)])
    # GOAWAY(ENHANCE_YOUR_CALM) naming the last stream processed, then close.
    assert pair.client.goaways == [(ok, ErrorCodes.ENHANCE_YOUR_CALM)]
    assert pair.client.responses[huge].headers is None and pair.closed


def test_continuation_flood_gets_goaway_once_the_raw_block_passes_its_bound() -> None:
    pair = CorePair(ServerConfig(max_header_list_bytes=4096))
    ok = pair.open(CHECK, CHECK_BODY)
    pair.turn()
    bound = max_header_block_bytes(4096)
    pair.client.write_frame(HeadersFrame(3, b"\x00" * 1000))  # no END_HEADERS, and none to come
    with capturedLogs() as events:
        for block_bytes in range(1000, 64 * 1000, 1000):  # noqa: B007 (read after the loop)
            pair.pump()
            if pair.closed:
                break
            pair.client.write_frame(ContinuationFrame(3, b"\x00" * 1000))
    # Refused at the frame that took the block past the bound, not at h2's 64th frame.
    assert block_bytes == bound + 1000 - bound % 1000
    assert pair.client.goaways == [(ok, ErrorCodes.ENHANCE_YOUR_CALM)]
    [line] = [formatEvent(e) for e in events if "closing HTTP/2" in e.get("log_format", "")]
    assert f"header block on stream 3 over {bound} bytes (CONTINUATION flood)" in line, line


def test_concurrent_stream_limit_counts_running_handlers() -> None:
    pair = CorePair(ServerConfig(max_concurrent_streams=3))
    sids = [pair.open(SLOW, SLOW_BODY) for _ in range(4)]
    assert pair.client.responses[sids[3]].reset == ErrorCodes.REFUSED_STREAM
    assert len(pair.methods.slow) == 3
    for i in range(3):
        finish_slow(pair, i)
    assert [pair.client.responses[s].grpc_status() for s in sids[:3]] == [0, 0, 0]
    assert check(pair) == 0


def test_streams_answered_before_the_request_ends_are_reset_and_not_held() -> None:
    # A client that never ends its requests must not pile up open streams in h2.
    pair = CorePair(ServerConfig(max_concurrent_streams=3, max_message_bytes=100))
    # Each declares a message over the limit: answered at once, while the request is still open.
    sids = [pair.open(ECHO, b"\x00\x00\x01\x00\x00", end_stream=False) for _ in range(10)]
    for sid in sids:
        response = pair.client.responses[sid]
        assert response.headers is not None and response.headers["grpc-status"] == str(int(Code.RESOURCE_EXHAUSTED))
        assert response.reset == ErrorCodes.NO_ERROR  # RFC 9113 8.1: stop sending, no error
    assert pair.core.h2.open_inbound_streams == 0 and not pair.core.streams
    assert not pair.client.goaways and check(pair) == 0


def test_a_stream_reset_by_the_peer_cancels_its_call() -> None:
    pair = CorePair()
    sid = pair.open(SLOW, SLOW_BODY)
    pair.client.reset_stream(sid)
    pair.pump()
    assert pair.methods.cancelled == [SLOW] and not pair.core.streams and not pair.app.active
    assert check(pair) == 0


def test_a_lost_connection_cancels_running_calls_and_reports_closed() -> None:
    pair = CorePair()
    closed: list[object] = []
    pair.core.on_close = closed.append
    pair.open(SLOW, SLOW_BODY)
    pair.core.connection_lost()
    assert pair.methods.cancelled == [SLOW] and not pair.core.streams and closed == [pair.core]
    assert pair.core.shutdown().called


def test_finished_calls_are_freed_by_reference_counting_alone() -> None:
    # A stream and its call refer to each other while the call runs; the core unlinks them
    # when the stream is done, so no call waits for the cycle collector (which would cost
    # every call its share of a collection).
    pair = CorePair()
    gc.collect()
    # Only this test's objects count: earlier tests may legitimately keep theirs referenced.
    before = {id(o) for o in gc.get_objects() if type(o) in (H2Stream, ServerCall)}
    gc.disable()
    try:
        assert check(pair) == 0  # answered
        slow = pair.open(SLOW, SLOW_BODY)
        pair.client.reset_stream(slow)  # reset by the peer
        pair.pump()
        pair.open(SLOW, SLOW_BODY)
        finish_slow(pair, index=1)  # answered later
        pair.open(SLOW, SLOW_BODY)
        pair.core.connection_lost()  # aborted with the connection
        assert pair.methods.cancelled == [SLOW, SLOW]
        pair.methods.slow.clear()
        alive = [o for o in gc.get_objects() if type(o) in (H2Stream, ServerCall) and id(o) not in before]
        assert alive == []
    finally:
        gc.enable()


# --- flow control and backpressure ------------------------------------------------------


def stream_body(count: int, size: int, hold: bool = False) -> bytes:
    spec = b'{"count": %d, "size": %d%s}' % (count, size, b', "hold": true' if hold else b"")
    return encode_frame(echo_request(spec))


def test_streaming_response_waits_for_window_update() -> None:
    pair = CorePair(auto_window=False)
    count, size = 100, 1000
    sid = pair.open(STREAM, stream_body(count, size))
    pair.turn()
    response, stream = pair.client.responses[sid], pair.core.streams[sid]
    # Stalled: exactly the default window went out, the rest waits in the stream's queue.
    assert len(response.data) == 65535 and not response.ended
    total = len(response.data) + stream.buffered_bytes
    pair.client.window_update(sid, 1 << 20)
    pair.pump()
    assert response.trailers == {"grpc-status": "0"} and len(response.data) == total
    events = [gateway_pb2.GatewayEvent.FromString(p) for _, p in response.messages()]
    assert [e.event_id for e in events] == [str(i) for i in range(count)]
    assert all(len(e.payload_bytes) == size for e in events)


def test_client_that_stops_reading_gets_resource_exhausted() -> None:
    pair = CorePair(ServerConfig(stream_buffer_bytes=8192), auto_window=False)
    sid = pair.open(STREAM, stream_body(200, 1000, hold=True))
    pair.turn()
    assert len(pair.client.responses[sid].data) == 65535
    # The buffer overflowed: the call is over for the server, its handler cancelled.
    assert not pair.app.active and pair.methods.cancelled == [STREAM]
    assert pair.core.streams[sid].buffered_bytes <= 8192 + 1100
    # Once the client reads again, what was queued arrives, then the status.
    pair.client.window_update(sid, 1 << 20)
    pair.pump()
    response = pair.client.responses[sid]
    assert response.grpc_status() == Code.RESOURCE_EXHAUSTED
    assert 65 <= len(response.messages()) < 200


def test_connections_on_one_clock_write_from_one_delayed_call() -> None:
    clock = Clock()
    writes = TurnWrites.for_clock(clock)
    assert TurnWrites.for_clock(clock) is writes and TurnWrites.for_clock(Clock()) is not writes
    flushed: list[int] = []

    class Core:
        def __init__(self, n: int) -> None:
            self.n = n

        def flush(self) -> None:
            flushed.append(self.n)

    for n in range(3):
        writes.add(Core(n))  # type: ignore[arg-type]
    assert len(clock.getDelayedCalls()) == 1 and flushed == []
    clock.advance(0)
    assert flushed == [0, 1, 2] and clock.getDelayedCalls() == []
    writes.add(Core(3))  # type: ignore[arg-type]
    clock.advance(0)
    assert flushed == [0, 1, 2, 3]


def test_a_full_socket_holds_data_until_it_drains() -> None:
    pair = CorePair()
    pair.core.pause_sending()
    sid = pair.open(STREAM, stream_body(3, 10))
    pair.turn()
    response = pair.client.responses[sid]
    assert response.headers is not None and response.data == b"" and not response.ended  # HEADERS go out
    pair.core.resume_sending()
    pair.pump()
    assert len(response.messages()) == 3 and response.trailers == {"grpc-status": "0"}


# --- the peer's GOAWAY ------------------------------------------------------------------


def test_the_peers_goaway_ends_running_calls_and_later_answers_send_nothing() -> None:
    """h2 is CLOSED once it reads the peer's GOAWAY and refuses to send: the calls end there, and an
    answer still produced by an ended stream (a hub ending it, say) is dropped, not a ProtocolError."""
    pair = CorePair()
    pair.open(SLOW, SLOW_BODY)
    stream_sid = pair.open(STREAM, stream_body(1, 10, hold=True))
    pair.turn()
    stream = pair.core.streams[stream_sid]
    goaway = GoAwayFrame(stream_id=0)
    goaway.last_stream_id = 0
    pair.client.write_frame(goaway)
    # Only the GOAWAY reaches the server; the socket is not yet reported lost (as over TCP).
    pair._server_receive(pair.client_transport.value())
    pair.client_transport.clear()
    assert sorted(pair.methods.cancelled) == sorted([SLOW, STREAM]) and not pair.core.streams
    before = len(pair.client.frames)
    stream.send_trailers([(b"grpc-status", b"14")])
    pair.turn()
    assert len(pair.client.frames) == before


# --- finished streams forgotten by h2 at once -------------------------------------------------


def test_a_finished_call_leaves_h2_holding_no_stream_and_late_frames_on_it_are_harmless() -> None:
    pair = CorePair()
    sid = pair.open(CHECK, CHECK_BODY)
    pair.turn()
    assert pair.client.responses[sid].grpc_status() == 0
    conn = pair.core.h2
    # Forgotten as stock h2 forgets a closed stream when the next one opens: remembered as closed by us.
    assert sid not in conn.streams
    assert conn._closed_streams[sid] == StreamClosedBy.SEND_END_STREAM
    # What a client racing the end sends on that stream: ignored, or that stream reset; the connection lives.
    pair.client.window_update(sid, 100)
    pair.client.reset_stream(sid)
    pair.pump()
    assert pair.client.goaways == [] and not pair.closed
    pair.client.write_frame(DataFrame(sid, b"late"))
    pair.pump()
    assert pair.client.responses[sid].reset == ErrorCodes.STREAM_CLOSED
    assert pair.client.goaways == [] and not pair.closed
    assert check(pair) == 0


def test_a_stream_the_peer_resets_is_forgotten_and_late_frames_on_it_are_ignored() -> None:
    pair = CorePair()
    sid = pair.open(SLOW, SLOW_BODY)
    pair.client.reset_stream(sid)
    pair.pump()
    conn = pair.core.h2
    assert sid not in conn.streams and sid not in pair.core.streams
    assert conn._closed_streams[sid] == StreamClosedBy.RECV_RST_STREAM
    pair.client.window_update(sid, 100)
    pair.client.write_frame(DataFrame(sid, b"late", flags=["END_STREAM"]))
    pair.client.reset_stream(sid)
    pair.pump()
    assert pair.client.goaways == [] and not pair.closed
    assert check(pair) == 0


def test_an_answer_before_the_request_ended_resets_and_forgets_the_stream() -> None:
    pair = CorePair()
    sid = pair.client.open_stream(SLOW, end_stream=False)
    pair.pump()
    stream = pair.core.streams[sid]
    stream.send_headers(200, [(b"content-type", b"application/grpc"), (b"grpc-status", b"0")], end_stream=True)
    pair.turn()
    assert pair.client.responses[sid].reset == ErrorCodes.NO_ERROR  # RFC 9113 8.1: stop sending
    conn = pair.core.h2
    assert sid not in conn.streams and conn._closed_streams[sid] == StreamClosedBy.SEND_RST_STREAM
    pair.client.send_body(sid, SLOW_BODY, end_stream=True)  # already on its way: ignored
    pair.pump()
    assert pair.client.goaways == [] and not pair.closed
    assert check(pair) == 0


def test_forgotten_streams_are_remembered_as_h2s_size_limited_dict_remembers_them() -> None:
    from h2.utilities import SizeLimitDict

    from gatewayd.http2.h2adapter import ServerH2Connection, forget_if_closed, server_connection
    from gatewayd.http2.limits import H2Limits

    conn = server_connection(H2Limits())
    stock = SizeLimitDict(size_limit=ServerH2Connection.MAX_CLOSED_STREAMS)
    assert type(conn._closed_streams) is SizeLimitDict
    assert conn._closed_streams._size_limit == ServerH2Connection.MAX_CLOSED_STREAMS
    ways = [StreamClosedBy.SEND_END_STREAM, StreamClosedBy.RECV_RST_STREAM, StreamClosedBy.SEND_RST_STREAM]
    sids = [*range(1, 2 * ServerH2Connection.MAX_CLOSED_STREAMS + 100, 2), 5, 7]  # past the limit, and again
    for n, sid in enumerate(sids):
        stream = h2.stream.H2Stream(sid, conn.config, 65535, 65535)
        stream.state_machine.state = StreamState.CLOSED
        stream.state_machine.stream_closed_by = ways[n % 3]
        conn.streams[sid] = stream
        assert not forget_if_closed(conn, sid) and sid not in conn.streams
        stock[sid] = ways[n % 3]
    assert list(conn._closed_streams.items()) == list(stock.items())
    assert len(stock) == ServerH2Connection.MAX_CLOSED_STREAMS
