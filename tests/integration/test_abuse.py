"""Abuse over real sockets: floods, rapid reset, oversized headers, slow readers, drains, idle peers.

After each, a normal Health Check on a new connection succeeds: the process stays healthy.
"""

from __future__ import annotations

import pytest_twisted
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame, PingFrame, SettingsFrame

from gatewayd._proto.gateway.v1 import gateway_pb2
from gatewayd.config import ServerConfig
from gatewayd.rpc.codes import Code
from gatewayd.rpc.framing import encode_frame
from gatewayd.testing.harness import CHECK, ECHO, SLOW, STREAM, Harness, check_request, echo_request
from gatewayd.testing.raw_http1 import RawHttp1
from gatewayd.testing.wait import until
from gatewayd.transport.h2server import H2ServerConnection

MAX_STREAM_ID = 2**31 - 1


def only_connection(h: Harness) -> H2ServerConnection:
    assert h.server is not None
    [conn] = h.server.factory.h2_connections
    return conn


@pytest_twisted.ensureDeferred
async def test_oversized_header_block_closes_the_connection(harness: Harness) -> None:
    await harness.serve(ServerConfig(max_header_list_bytes=4096))
    client = await harness.h2()
    ok = await client.call(CHECK, encode_frame(check_request()), extra=[("x-fits", "a" * 1000)])
    assert ok.grpc_status() == 0
    sid = client.open_stream(CHECK, body=encode_frame(check_request()), extra=[("x-huge", "a" * 20_000)])
    await client.wait(lambda: bool(client.goaways) or client.responses[sid].done or client.closed, "refusal")
    # What the server does: GOAWAY(ENHANCE_YOUR_CALM) naming the last stream it processed, then close.
    assert client.goaways == [(1, ErrorCodes.ENHANCE_YOUR_CALM)]
    assert client.responses[sid].headers is None
    await client.wait(lambda: client.closed, "close")
    await harness.assert_healthy()


@pytest_twisted.ensureDeferred
async def test_rapid_reset_gets_goaway_enhance_your_calm(harness: Harness) -> None:
    await harness.serve()
    client = await harness.h2()
    for _ in range(150):
        sid = client.open_stream(SLOW, body=encode_frame(echo_request(b"")), end_stream=False)
        client.reset_stream(sid)
    await client.wait(lambda: bool(client.goaways), "GOAWAY")
    last_id, code = client.goaways[0]
    assert code == ErrorCodes.ENHANCE_YOUR_CALM
    assert 100 < last_id < 300  # after about 100 premature resets, not all 150
    await client.wait(lambda: client.closed, "close")
    assert harness.server is not None
    await until(lambda: not harness.server.app.active, "every reset call freed")  # type: ignore[union-attr]
    await harness.assert_healthy()


@pytest_twisted.ensureDeferred
async def test_answered_streams_reset_afterwards_are_not_rapid_reset(harness: Harness) -> None:
    await harness.serve()
    client = await harness.h2()
    for _ in range(150):
        response = await client.call(CHECK, encode_frame(check_request()))
        assert response.grpc_status() == 0
        client.reset_stream(response.stream_id)
    response = await client.call(CHECK, encode_frame(check_request()))
    assert response.grpc_status() == 0 and not client.goaways


@pytest_twisted.ensureDeferred
async def test_settings_flood(harness: Harness) -> None:
    await harness.serve()
    client = await harness.h2()
    client.write_frame(*[SettingsFrame(0, settings={0x4: 65535}) for _ in range(400)])
    await client.wait(lambda: bool(client.goaways), "GOAWAY")
    assert client.goaways[0][1] == ErrorCodes.ENHANCE_YOUR_CALM
    await client.wait(lambda: client.closed, "close")
    await harness.assert_healthy()


@pytest_twisted.ensureDeferred
async def test_ping_flood(harness: Harness) -> None:
    await harness.serve()
    client = await harness.h2()
    client.write_frame(*[PingFrame(0, b"%08d" % i) for i in range(400)])
    await client.wait(lambda: bool(client.goaways), "GOAWAY")
    assert client.goaways[0][1] == ErrorCodes.ENHANCE_YOUR_CALM
    # (h2 acknowledges every PING of one read before the flood is counted: bounded by the read size.)
    await client.wait(lambda: client.closed, "close")
    await harness.assert_healthy()


@pytest_twisted.ensureDeferred
async def test_garbage_after_preface_is_a_protocol_error(harness: Harness) -> None:
    await harness.serve()
    client = await harness.h2()
    assert client.transport is not None
    client.transport.write(b"\x00\x00\x04\x09\x00\x00\x00\x00\x00" + b"junk")  # CONTINUATION out of nowhere
    await client.wait(lambda: bool(client.goaways), "GOAWAY")
    assert client.goaways[0][1] == ErrorCodes.PROTOCOL_ERROR
    await client.wait(lambda: client.closed, "close")
    await harness.assert_healthy()


