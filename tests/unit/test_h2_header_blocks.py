"""HEADERS frames written without h2's HPACK encoder, pinned to what h2 itself does.

``h2adapter.send_headers`` writes response and trailer blocks as static-table
indexes and literals without indexing. Against a stock h2 server answering the
same requests with ``H2Connection.send_headers``, these tests check that the peer
decodes the same headers and sees the same events, that h2's connection and
stream state afterwards is the same (states, END_STREAM, closed-stream
bookkeeping, errors for what follows), and that the cases the fast path leaves
to h2 (1xx, pending table size updates, oversized blocks, HeaderTuple types) go
through h2's own path.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import hpack
import pytest
from h2.connection import ConnectionState
from hyperframe.frame import ContinuationFrame, DataFrame, Frame, HeadersFrame, RstStreamFrame, WindowUpdateFrame

from gatewayd.http2 import h2adapter
from gatewayd.http2.h2adapter import send_headers, server_connection, stateless_block
from gatewayd.http2.limits import H2Limits
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.protocols.grpc import status_headers

LIMITS = H2Limits(max_concurrent_streams=1000, max_header_list_bytes=65536)
REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/grpc.health.v1.Health/Check"),
           (b":authority", b"a"), (b"content-type", b"application/grpc"), (b"te", b"trailers")]
GRPC = [(b"content-type", b"application/grpc"), (b"grpc-accept-encoding", b"gzip, identity")]

RESPONSES = {
    "grpc": [(b":status", b"200"), *GRPC],
    "grpc-gzip": [(b":status", b"200"), *GRPC, (b"grpc-encoding", b"gzip")],
    "cors": [(b":status", b"200"), *GRPC, (b"access-control-allow-origin", b"https://app.example"),
             (b"access-control-expose-headers", b"grpc-status, grpc-message"), (b"vary", b"origin")],
    "connect": [(b":status", b"200"), (b"content-type", b"application/json"), (b"content-length", b"17")],
    "status-405": [(b":status", b"405"), (b"content-type", b"text/plain"), (b"allow", b"POST")],
    "status-404": [(b":status", b"404"), (b"content-length", b"0")],
    "binary-value": [(b":status", b"200"), (b"x-bin", bytes(range(0x21, 0x7F)) + bytes(range(0x80, 0x100)))],
    "long-value": [(b":status", b"200"), (b"x-long", b"v" * 5000)],
}
TRAILERS = {
    "ok": [(b"grpc-status", b"0")],
    "error": status_headers(RpcError(Code.RESOURCE_EXHAUSTED, "rate limit exceeded: 100% ü",
                                     {"retry-after": "3"})),
}


def client() -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    return conn


def connected() -> tuple[h2.connection.H2Connection, h2.connection.H2Connection]:
    """A server connection as the core builds it and its peer, past both prefaces."""
    server, peer = server_connection(LIMITS), client()
    peer.receive_data(server.data_to_send())
    server.receive_data(peer.data_to_send())
    peer.receive_data(server.data_to_send())
    return server, peer


def request(server: h2.connection.H2Connection, peer: h2.connection.H2Connection, end: bool) -> int:
    sid = peer.get_next_available_stream_id()
    peer.send_headers(sid, REQUEST, end_stream=end)
    server.receive_data(peer.data_to_send())
    return sid


def frames(data: bytes) -> list[Frame]:
    out = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9 : 9 + length]))
        out.append(frame)
        data = data[9 + length :]
    return out


def stream_state(conn: h2.connection.H2Connection) -> dict[int, Any]:
    """What h2 remembers of every stream, and of the connection."""
    state: dict[int, Any] = {
        sid: (s.state_machine.state, s.state_machine.headers_sent, s.state_machine.trailers_sent,
              s.state_machine.stream_closed_by, s.request_method, s.closed, s.open,
              s.outbound_flow_control_window, s.inbound_flow_control_window)
        for sid, s in conn.streams.items()
    }
    state[0] = (conn.state_machine.state, dict(conn._closed_streams), conn.outbound_flow_control_window,
                conn.open_outbound_streams)
    return state


def outcome(action: Any, *args: Any) -> str:
    """``action(*args)``: "ok", or h2's error."""
    try:
        action(*args)
    except h2.exceptions.ProtocolError as e:
        return f"{type(e).__name__}: {e}"
    return "ok"


def h2_send_headers(conn: h2.connection.H2Connection, sid: int, headers: Any, end_stream: bool) -> None:
    """The stock path: h2's own send_headers."""
    conn.send_headers(sid, headers, end_stream)


def deliver(peer: h2.connection.H2Connection, data: bytes) -> str:
    """What the peer makes of ``data``: its events, or its error."""
    try:
        return repr(peer.receive_data(data))
    except h2.exceptions.ProtocolError as e:
        return f"{type(e).__name__}: {e}"


