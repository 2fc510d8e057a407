"""The fast path for DATA frames writes exactly what h2's send_data writes, and leaves h2 in its state."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest
from hyperframe.frame import DataFrame, RstStreamFrame

from gatewayd.http2.h2adapter import send_data_frame


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