@pytest_twisted.ensureDeferred
async def test_concurrent_stream_limit_counts_running_handlers(harness: Harness) -> None:
    await harness.serve(ServerConfig(max_concurrent_streams=3))
    client = await harness.h2()
    sids = [client.open_stream(SLOW, body=encode_frame(echo_request(b""))) for _ in range(4)]
    await client.wait(lambda: client.responses[sids[3]].done, "refusal of the 4th")
    assert client.responses[sids[3]].reset == ErrorCodes.REFUSED_STREAM
    assert len(harness.methods.slow) == 3
    for d in harness.methods.slow:
        d.callback(gateway_pb2.ExecuteCommandResponse(payload_bytes=b"done"))
    await client.wait(lambda: all(client.responses[s].done for s in sids[:3]), "the three to finish")
    assert [client.responses[s].grpc_status() for s in sids[:3]] == [0, 0, 0]
    response = await client.call(CHECK, encode_frame(check_request()))
    assert response.grpc_status() == 0


@pytest_twisted.ensureDeferred
async def test_broken_json_does_not_disturb_other_streams(harness: Harness) -> None:
    await harness.serve()
    client = await harness.h2()
    slow = client.open_stream(SLOW, body=encode_frame(echo_request(b"")))
    await until(lambda: len(harness.methods.slow) == 1, "slow call running")
    deep = await client.call(CHECK, b"[" * 50_000, "application/json")
    assert deep.status == 400
    broken = await client.call(CHECK, b'{"service": 1', "application/json")
    assert broken.status == 400
    harness.methods.slow[0].callback(gateway_pb2.ExecuteCommandResponse(payload_bytes=b"still here"))
    await client.wait(lambda: client.responses[slow].done, "slow call")
    assert client.responses[slow].grpc_status() == 0 and not client.closed


# --- flow control and slow readers -------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_streaming_response_waits_for_window_update(harness: Harness) -> None:
    await harness.serve()
    client = await harness.h2(auto_window=False)
    count, size = 100, 1000
    body = encode_frame(echo_request(b'{"count": %d, "size": %d}' % (count, size)))
    sid = client.open_stream(STREAM, body=body)
    response = client.responses[sid]
    await client.wait(lambda: len(response.data) >= 65535, "the initial window's worth")
    conn = only_connection(harness)
    stream = conn.streams[sid]
    # Stalled: exactly the default window went out, the rest waits in the stream's queue.
    assert len(response.data) == 65535 and not response.ended
    assert stream.buffered_bytes > 0
    total = len(response.data) + stream.buffered_bytes
    client.window_update(sid, 1 << 20)
    await client.wait(lambda: response.done, "stream end")
    assert response.trailers == {"grpc-status": "0"}
    assert len(response.data) < total + 1  # everything queued, nothing more (trailers are HEADERS)
    events = [gateway_pb2.GatewayEvent.FromString(p) for _, p in response.messages()]
    assert [e.event_id for e in events] == [str(i) for i in range(count)]
    assert all(len(e.payload_bytes) == size for e in events)


@pytest_twisted.ensureDeferred
async def test_client_that_stops_reading_gets_resource_exhausted(harness: Harness) -> None:
    server = await harness.serve(ServerConfig(stream_buffer_bytes=8192))
    slow_reader = await harness.h2(auto_window=False)
    body = encode_frame(echo_request(b'{"count": 200, "size": 1000, "hold": true}'))
    sid = slow_reader.open_stream(STREAM, body=body)
    await slow_reader.wait(lambda: len(slow_reader.responses[sid].data) >= 65535, "window's worth")
    # The buffer overflowed: the call is over for the server, its handler cancelled.
    await until(lambda: not server.app.active, "call ended")
    assert harness.methods.cancelled == [STREAM]
    conn = only_connection(harness)
    assert conn.streams[sid].buffered_bytes <= 8192 + 1100
    # Other clients are served meanwhile.
    await harness.assert_healthy()
    # Once the slow reader reads again, what was queued arrives, then the status.
    slow_reader.window_update(sid, 1 << 20)
    response = slow_reader.responses[sid]
    await slow_reader.wait(lambda: response.done, "status")
    assert response.grpc_status() == Code.RESOURCE_EXHAUSTED
    assert 65 <= len(response.messages()) < 200


# --- graceful shutdown and idle connections ----------------------------------------