# --- one block against h2's -----------------------------------------------------------


@pytest.mark.parametrize("end_request", [False, True], ids=["open", "half-closed-remote"])
@pytest.mark.parametrize("name", sorted(RESPONSES))
@pytest.mark.parametrize("end_stream", [False, True], ids=["headers", "trailers-only"])
def test_a_response_decodes_and_leaves_h2_as_h2s_own_does(end_request: bool, name: str, end_stream: bool) -> None:
    headers = RESPONSES[name]
    (ours, our_peer), (stock, stock_peer) = connected(), connected()
    sid = request(ours, our_peer, end_request)
    assert request(stock, stock_peer, end_request) == sid
    send_headers(ours, sid, headers, end_stream)
    stock.send_headers(sid, headers, end_stream)
    our_bytes, stock_bytes = ours.data_to_send(), stock.data_to_send()
    [ours_frame], [stock_frame] = frames(our_bytes), frames(stock_bytes)
    assert isinstance(ours_frame, HeadersFrame) and isinstance(stock_frame, HeadersFrame)
    assert (ours_frame.stream_id, ours_frame.flags) == (stock_frame.stream_id, stock_frame.flags)
    assert hpack.Decoder().decode(bytes(ours_frame.data), raw=True) == headers  # no table needed
    assert deliver(our_peer, our_bytes) == deliver(stock_peer, stock_bytes)
    assert stream_state(ours) == stream_state(stock)
    assert len(ours.encoder.header_table.dynamic_entries) == 0  # h2's encoder was not involved
    # What follows is handled alike: more of the response (or an error once it ended)...
    follows = [((ours.send_data, sid, b"\0\0\0\0\x02\x08\x01"), (stock.send_data, sid, b"\0\0\0\0\x02\x08\x01")),
               ((send_headers, ours, sid, TRAILERS["ok"], True), (h2_send_headers, stock, sid, TRAILERS["ok"], True)),
               ((ours.send_data, sid, b"late"), (stock.send_data, sid, b"late"))]
    for ours_action, stock_action in follows:
        assert outcome(*ours_action) == outcome(*stock_action)
        assert deliver(our_peer, ours.data_to_send()) == deliver(stock_peer, stock.data_to_send())
        assert stream_state(ours) == stream_state(stock)
    # ...and the peer's frames on the stream, closed or not.
    for late in (DataFrame(sid, b"x", flags=["END_STREAM"]), WindowUpdateFrame(sid, window_increment=5),
                 RstStreamFrame(sid, error_code=8)):
        assert outcome(ours.receive_data, late.serialize()) == outcome(stock.receive_data, late.serialize())
        assert ours.data_to_send() == stock.data_to_send()
        assert stream_state(ours) == stream_state(stock)


def test_fixed_fields_are_static_indexes_or_literals_without_indexing() -> None:
    assert stateless_block([(b":status", b"200")]) == b"\x88"  # static index 8
    assert stateless_block([(b":status", b"204")]) == b"\x89"
    # content-type is static name 31: 0000 1111 + 16; "application/grpc" Huffman-coded in 11 bytes
    assert stateless_block([(b"content-type", b"application/grpc")]) == bytes.fromhex("0f108b1d75d0620d263d4c4d6564")
    # grpc-status is no static name: 0x00, name and value literals
    assert stateless_block([(b"grpc-status", b"0")])[:1] == b"\x00"
    # a literal whose Huffman code is longer goes raw
    assert stateless_block([(b"x", b"\x00")]) == b"\x00\x01x\x01\x00"


def test_headertuple_types_keep_their_indexing_choice_through_h2() -> None:
    never = hpack.NeverIndexedHeaderTuple(b"authorization", b"secret")
    assert stateless_block([(b":status", b"200"), never]) is None
    server, peer = connected()
    sid = request(server, peer, True)
    send_headers(server, sid, [(b":status", b"200"), never], True)
    [frame] = frames(server.data_to_send())
    assert bytes(frame.data)[1] & 0xF0 == 0x10  # h2 wrote "literal never indexed" (0001 xxxx)


def test_informational_responses_go_through_h2() -> None:
    server, peer = connected()
    sid = request(server, peer, True)
    send_headers(server, sid, [(b":status", b"100")], False)
    send_headers(server, sid, RESPONSES["grpc"], False)
    send_headers(server, sid, TRAILERS["ok"], True)
    events = peer.receive_data(server.data_to_send())
    assert [type(e) for e in events] == [h2.events.InformationalResponseReceived, h2.events.ResponseReceived,
                                         h2.events.TrailersReceived, h2.events.StreamEnded]
    with pytest.raises(h2.exceptions.ProtocolError):  # END_STREAM on a 1xx: h2's error
        send_headers(server, request(server, peer, True), [(b":status", b"100")], True)


