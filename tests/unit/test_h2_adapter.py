"""What gatewayd.http2.h2adapter does around h2, pinned to h2's own bytes and behaviour.

(The DATA fast path is pinned in test_h2_data_frames.py.)
"""

from __future__ import annotations

import ast
import inspect
import random
import re
import struct
import textwrap
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.frame_buffer
import h2.settings
import h2.stream
import hpack
import pytest
from h2.errors import ErrorCodes
from h2.stream import StreamState
from hpack.hpack import encode_integer
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)

from gatewayd.http2 import h2adapter
from gatewayd.http2.h2adapter import MAX_STREAM_ID, ServerH2Connection, goaway_frame, server_config, server_connection
from gatewayd.http2.limits import H2Limits
from gatewayd.testing.raw_h2 import FrameReader

LIMITS = H2Limits(max_concurrent_streams=5, max_header_list_bytes=4096, initial_window_size=1 << 20)
REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/x"), (b":authority", b"a")]
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REQUEST_CL = [*REQUEST, (b"content-length", b"4")]


def client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    return conn


def test_our_preface_is_what_h2_sends_for_our_settings_and_the_local_game_sends_nothing() -> None:
    ours = server_connection(LIMITS)
    theirs = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    theirs.initiate_connection()
    theirs.update_settings({
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 5,
        h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 4096,
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20,
    })
    theirs.increment_flow_control_window(1 << 20)
    assert ours.data_to_send() == theirs.data_to_send()
    # The peer sees our limit...
    peer = client()
    peer.receive_data(server_connection(LIMITS).data_to_send())
    assert peer.remote_settings.max_concurrent_streams == 5
    # ...while h2 enforces none locally, so a stream over it is ours to refuse, not a connection error.
    assert ours.local_settings.max_concurrent_streams == MAX_STREAM_ID


def test_streams_over_the_advertised_limit_reach_us_even_after_the_peer_acks_our_settings() -> None:
    server, peer = server_connection(LIMITS), client()
    peer.receive_data(server.data_to_send())
    server.receive_data(peer.data_to_send())  # the ACKs of both SETTINGS frames
    assert server.local_settings.max_concurrent_streams == MAX_STREAM_ID
    # A client that ignores the limit (it raced our SETTINGS, say): h2 would end the connection.
    peer.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 1000
    peer.remote_settings.acknowledge()
    for _ in range(LIMITS.max_concurrent_streams + 3):
        peer.send_headers(peer.get_next_available_stream_id(), REQUEST)
    events = server.receive_data(peer.data_to_send())
    assert sum(isinstance(e, h2.events.RequestReceived) for e in events) == 8


def test_the_header_list_limit_holds_from_the_first_frame() -> None:
    server, peer = server_connection(LIMITS), client()
    peer.send_headers(1, [*REQUEST, (b"x-big", b"a" * 5000)])
    with pytest.raises(h2.exceptions.DenialOfServiceError):
        server.receive_data(peer.data_to_send())  # before the peer has seen, let alone ACKed, our SETTINGS


def test_a_graceful_goaway_is_h2s_goaway_without_closing_h2() -> None:
    theirs = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    theirs.initiate_connection()
    theirs.data_to_send()
    theirs.close_connection(error_code=0, last_stream_id=41)
    assert goaway_frame(41) == theirs.data_to_send()
    assert goaway_frame(MAX_STREAM_ID)[-8:] == b"\x7f\xff\xff\xff\x00\x00\x00\x00"


# --- ServerH2Connection: frames received without a repr() each ------------------------------


def function_body(function: object) -> list[ast.stmt]:
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))  # type: ignore[arg-type]
    body = tree.body[0].body  # type: ignore[attr-defined]
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring
    return list(body)


def test_receive_frame_is_h2s_own_without_the_trace_repr() -> None:
    ours = function_body(ServerH2Connection._receive_frame)
    theirs = function_body(h2.connection.H2Connection._receive_frame)
    # h2's: an annotation of `events`, the trace call formatting repr(frame), then ours.
    assert [type(s) for s in theirs[:2]] == [ast.AnnAssign, ast.Expr]
    assert "repr" in ast.dump(theirs[1]) and "trace" in ast.dump(theirs[1])
    assert [ast.dump(s) for s in theirs[2:]] == [ast.dump(s) for s in ours]


