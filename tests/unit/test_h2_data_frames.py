"""The fan-out fast path for DATA frames writes exactly what h2's send_data writes."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.exceptions
import pytest

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


def test_a_closed_stream_takes_h2s_path_and_its_error() -> None:
    server, sid = _server_with_open_stream(end_request=True)
    stream = server.streams[sid]
    server.send_data(sid, b"", end_stream=True)
    with pytest.raises(h2.exceptions.StreamClosedError):
        send_data_frame(server, stream, b"late")
