"""The fast path for DATA frames writes exactly what h2's send_data writes, and leaves h2 in its state."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
from hyperframe.frame import DataFrame, RstStreamFrame

from gatewayd.http2.h2adapter import ANY_PEER_FRAME_SIZE, send_data_frame, send_data_now, send_same_data


def _server_with_open_stream(end_request: bool) -> tuple[h2.connection.H2Connection, int]:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    sid = client.get_next_available_stream_id()
    client.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", "/x"), (":authority", "a")],
                        end_stream=end_request)
    server.receive_data(client.data_to_send())
    server.send_headers(sid, [(":status", "200")])
    server.data_to_send()
    return server, sid


@pytest.mark.parametrize("end_request", [False, True], ids=["open", "half-closed-remote"])
@pytest.mark.parametrize("payload", [b"", b"x", b"\x00\x00\x00\x00\x05hello", bytes(range(256)) * 60])
def test_bytes_and_windows_match_h2(end_request: bool, payload: bytes) -> None:
    ours, sid = _server_with_open_stream(end_request)
    theirs, _ = _server_with_open_stream(end_request)
    send_data_frame(ours, ours.streams[sid], payload)
    theirs.send_data(sid, payload)
    assert ours.data_to_send() == theirs.data_to_send()
    assert ours.outbound_flow_control_window == theirs.outbound_flow_control_window
    assert ours.streams[sid].outbound_flow_control_window == theirs.streams[sid].outbound_flow_control_window
    # Both connections go on in the same state: h2 can still end the stream normally.
    ours.send_data(sid, b"end", end_stream=True)
    theirs.send_data(sid, b"end", end_stream=True)
    assert ours.data_to_send() == theirs.data_to_send()


def stream_state(conn: h2.connection.H2Connection, sid: int) -> tuple[object, ...]:
    stream = conn.streams.get(sid)
    if stream is None:
        return (None, conn.state_machine.state, dict(conn._closed_streams))
    machine = stream.state_machine
    return (machine.state, machine.stream_closed_by, stream.closed, stream.open, conn.state_machine.state,
            conn.open_outbound_streams)


@pytest.mark.parametrize("end_request", [False, True], ids=["open", "half-closed-remote"])
@pytest.mark.parametrize("payload", [b"", b"\x00\x00\x00\x00\x05hello", bytes(range(256)) * 60])
def test_the_last_frame_with_end_stream_matches_h2(end_request: bool, payload: bytes) -> None:
    ours, sid = _server_with_open_stream(end_request)
    theirs, _ = _server_with_open_stream(end_request)
    send_data_frame(ours, ours.streams[sid], payload, end_stream=True)
    theirs.send_data(sid, payload, end_stream=True)
    assert ours.data_to_send() == theirs.data_to_send()
    assert ours.outbound_flow_control_window == theirs.outbound_flow_control_window
    assert ours.streams[sid].outbound_flow_control_window == theirs.streams[sid].outbound_flow_control_window
    assert stream_state(ours, sid) == stream_state(theirs, sid)
    # What follows is handled alike: our sending more is h2's error, the peer's frames h2's events.
    late = []
    for conn in (ours, theirs):
        with pytest.raises(h2.exceptions.ProtocolError) as error:
            conn.send_data(sid, b"late")
        late.append((type(error.value), str(error.value), stream_state(conn, sid)))
    assert late[0] == late[1]
    for frame in (DataFrame(sid, b"x", flags=["END_STREAM"]), RstStreamFrame(sid, error_code=8)):
        outcomes = []
        for conn in (ours, theirs):
            try:
                outcomes.append(repr(conn.receive_data(frame.serialize())))
            except h2.exceptions.ProtocolError as e:
                outcomes.append(type(e).__name__)
            outcomes.append(conn.data_to_send())
        assert outcomes[:2] == outcomes[2:]
        assert stream_state(ours, sid) == stream_state(theirs, sid)


def test_a_closed_stream_takes_h2s_path_and_its_error() -> None:
    server, sid = _server_with_open_stream(end_request=True)
    stream = server.streams[sid]
    server.send_data(sid, b"", end_stream=True)
    with pytest.raises(h2.exceptions.StreamClosedError):
        send_data_frame(server, stream, b"late")


def _snapshot(conn: h2.connection.H2Connection, sid: int) -> tuple[object, ...]:
    # Read without h2's open-stream counts, which forget closed streams as they count.
    stream = conn.streams.get(sid)
    if stream is None:
        return (bytes(conn._data_to_send), conn.outbound_flow_control_window, conn.state_machine.state)
    return (bytes(conn._data_to_send), conn.outbound_flow_control_window, conn.state_machine.state,
            stream.outbound_flow_control_window, stream.state_machine.state, stream.state_machine.stream_closed_by)


@pytest.mark.parametrize("end_request", [False, True], ids=["open", "half-closed-remote"])
@pytest.mark.parametrize("payload", [b"x", b"\x00\x00\x00\x00\x05hello", bytes(range(256)) * 64])
def test_send_data_now_writes_h2s_frame_and_windows(end_request: bool, payload: bytes) -> None:
    assert len(payload) <= ANY_PEER_FRAME_SIZE
    ours, sid = _server_with_open_stream(end_request)
    theirs, _ = _server_with_open_stream(end_request)
    assert send_data_now(ours, ours.streams[sid], payload)
    theirs.send_data(sid, payload)
    assert _snapshot(ours, sid) == _snapshot(theirs, sid)
    ours.send_data(sid, b"end", end_stream=True)
    theirs.send_data(sid, b"end", end_stream=True)
    assert ours.data_to_send() == theirs.data_to_send()


def _no_room(conn: h2.connection.H2Connection, sid: int) -> None:
    conn.streams[sid].outbound_flow_control_window = 4


def _no_connection_room(conn: h2.connection.H2Connection, sid: int) -> None:
    conn.outbound_flow_control_window = 4


def _ended(conn: h2.connection.H2Connection, sid: int) -> None:
    conn.send_data(sid, b"", end_stream=True)


def _reset(conn: h2.connection.H2Connection, sid: int) -> None:
    conn.reset_stream(sid)


def _forgotten(conn: h2.connection.H2Connection, sid: int) -> None:
    conn.reset_stream(sid)
    _ = conn.open_outbound_streams  # h2 forgets closed streams as it counts open ones
    assert sid not in conn.streams


def _closing(conn: h2.connection.H2Connection, sid: int) -> None:
    conn.close_connection()


@pytest.mark.parametrize("situation", [_no_room, _no_connection_room, _ended, _reset, _forgotten, _closing])
def test_send_data_now_declines_and_changes_nothing_when_h2_would_not_send_one_plain_frame(situation: Any) -> None:
    server, sid = _server_with_open_stream(end_request=False)
    stream = server.streams[sid]  # held from the start, as H2Stream holds it
    situation(server, sid)
    before = _snapshot(server, sid)
    assert not send_data_now(server, stream, b"hello")
    assert _snapshot(server, sid) == before


def test_send_data_now_declines_a_frame_some_peer_could_refuse() -> None:
    # Over 16,384 bytes a frame needs the peer's SETTINGS_MAX_FRAME_SIZE: the queue's path reads it.
    server, sid = _server_with_open_stream(end_request=False)
    before = _snapshot(server, sid)
    assert not send_data_now(server, server.streams[sid], b"x" * (ANY_PEER_FRAME_SIZE + 1))
    assert _snapshot(server, sid) == before


def _server_with_open_streams(count: int) -> tuple[h2.connection.H2Connection, list[int]]:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    client.initiate_connection()
    server.initiate_connection()
    sids = []
    for i in range(count):
        sid = client.get_next_available_stream_id()
        client.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", "/x"), (":authority", "a")],
                            end_stream=bool(i % 2))
        sids.append(sid)
    server.receive_data(client.data_to_send())
    for sid in sids:
        server.send_headers(sid, [(":status", "200")])
    server.data_to_send()
    return server, sids


@pytest.mark.parametrize("payload", [b"x", b"\x00\x00\x00\x00\x05hello", bytes(range(256)) * 60])
def test_send_same_data_writes_h2s_frames_and_windows(payload: bytes) -> None:
    ours, sids = _server_with_open_streams(5)
    theirs, _ = _server_with_open_streams(5)
    order = [sids[3], sids[0], sids[4], sids[1]]  # any order, any subset
    send_same_data(ours, [ours.streams[sid] for sid in order], payload)
    for sid in order:
        theirs.send_data(sid, payload)
    assert ours.data_to_send() == theirs.data_to_send()
    assert ours.outbound_flow_control_window == theirs.outbound_flow_control_window
    for sid in sids:
        assert ours.streams[sid].outbound_flow_control_window == theirs.streams[sid].outbound_flow_control_window
        assert stream_state(ours, sid) == stream_state(theirs, sid)
    for sid in sids:  # and h2 goes on alike
        ours.send_data(sid, b"end", end_stream=True)
        theirs.send_data(sid, b"end", end_stream=True)
    assert ours.data_to_send() == theirs.data_to_send()


# --- handing received bytes back: the connection's window only, once the request has ended --------


def test_acknowledging_the_data_that_ended_a_request_is_h2s_connection_window_update_alone() -> None:
    from hyperframe.frame import WindowUpdateFrame

    from gatewayd.http2.h2adapter import acknowledge_received
    from gatewayd.testing.raw_h2 import FrameReader

    updates = stream_updates = 0
    for size in (1, 5, 1000, 16384, 32767, 40000, 60000):
        ours, stock, client = (h2.connection.H2Connection(h2.config.H2Configuration(client_side=side))
                               for side in (False, False, True))
        for conn in (ours, stock, client):
            conn.initiate_connection()
        client.receive_data(ours.data_to_send())
        stock.data_to_send()
        preface = client.data_to_send()
        for conn in (ours, stock):
            conn.receive_data(preface)
            conn.data_to_send()
        for sid in (1, 3, 5):
            client.send_headers(sid, [(":method", "POST"), (":scheme", "http"), (":path", "/x"), (":authority", "a")])
            for start in range(0, size, 16384):
                client.send_data(sid, bytes(min(16384, size - start)), end_stream=start + 16384 >= size)
                data = client.data_to_send()
                events = ours.receive_data(data)
                assert repr(events) == repr(stock.receive_data(data))
                [event] = [e for e in events if isinstance(e, h2.events.DataReceived)]
                ended = event.stream_ended is not None
                acknowledge_received(ours, event.flow_controlled_length, sid, ended)
                stock.acknowledge_received_data(event.flow_controlled_length, sid)
                ours_frames = FrameReader().feed(ours.data_to_send())
                stock_bytes = stock.data_to_send()
                client.receive_data(stock_bytes)
                stock_frames = FrameReader().feed(stock_bytes)
                assert all(isinstance(f, WindowUpdateFrame) for f in stock_frames)
                if ended:  # h2 also reopens the stream's window, which the client can no longer use
                    stream_updates += sum(1 for f in stock_frames if f.stream_id)
                    stock_frames = [f for f in stock_frames if f.stream_id == 0]
                assert [f.serialize() for f in ours_frames] == [f.serialize() for f in stock_frames]
                updates += len(ours_frames)
            assert (ours._inbound_flow_control_window_manager.__dict__
                    == stock._inbound_flow_control_window_manager.__dict__)
    assert updates >= 3 and stream_updates >= 1  # windows handed back, and h2's useless one left out