def test_no_frame_is_formatted_while_receiving(monkeypatch: pytest.MonkeyPatch) -> None:
    formatted = []
    original = HeadersFrame.__repr__

    def counted(frame: HeadersFrame) -> str:
        formatted.append(frame)
        return original(frame)

    monkeypatch.setattr(HeadersFrame, "__repr__", counted)
    ours, stock = server_connection(LIMITS), h2.connection.H2Connection(server_config())
    requests = PREFACE + headers_frames(3, end_stream=True)
    assert len(ours.receive_data(requests)) == len(stock.receive_data(requests)) > 3
    assert len(formatted) == 3  # stock h2's repr()s, none of ours


# --- ServerH2Connection: a new stream without walking every stream ---------------------


def open_count(conn: h2.connection.H2Connection) -> int:
    """Open inbound streams, counted without h2's side effect (forgetting closed streams)."""
    return sum(1 for sid, stream in conn.streams.items() if stream.open and sid % 2)


def can_send(conn: h2.connection.H2Connection, sid: int) -> bool:
    """Whether ``conn`` has not yet ended its side of the stream."""
    stream = conn.streams.get(sid)
    return stream is not None and stream.state_machine.state in (StreamState.OPEN, StreamState.HALF_CLOSED_REMOTE)


def feed(ours: h2.connection.H2Connection, stock: h2.connection.H2Connection, data: bytes) -> str:
    """Both servers receive ``data``: the same events or the same error (its name, else "events")."""
    outcomes = []
    for conn in (ours, stock):
        try:
            outcomes.append(("events", repr(conn.receive_data(data))))
        except h2.exceptions.ProtocolError as e:
            outcomes.append((type(e).__name__, str(e)))
    assert outcomes[0] == outcomes[1]
    assert ours.data_to_send() == stock.data_to_send()
    assert open_count(ours) == open_count(stock)
    return outcomes[0][0]


def session(seed: int, limit: int | None) -> tuple[int, str]:
    """A random client and both servers answering alike: the streams opened, and how it ended."""
    rng = random.Random(seed)
    ours, stock = ServerH2Connection(server_config()), h2.connection.H2Connection(server_config())
    for conn in (ours, stock):
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limit or 100})
        if limit is None:  # the game server_connection plays: no limit in h2
            conn.local_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = MAX_STREAM_ID
        conn.local_settings.acknowledge()
    peer = client()
    assert ours.data_to_send() == stock.data_to_send()
    peer.remote_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = 10**6  # ignores any limit
    peer.remote_settings.acknowledge()
    opened: list[int] = []
    for _ in range(400):
        action = rng.random()
        if action < 0.35:
            sid = peer.get_next_available_stream_id()
            peer.send_headers(sid, REQUEST, end_stream=rng.random() < 0.5)
            opened.append(sid)
        elif opened and action < 0.5:
            sid = rng.choice(opened)
            if sid in peer.streams and peer.streams[sid].open:
                peer.reset_stream(sid)
        elif opened and action < 0.6:
            sid = rng.choice(opened)
            if can_send(peer, sid):
                peer.end_stream(sid)
        elif opened and action < 0.7:
            # Frames on a stream that may be long closed, as a peer racing a reset sends them.
            sid = rng.choice(opened)
            late = rng.choice([DataFrame(sid, b"late"), WindowUpdateFrame(sid, window_increment=10),
                               RstStreamFrame(sid, error_code=8)])
            peer._data_to_send += late.serialize()
        else:
            answerable = [sid for sid in opened if can_send(stock, sid)]
            if answerable:
                sid = rng.choice(answerable)
                if rng.random() < 0.7:
                    for conn in (ours, stock):
                        conn.send_headers(sid, [(b":status", b"200")], end_stream=True)
                else:
                    for conn in (ours, stock):
                        conn.reset_stream(sid, 8)
                data = ours.data_to_send()
                assert data == stock.data_to_send()
                peer.receive_data(data)
        outcome = feed(ours, stock, peer.data_to_send())
        if outcome != "events":
            return len(opened), outcome
    return len(opened), "events"