def test_trailers_without_end_stream_are_h2s_error_in_h2s_state() -> None:
    (ours, our_peer), (stock, stock_peer) = connected(), connected()
    for conn, peer, send in ((ours, our_peer, send_headers), (stock, stock_peer, h2_send_headers)):
        sid = request(conn, peer, True)
        send(conn, sid, RESPONSES["grpc"], False)
        with pytest.raises(h2.exceptions.ProtocolError, match="Trailers must have END_STREAM set"):
            send(conn, sid, TRAILERS["error"], False)
    assert stream_state(ours) == stream_state(stock)
    # h2 raised after encoding: its encoder indexed fields the peer never got, and the next
    # block it encodes refers to them. Ours raised before encoding anything.
    assert len(ours.encoder.header_table.dynamic_entries) == 0
    assert len(stock.encoder.header_table.dynamic_entries) > 0


def test_a_block_over_one_frame_is_split_by_h2() -> None:
    server, peer = connected()
    sid = request(server, peer, True)
    big = [(b":status", b"200"), *((b"x-h%d" % i, b"\xfe" * 200) for i in range(100))]
    send_headers(server, sid, big, True)
    written = frames(server.data_to_send())
    assert [type(f) for f in written[:2]] == [HeadersFrame, ContinuationFrame]
    [response, ended] = peer.receive_data(b"".join(f.serialize() for f in written))
    assert response.headers == big and isinstance(ended, h2.events.StreamEnded)


def test_a_pending_table_size_update_goes_first_through_h2_then_blocks_are_stateless_again() -> None:
    server, peer = connected()
    peer.update_settings({h2.settings.SettingCodes.HEADER_TABLE_SIZE: 0})
    server.receive_data(peer.data_to_send())
    peer.receive_data(server.data_to_send())  # the ACK
    assert server.encoder.header_table.resized
    first, second = request(server, peer, True), request(server, peer, True)
    send_headers(server, first, RESPONSES["grpc"], True)
    send_headers(server, second, RESPONSES["grpc"], True)
    written = frames(server.data_to_send())
    assert not server.encoder.header_table.resized
    # h2 encoded the first block, starting with the size update (001x xxxx); the second is ours.
    assert bytes(written[0].data)[0] & 0xE0 == 0x20
    assert bytes(written[1].data) == stateless_block(RESPONSES["grpc"])
    events = peer.receive_data(b"".join(f.serialize() for f in written))
    assert [e.headers for e in events if isinstance(e, h2.events.ResponseReceived)] == [RESPONSES["grpc"]] * 2


def test_the_field_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(h2adapter, "_FIELDS", {})
    monkeypatch.setattr(h2adapter, "_MAX_FIELDS", 10)
    server, peer = connected()
    for i in range(40):
        sid = request(server, peer, True)
        headers = [(b":status", b"200"), (b"grpc-message", b"error %d" % i)]
        send_headers(server, sid, headers, True)
        [response, _] = peer.receive_data(server.data_to_send())
        assert response.headers == headers
    assert len(h2adapter._FIELDS) == 10


# --- whole sessions, mixing both paths on one connection -------------------------------------


