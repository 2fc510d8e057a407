"""What gatewayd.http2.h2adapter does around h2, pinned to h2's own bytes and behaviour.

(The DATA fast path is pinned in test_h2_data_frames.py.)
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
import pytest

from gatewayd.http2.h2adapter import MAX_STREAM_ID, goaway_frame, server_connection
from gatewayd.http2.limits import H2Limits

LIMITS = H2Limits(max_concurrent_streams=5, max_header_list_bytes=4096, initial_window_size=1 << 20)
REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/x"), (b":authority", b"a")]


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