@pytest.mark.parametrize("floor", [4, 128], ids=["walk-often", "walk-rarely"])
@pytest.mark.parametrize("limit", [None, 8], ids=["no-h2-limit", "h2-limit-8"])
def test_frames_events_and_errors_are_stock_h2s(monkeypatch: pytest.MonkeyPatch, floor: int, limit: int | None) -> None:
    monkeypatch.setattr(h2adapter, "_RECOUNT_FLOOR", floor)
    sessions = [session(seed, limit) for seed in range(12)]
    opened = sum(n for n, _ in sessions)
    ends = {outcome for _, outcome in sessions}
    if limit is None:
        assert opened > 1000 and ends == {"events"}, (opened, ends)
    else:  # a client over h2's limit ends the connection, for both alike
        assert opened > 100 and "TooManyStreamsError" in ends, (opened, ends)


def headers_frames(count: int, end_stream: bool) -> bytes:
    encoder = hpack.Encoder()
    frames = []
    for i in range(count):
        frame = HeadersFrame(2 * i + 1, encoder.encode(REQUEST), flags=["END_HEADERS"])
        if end_stream:
            frame.flags.add("END_STREAM")
        frames.append(frame.serialize())
    return b"".join(frames)


class Walks:
    """Counts h2's walks over its streams (``_open_streams``) and the streams each walk visits."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = self.visited = 0
        original = h2.connection.H2Connection._open_streams

        def counted(conn: h2.connection.H2Connection, remainder: int) -> int:
            self.calls += 1
            self.visited += len(conn.streams)
            return original(conn, remainder)

        monkeypatch.setattr(h2.connection.H2Connection, "_open_streams", counted)


def test_thousands_of_open_streams_cost_a_few_walks_not_one_each(monkeypatch: pytest.MonkeyPatch) -> None:
    streams = 4000
    requests = PREFACE + headers_frames(streams, end_stream=False)
    walks = Walks(monkeypatch)
    stock = h2.connection.H2Connection(server_config())
    stock.local_settings = h2.settings.Settings(client=False, initial_values={
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAM_ID})
    stock.receive_data(requests[: len(PREFACE) + len(headers_frames(500, end_stream=False))])
    assert walks.calls == 500  # stock h2: one walk over every stream held, per new stream
    ours = server_connection(H2Limits(max_concurrent_streams=streams))
    walks.calls = walks.visited = 0
    events = ours.receive_data(requests)
    assert sum(isinstance(e, h2.events.RequestReceived) for e in events) == streams
    # Ours: a walk each time `streams` has doubled, so about 2 visits per stream in all.
    assert walks.calls <= 6 and walks.visited <= 2 * streams, (walks.calls, walks.visited)
    assert ours.open_inbound_streams == streams  # exact when asked outside a new stream


def test_closed_streams_are_still_forgotten() -> None:
    ours = server_connection(H2Limits())
    ours.receive_data(PREFACE)
    encoder = hpack.Encoder()
    most = 0
    for i in range(3000):
        sid = 2 * i + 1
        ours.receive_data(HeadersFrame(sid, encoder.encode(REQUEST), flags=["END_HEADERS", "END_STREAM"]).serialize())
        ours.send_headers(sid, [(b":status", b"204")], end_stream=True)  # closed on both sides
        most = max(most, len(ours.streams))
    assert most <= 128
    assert 1 not in ours.streams and ours._closed_streams[1] is not None  # forgotten as h2 forgets


def test_closed_streams_remembered_are_bounded() -> None:
    ours = server_connection(H2Limits())
    ours.receive_data(PREFACE)
    encoder = hpack.Encoder()
    for i in range(6000):
        sid = 2 * i + 1
        ours.receive_data(HeadersFrame(sid, encoder.encode(REQUEST), flags=["END_HEADERS", "END_STREAM"]).serialize())
        ours.send_headers(sid, [(b":status", b"204")], end_stream=True)
    assert ServerH2Connection.MAX_CLOSED_STREAMS < h2.connection.H2Connection.MAX_CLOSED_STREAMS
    assert 0 < len(ours._closed_streams) <= ServerH2Connection.MAX_CLOSED_STREAMS
    # A late WINDOW_UPDATE on a stream forgotten long ago is still ignored, not an error.
    events = ours.receive_data(WindowUpdateFrame(1, 1).serialize())
    assert events == []


# --- header blocks in CONTINUATION frames ----------------------------------------------------

WORST_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


def _huffman_literal(data: bytes) -> bytes:
    coded = WORST_HUFFMAN.encode(data)
    prefix = encode_integer(len(coded), 7)
    prefix[0] |= 0x80
    return bytes(prefix) + coded


def _largest_acceptable_block(list_bytes: int) -> bytes:
    """A header block whose header list is exactly ``list_bytes`` (RFC 7541 4.1 sizes), the request's
    pseudo-headers and then fields whose names and values are all octets with HPACK's longest
    Huffman code (30 bits), Huffman-coded anyway: as many raw bytes as the limit lets a block have."""
    block = h2adapter.stateless_block(REQUEST)
    assert block is not None
    left = list_bytes - sum(len(n) + len(v) + 32 for n, v in REQUEST)
    while left > 0:
        value = min(1000, left - 33)
        block += b"\x00" + _huffman_literal(b"\n") + _huffman_literal(b"\n" * value)  # literal, new name
        left -= 1 + value + 32
    assert left == 0
    return block


def _in_frames(block: bytes, size: int, end_headers: bool = True) -> list[bytes]:
    """``block`` as HEADERS then CONTINUATION frames on stream 1, ``size`` bytes each."""
    pieces = [block[i : i + size] for i in range(0, len(block), size)]
    frames = [HeadersFrame(1, pieces[0], flags=["END_STREAM"])]
    frames += [ContinuationFrame(1, piece) for piece in pieces[1:]]
    if end_headers:
        frames[-1].flags.add("END_HEADERS")
    return [f.serialize() for f in frames]


def _connected(conn: h2.connection.H2Connection) -> h2.connection.H2Connection:
    conn.receive_data(PREFACE + SettingsFrame(0).serialize())
    conn.data_to_send()
    return conn


def test_the_raw_header_block_bound_exceeds_any_block_the_header_list_limit_accepts() -> None:
    block = _largest_acceptable_block(LIMITS.max_header_list_bytes)
    bound = h2adapter.max_header_block_bytes(LIMITS.max_header_list_bytes)
    assert 3.4 * LIMITS.max_header_list_bytes < len(block) <= bound  # near 30/8 of the limit, under 4x
    server = _connected(server_connection(LIMITS))
    events = []
    for frame in _in_frames(block, 700):
        events += server.receive_data(frame)
    [request] = [e for e in events if isinstance(e, h2.events.RequestReceived)]
    expected = hpack.Decoder()
    expected.max_header_list_size = LIMITS.max_header_list_bytes
    assert request.headers == expected.decode(block, raw=True)
    # One byte more of header list is the decoder's to refuse, as it was.
    bigger = _largest_acceptable_block(LIMITS.max_header_list_bytes + 1)
    server = _connected(server_connection(LIMITS))
    with pytest.raises(h2.exceptions.DenialOfServiceError) as refused:
        for frame in _in_frames(bigger, 700):
            server.receive_data(frame)
    assert type(refused.value) is h2.exceptions.DenialOfServiceError


def _goaway_code(data: bytes) -> int:
    [goaway] = [f for f in FrameReader().feed(data) if isinstance(f, GoAwayFrame)]
    return goaway.error_code


def test_a_continuation_flood_is_refused_at_the_frame_that_passes_the_bound() -> None:
    bound = h2adapter.max_header_block_bytes(LIMITS.max_header_list_bytes)
    frames = _in_frames(b"\x00" * 60 * 1000, 1000, end_headers=False)  # no END_HEADERS, ever
    stock = _connected(h2.connection.H2Connection(server_config()))
    for frame in frames:
        assert stock.receive_data(frame) == []  # h2 alone holds all 60 frames, and would take 4 more
    server = _connected(server_connection(LIMITS))
    for frame in frames[: bound // 1000]:
        assert server.receive_data(frame) == []
    with pytest.raises(h2adapter.HeaderBlockTooLarge, match=f"stream 1 over {bound} bytes"):
        server.receive_data(frames[bound // 1000])
    assert _goaway_code(server.data_to_send()) == ErrorCodes.ENHANCE_YOUR_CALM


def test_a_block_ended_past_the_bound_is_refused_before_decoding() -> None:
    bound = h2adapter.max_header_block_bytes(LIMITS.max_header_list_bytes)
    server = _connected(server_connection(LIMITS))
    first, last = _in_frames(b"\x00" * (bound + 1), bound // 2 + 1)
    assert server.receive_data(first) == []
    with pytest.raises(h2adapter.HeaderBlockTooLarge):
        server.receive_data(last)


def test_frames_out_of_order_in_a_block_are_still_h2s_protocol_error() -> None:
    server = _connected(server_connection(LIMITS))
    first, _ = _in_frames(b"\x00" * 2000, 1000)
    server.receive_data(first)
    with pytest.raises(h2.exceptions.ProtocolError, match="Invalid frame during header block") as refused:
        server.receive_data(PingFrame(0, b"12345678").serialize())
    assert not isinstance(refused.value, h2.exceptions.DenialOfServiceError)
    assert _goaway_code(server.data_to_send()) == ErrorCodes.PROTOCOL_ERROR


# --- ServerH2Connection: the frames of a plain request read without hyperframe ---------------


def _stream_snapshot(conn: h2.connection.H2Connection, stream: h2.stream.H2Stream) -> tuple[object, ...]:
    """Everything of an h2 stream that receiving a frame sets."""
    machine = stream.state_machine
    return (machine.state, machine.client, machine.headers_sent, machine.trailers_sent, machine.headers_received,
            machine.trailers_received, machine.stream_closed_by, stream._inbound_window_manager.current_window_size,
            stream._inbound_window_manager.max_window_size, stream.outbound_flow_control_window,
            stream.max_outbound_frame_size, stream._expected_content_length, stream._actual_content_length,
            stream.request_method, stream._authority, stream.config is conn.config)


def _snapshot(conn: h2.connection.H2Connection) -> tuple[object, ...]:
    """What receiving changes in a connection: its state and receive window, the streams not
    closed (ours forgets closed ones at other times than stock h2) and the bytes h2 buffers."""
    streams = {sid: _stream_snapshot(conn, s) for sid, s in conn.streams.items() if not s.closed}
    return (conn.state_machine.state, conn._inbound_flow_control_window_manager.current_window_size,
            conn.highest_inbound_stream_id, streams, bytes(conn.incoming_buffer._data),
            len(conn.incoming_buffer._headers_buffer))


def _peer_sends(peer: h2.connection.H2Connection, rng: random.Random, opened: list[int]) -> None:
    """One random thing a client does: mostly requests and their bodies, with padding, priority,
    CONTINUATION frames, trailers, resets, PINGs, late frames, and now and then a protocol error."""
    action = rng.random()
    sendable = [sid for sid in opened if can_send(peer, sid)]
    if action < 0.3 or not opened:
        sid = peer.get_next_available_stream_id()
        # Mostly plain requests (the lean path), and the fields h2 treats apart.
        kind = rng.random()
        headers = (REQUEST_CL if kind < 0.01 else [*REQUEST, (b"content-length", b"5")] if kind < 0.02 else
                   [*REQUEST, (b"cookie", b"a=1"), (b"x", b"y"), (b"cookie", b"b=2")] if kind < 0.06 else
                   [*REQUEST, (b"x-fresh", b"%d" % rng.randint(0, 5))] if kind < 0.1 else
                   [(b"x", b"y")] if kind < 0.12 else
                   # h2 takes these for a response (a 1xx one is a protocol error)
                   [(b":status", rng.choice([b"100", b"200"])), *REQUEST] if kind < 0.13 else REQUEST)
        kwargs = {"priority_weight": rng.randint(1, 256)} if rng.random() < 0.1 else {}
        if rng.random() < 0.1 and not kwargs:
            peer.max_outbound_frame_size = 7  # the block in HEADERS + CONTINUATION frames
        end_stream = rng.random() < 0.3
        if headers[0][0] == b":status":  # h2's client will not send these: its encoder, a raw frame
            flags = ["END_HEADERS", "END_STREAM"] if end_stream else ["END_HEADERS"]
            peer._data_to_send += HeadersFrame(sid, peer.encoder.encode(headers), flags=flags).serialize()
            peer.highest_outbound_stream_id = sid  # (a stream the client does not know: nothing more on it)
        else:
            peer.config.validate_outbound_headers = headers[:1] == REQUEST[:1]  # (it refuses the others)
            peer.send_headers(sid, headers, end_stream=end_stream, **kwargs)
            peer.config.validate_outbound_headers = True
            opened.append(sid)
        peer.max_outbound_frame_size = 16384
    elif action < 0.6 and sendable:
        sid = rng.choice(sendable)
        size = min(rng.choice([0, 1, 4, 5, 100, 3000]), peer.local_flow_control_window(sid))
        pad = rng.choice([None, None, None, 0, 3])
        peer.send_data(sid, bytes(size), end_stream=rng.random() < 0.5, pad_length=pad)
    elif action < 0.65 and sendable:
        peer.send_headers(rng.choice(sendable), [(b"x-trailer", b"1")], end_stream=True)
    elif action < 0.72:
        sid = rng.choice(opened)
        if sid in peer.streams and peer.streams[sid].open:
            peer.reset_stream(sid)
    elif action < 0.8:
        rng.choice([lambda: peer.ping(b"12345678"), lambda: peer.increment_flow_control_window(100),
                    lambda: peer.prioritize(rng.choice(opened), weight=7)])()
    elif action < 0.9:
        # Frames on a stream that may be long closed, as a peer racing a reset sends them.
        sid = rng.choice(opened)
        late = rng.choice([DataFrame(sid, b"late"), DataFrame(sid, b"late", flags=["END_STREAM"]),
                           WindowUpdateFrame(sid, window_increment=10), RstStreamFrame(sid, error_code=8)])
        peer._data_to_send += late.serialize()
    elif action < 0.9007:
        # A new stream's HEADERS out of order: an even id, or below the highest stream opened.
        sid = rng.choice([peer.get_next_available_stream_id() + 1, max(1, rng.choice(opened) - 2)])
        peer._data_to_send += HeadersFrame(sid, b"\x82\x86\x84", flags=["END_HEADERS"]).serialize()
    elif action < 0.904:
        sid = rng.choice(opened)
        wrong = rng.choice([DataFrame(sid, bytes(16385)), DataFrame(sid, bytes(1000), flags=["PADDED"], pad_length=0),
                            HeadersFrame(sid, b"\xff\xff\xff", flags=["END_HEADERS"])])
        if rng.random() < 0.2:  # a frame inside another stream's header block
            peer._data_to_send += HeadersFrame(peer.get_next_available_stream_id(), b"\x82").serialize()
        elif rng.random() < 0.2:  # DATA on stream 0 (hyperframe will not build one)
            peer._data_to_send += struct.pack(">IBI", 1 << 8, 0, 0) + b"x"
        if rng.random() < 0.2:  # more than the window allows
            wrong = DataFrame(sid, bytes(16000))
            peer._data_to_send += wrong.serialize() * 5
        peer._data_to_send += wrong.serialize()


def _request_session(seed: int) -> str:
    """A random client against ours and stock h2, its bytes cut at random points: after every
    piece the same events (or error) and bytes written, and the same state. How it ended."""
    rng = random.Random(seed)
    ours, stock = ServerH2Connection(server_config()), h2.connection.H2Connection(server_config())
    for conn in (ours, stock):
        conn.initiate_connection()
        conn.local_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = MAX_STREAM_ID
        conn.local_settings.acknowledge()
    peer = client()
    peer.receive_data(ours.data_to_send())
    assert peer.data_to_send() and stock.data_to_send()
    peer._data_to_send = bytearray(PREFACE) + peer._data_to_send  # h2's client sends the preface itself
    opened: list[int] = []
    for _ in range(150):
        _peer_sends(peer, rng, opened)
        data = bytes(peer.data_to_send())
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.choice([0, 1, 3])))) if data else []
        for piece in (data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)):
            outcomes = []
            for conn in (ours, stock):
                try:
                    events = conn.receive_data(piece)
                except h2.exceptions.ProtocolError as e:
                    # (hpack's messages name a memoryview by its address)
                    outcomes.append((type(e).__name__, re.sub(r"0x[0-9a-f]+", "0x.", str(e))))
                    continue
                outcomes.append(("events", repr(events)))
                for event in events:
                    if isinstance(event, h2.events.DataReceived) and event.flow_controlled_length:
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            assert outcomes[0] == outcomes[1]
            written = ours.data_to_send()
            assert written == stock.data_to_send()  # with an error, the same GOAWAY
            if outcomes[0][0] != "events":
                return outcomes[0][0]
            assert _snapshot(ours) == _snapshot(stock)
            peer.receive_data(written)
        answerable = [sid for sid in opened if can_send(stock, sid)]
        if answerable and rng.random() < 0.3:
            sid = rng.choice(answerable)
            for conn in (ours, stock):
                conn.send_headers(sid, [(b":status", b"200")], end_stream=True)
            written = ours.data_to_send()
            assert written == stock.data_to_send()
            peer.receive_data(written)
    return "events"


def test_plain_request_frames_give_stock_h2s_events_state_bytes_and_errors() -> None:
    ends = [_request_session(seed) for seed in range(60)]
    assert ends.count("events") >= 10  # sessions that ran to the end
    assert len(set(ends)) >= 4, ends  # and several kinds of protocol error, alike


def test_plain_request_frames_skip_hyperframe(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = []
    original = h2.frame_buffer.FrameBuffer.__next__

    def counted(buffer: h2.frame_buffer.FrameBuffer) -> object:
        frame = original(buffer)
        parsed.append(type(frame).__name__)
        return frame

    monkeypatch.setattr(h2.frame_buffer.FrameBuffer, "__next__", counted)
    server, peer = server_connection(LIMITS), client()
    server.receive_data(bytes(peer.data_to_send()))  # the preface and SETTINGS: h2's own path
    parsed.clear()
    for _ in range(3):
        sid = peer.get_next_available_stream_id()
        peer.send_headers(sid, REQUEST)
        peer.send_data(sid, b"\x00\x00\x00\x00\x00", end_stream=True)
    peer.ping(b"12345678")
    events = server.receive_data(bytes(peer.data_to_send()))
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["RequestReceived", "DataReceived", "StreamEnded"] * 3 + ["PingReceived"]
    assert parsed == ["PingFrame"]  # only the PING went through h2's FrameBuffer


def test_request_sessions_take_the_lean_paths_and_h2s_for_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    # The sessions above compare something only if both ways of receiving ran in them.
    taken: dict[tuple[str, str], int] = {}

    def counting(handler: str, where: str) -> None:
        original = getattr(h2.connection.H2Connection if where == "h2" else ServerH2Connection, handler)

        def counted(conn: h2.connection.H2Connection, frame: Any) -> Any:
            key = (handler, f"{where} for {type(conn).__name__}")
            taken[key] = taken.get(key, 0) + 1
            return original(conn, frame)

        monkeypatch.setattr(h2.connection.H2Connection if where == "h2" else ServerH2Connection, handler, counted)

    for handler in ("_receive_headers_frame", "_receive_data_frame"):
        counting(handler, "h2")
        counting(handler, "ours")
    for seed in range(20):
        _request_session(seed)
    for handler in ("_receive_headers_frame", "_receive_data_frame"):
        received = taken[handler, "ours for ServerH2Connection"]
        lean = received - taken[handler, "h2 for ServerH2Connection"]  # not handed on to h2's handler
        assert taken[handler, "h2 for H2Connection"] > 200  # (stock h2, for scale)
        assert received - lean > 50 and lean > 100, taken


# The transitions ServerH2Connection makes itself, as h2's tables have them.
def test_the_lean_receive_paths_make_h2s_transitions() -> None:
    from h2.connection import ConnectionInputs, H2ConnectionStateMachine
    from h2.stream import H2StreamStateMachine, StreamInputs, _transitions

    open_ = h2.connection.ConnectionState.SERVER_OPEN
    for connection_input in (ConnectionInputs.RECV_HEADERS, ConnectionInputs.RECV_DATA):
        assert H2ConnectionStateMachine._transitions[(open_, connection_input)] == (None, open_)
    assert _transitions[(StreamState.IDLE, StreamInputs.RECV_HEADERS)] == (
        H2StreamStateMachine.request_received, StreamState.OPEN)
    assert _transitions[(StreamState.OPEN, StreamInputs.RECV_END_STREAM)] == (
        H2StreamStateMachine.stream_half_closed, StreamState.HALF_CLOSED_REMOTE)
    assert _transitions[(StreamState.OPEN, StreamInputs.RECV_DATA)] == (
        H2StreamStateMachine.data_received, StreamState.OPEN)
    # What those functions do, on a fresh machine: the attributes the lean paths set.
    machine = H2StreamStateMachine(7)
    [received] = machine.process_input(StreamInputs.RECV_HEADERS)
    assert (machine.client, machine.headers_received, type(received), received.stream_id) == (
        False, True, h2.events.RequestReceived, 7)
    [data] = machine.process_input(StreamInputs.RECV_DATA)
    assert (type(data), data.stream_id) == (h2.events.DataReceived, 7)
    [ended] = machine.process_input(StreamInputs.RECV_END_STREAM)
    assert (type(ended), ended.stream_id, machine.stream_closed_by) == (h2.events.StreamEnded, 7, None)
    assert vars(machine) == {"state": StreamState.HALF_CLOSED_REMOTE, "stream_id": 7, "client": False,
                             "headers_sent": None, "trailers_sent": None, "headers_received": True,
                             "trailers_received": None, "stream_closed_by": None}


@pytest.mark.parametrize(("length", "body"), [(b"5", b"12345"), (b"5", b"1234"), (b"5", b"123456"), (b"x5", b"12345"),
                                              (b"0", b"")])
def test_a_content_length_on_the_lean_path_is_h2s(length: bytes, body: bytes) -> None:
    ours, stock = ServerH2Connection(server_config()), h2.connection.H2Connection(server_config())
    peer = client()
    preface = bytes(peer.data_to_send())  # (with the client preface)
    for conn in (ours, stock):
        conn.initiate_connection()
        conn.local_settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = MAX_STREAM_ID
        conn.local_settings.acknowledge()
        conn.receive_data(preface)
    peer.receive_data(ours.data_to_send())
    stock.data_to_send()
    peer.config.validate_outbound_headers = False
    for sid in (1, 3):  # the second block is the first one remembered
        peer.send_headers(sid, [*REQUEST, (b"content-length", length)], end_stream=not body)
        if body:
            peer.send_data(sid, body[:3])
            peer.send_data(sid, body[3:], end_stream=True)
        data = bytes(peer.data_to_send())
        outcomes = []
        for conn in (ours, stock):
            try:
                outcomes.append(repr(conn.receive_data(data)))
            except h2.exceptions.ProtocolError as e:
                outcomes.append(f"{type(e).__name__}: {e}")
        assert outcomes[0] == outcomes[1]
        assert ours.data_to_send() == stock.data_to_send()  # with an error, the same GOAWAY
        if outcomes[0].startswith(("InvalidBodyLengthError", "ProtocolError")):
            assert (length, body) not in ((b"5", b"12345"), (b"0", b""))
            return
        assert _snapshot(ours) == _snapshot(stock)
    assert (length, body) in ((b"5", b"12345"), (b"0", b""))
    assert ours.streams[3]._expected_content_length == int(length)