def session(seed: int) -> tuple[int, bool]:
    """A random peer against two servers, ours answering through send_headers, stock through h2
    (so some of ours go through h2 too: 1xx, table size changes, misuse): every event, error
    and state must match. Returns the header blocks sent and whether the connection lasted."""
    rng = random.Random(seed)
    (ours, our_peer), (stock, stock_peer) = connected(), connected()
    opened: list[int] = []
    answered: set[int] = set()  # streams whose response headers went out
    blocks = 0
    table_size = 4096
    # Responses whose content-length the random DATA would contradict are left out.
    responses = [RESPONSES[name] for name in ("grpc", "grpc-gzip", "cors", "binary-value", "long-value")]

    def both(action: Any) -> bool:
        """Run ``action`` on both sides and compare; ``False`` once the peers failed (alike)."""
        assert outcome(action, ours, our_peer, True) == outcome(action, stock, stock_peer, False)
        delivered = deliver(our_peer, ours.data_to_send())
        assert delivered == deliver(stock_peer, stock.data_to_send())
        if not delivered.startswith("["):
            # A peer that raised dropped the rest of what it was given (HPACK blocks of h2's
            # included): the sessions part ways from here.
            return False
        sent_ours, sent_stock = our_peer.data_to_send(), stock_peer.data_to_send()
        assert outcome(ours.receive_data, sent_ours) == outcome(stock.receive_data, sent_stock)
        assert ours.data_to_send() == stock.data_to_send()
        assert stream_state(ours) == stream_state(stock)
        return True

    for _ in range(300):
        if ours.state_machine.state is ConnectionState.CLOSED:
            return blocks, False
        roll = rng.random()
        live = [sid for sid, stream in stock.streams.items() if not stream.closed]
        # Mostly streams h2 still holds open; now and then any stream, long closed or forgotten.
        sid = rng.choice(live) if live and rng.random() < 0.85 else rng.choice(opened) if opened else 0
        action: Any
        if roll < 0.2 or not live:
            end = rng.random() < 0.6

            def open_stream(conn: Any, peer: Any, fast: bool, end: bool = end) -> None:
                peer.send_headers(peer.get_next_available_stream_id(), REQUEST, end_stream=end)
                conn.receive_data(peer.data_to_send())

            action = open_stream
            opened.append(our_peer.highest_outbound_stream_id + 2 if opened else 1)
        elif roll < 0.6:
            if sid in answered:  # trailers (never without END_STREAM: see the test of that)
                headers, end = rng.choice(list(TRAILERS.values())), True
            elif rng.random() < 0.1:
                headers, end = [(b":status", b"103")], False
            else:  # a response, or trailers-only
                headers, end = rng.choice(responses), rng.random() < 0.3
                answered.add(sid)
            blocks += 1

            def answer(conn: Any, peer: Any, fast: bool, sid: int = sid, headers: Any = headers,
                       end: bool = end) -> None:
                (send_headers if fast else h2_send_headers)(conn, sid, headers, end)

            action = answer
        elif roll < 0.7 and sid in answered:
            end = rng.random() < 0.3
            action = lambda conn, peer, fast, sid=sid, end=end: conn.send_data(sid, b"data", end_stream=end)  # noqa: E731
        elif roll < 0.8:
            action = lambda conn, peer, fast, sid=sid: peer.streams.get(sid) and peer.reset_stream(sid)  # noqa: E731
        elif roll < 0.97:
            late = rng.choice([DataFrame(sid, b"late"), WindowUpdateFrame(sid, window_increment=10),
                               RstStreamFrame(sid, error_code=8)])
            action = lambda conn, peer, fast, late=late: conn.receive_data(late.serialize())  # noqa: E731
        else:
            # Always a new size: hpack forgets a pending size update when the size is set
            # again to its current value (HeaderTable.maxsize), and h2's own blocks go wrong.
            size = rng.choice([n for n in (0, 256, 4096) if n != table_size])
            table_size = size
            action = lambda conn, peer, fast, size=size: peer.update_settings(  # noqa: E731
                {h2.settings.SettingCodes.HEADER_TABLE_SIZE: size})
        if not both(action):
            return blocks, False
    return blocks, True


def test_random_sessions_match_stock_h2(monkeypatch: pytest.MonkeyPatch) -> None:
    slow = []
    original = h2adapter.ServerH2Connection.send_headers

    def counted(conn: Any, *args: Any, **kwargs: Any) -> None:
        slow.append(args[0])
        original(conn, *args, **kwargs)

    # Both servers are ServerH2Connections: h2's path is counted for both, ours only when it falls back.
    monkeypatch.setattr(h2adapter.ServerH2Connection, "send_headers", counted)
    sessions = [session(seed) for seed in range(20)]
    blocks = sum(n for n, _ in sessions)
    assert blocks > 1000 and sum(lasted for _, lasted in sessions) >= 10, sessions
    fast = blocks - (len(slow) - blocks)  # the rest went to closed streams, 1xx, table size updates
    assert fast > 1000, (fast, blocks)


# --- the send transitions made without h2's table ------------------------------------------


def _machines() -> list[Any]:
    """Stream state machines in every state and every combination of what was sent and by whom."""
    from h2.stream import H2StreamStateMachine, StreamState

    machines = []
    for state in StreamState:
        for client in (None, False, True):
            for headers_sent in (None, True):
                for trailers_sent in (None, True):
                    machine = H2StreamStateMachine(5)
                    machine.state, machine.client = state, client
                    machine.headers_sent, machine.trailers_sent = headers_sent, trailers_sent
                    machines.append(machine)
    return machines


@pytest.mark.parametrize("step", ["sent_headers", "sent_end_stream"])
def test_send_transitions_are_h2s_process_input(step: str) -> None:
    from h2.stream import StreamInputs

    shortcut = getattr(h2adapter, step)
    stream_input = StreamInputs.SEND_HEADERS if step == "sent_headers" else StreamInputs.SEND_END_STREAM
    for machine in _machines():
        stock = copy.copy(machine)
        outcomes = []
        for which, run in ((machine, shortcut), (stock, lambda m: m.process_input(stream_input))):
            try:
                run(which)
                outcomes.append("ok")
            except h2.exceptions.ProtocolError as e:
                outcomes.append(type(e).__name__)
        assert outcomes[0] == outcomes[1]
        assert vars(machine) == vars(stock)