@pytest_twisted.ensureDeferred
async def test_graceful_shutdown_lets_open_streams_finish(harness: Harness) -> None:
    await harness.serve()
    client = await harness.h2()
    first = client.open_stream(SLOW, body=encode_frame(echo_request(b"")))
    await until(lambda: len(harness.methods.slow) == 1, "slow call running")
    conn = only_connection(harness)
    done = conn.shutdown()
    await client.wait(lambda: len(client.goaways) == 2, "two GOAWAYs")
    goaway_frames = [i for i, f in enumerate(client.frames) if isinstance(f, GoAwayFrame)]
    pings = [i for i, f in enumerate(client.frames) if isinstance(f, PingFrame) and "ACK" not in f.flags]
    assert client.goaways == [(MAX_STREAM_ID, ErrorCodes.NO_ERROR), (first, ErrorCodes.NO_ERROR)]
    assert goaway_frames[0] < pings[0] < goaway_frames[1]
    # A stream opened after the final GOAWAY is refused; the open one still finishes.
    late = client.open_stream(CHECK, body=encode_frame(check_request()))
    await client.wait(lambda: client.responses[late].done, "refusal")
    assert client.responses[late].reset == ErrorCodes.REFUSED_STREAM
    assert not client.closed and not done.called
    harness.methods.slow[0].callback(gateway_pb2.ExecuteCommandResponse(payload_bytes=b"finished"))
    await client.wait(lambda: client.closed, "close after the last stream")
    response = client.responses[first]
    assert response.grpc_status() == 0
    [(_, payload)] = response.messages()
    assert gateway_pb2.ExecuteCommandResponse.FromString(payload).payload_bytes == b"finished"
    await done
    await harness.assert_healthy()


@pytest_twisted.ensureDeferred
async def test_streams_in_flight_before_the_final_goaway_are_served(harness: Harness) -> None:
    # Between GOAWAY(2^31-1) and the final GOAWAY, streams the client sent before it saw the
    # first one are still accepted: that is what the two-step drain is for.
    await harness.serve()
    client = await harness.h2(auto_ping_ack=False)
    await client.call(CHECK, encode_frame(check_request()))
    conn = only_connection(harness)
    done = conn.shutdown()
    await client.wait(lambda: len(client.goaways) == 1, "first GOAWAY")
    in_flight = client.open_stream(CHECK, body=encode_frame(check_request()))
    await client.wait(lambda: client.responses[in_flight].done, "in-flight stream")
    assert client.responses[in_flight].grpc_status() == 0
    ping = next(f for f in client.frames if isinstance(f, PingFrame) and "ACK" not in f.flags)
    client.write_frame(PingFrame(0, ping.opaque_data, flags=["ACK"]))
    await client.wait(lambda: client.closed, "close")
    assert client.goaways[-1] == (in_flight, ErrorCodes.NO_ERROR)
    await done


@pytest_twisted.ensureDeferred
async def test_idle_http2_connection_is_closed(harness: Harness) -> None:
    await harness.serve(ServerConfig(idle_timeout_s=0.2))
    idle = await harness.h2()
    busy = await harness.h2()
    await busy.call(CHECK, encode_frame(check_request()))
    slow = busy.open_stream(SLOW, body=encode_frame(echo_request(b"")))
    await idle.wait(lambda: idle.closed, "idle close", timeout=3.0)
    assert idle.goaways == [(0, ErrorCodes.NO_ERROR)]
    assert not busy.closed  # a connection with an open stream is not idle
    harness.methods.slow[0].callback(gateway_pb2.ExecuteCommandResponse())
    await busy.wait(lambda: busy.responses[slow].done)
    await busy.wait(lambda: busy.closed, "idle close after the stream", timeout=3.0)
    assert busy.goaways[-1] == (slow, ErrorCodes.NO_ERROR)


@pytest_twisted.ensureDeferred
async def test_idle_http1_connection_is_closed(harness: Harness) -> None:
    await harness.serve(ServerConfig(idle_timeout_s=0.2))
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    client = RawHttp1()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", harness.port), client)
    harness.clients.append(client)
    assert client.transport is not None
    client.transport.write(b"POST " + ECHO.encode() + b" HTTP/1.1\r\nHost: x\r\n")  # never finishes
    await client.wait(lambda: client.closed, "idle close", timeout=3.0)
    await harness.assert_healthy()


@pytest_twisted.ensureDeferred
async def test_streams_answered_before_the_request_ends_are_reset_and_not_held(harness: Harness) -> None:
    # A client that never ends its requests must not pile up open streams in h2.
    await harness.serve(ServerConfig(max_concurrent_streams=3, max_message_bytes=100))
    client = await harness.h2()
    # Each declares a message over the limit: answered at once, while the request is still open.
    sids = [client.open_stream(ECHO, body=b"\x00\x00\x01\x00\x00", end_stream=False) for _ in range(10)]
    await client.wait(lambda: all(client.responses[s].reset is not None for s in sids), "answers")
    for sid in sids:
        response = client.responses[sid]
        assert response.headers is not None and response.headers["grpc-status"] == "8"
        assert response.reset == ErrorCodes.NO_ERROR  # RFC 9113 8.1: stop sending, no error
    conn = only_connection(harness)
    assert conn.h2.open_inbound_streams == 0 and not conn.streams
    assert not client.goaways
    response = await client.call(CHECK, encode_frame(check_request()))
    assert response.grpc_status() == 0
