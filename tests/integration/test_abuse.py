"""Abuse and drains over real sockets: rapid reset, a PING flood, a graceful drain, an idle HTTP/1.1 peer.

After each, a normal Health Check on a new connection succeeds: the process stays healthy.
The HTTP/2 rules themselves (floods, limits, timers, flow control, the drain's steps)
are tested on a Clock in tests/unit/test_h2_core.py; these show them over a socket.
"""

from __future__ import annotations

import pytest_twisted
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame, PingFrame

from gatewayd._proto.gateway.v1 import gateway_pb2
from gatewayd.config import ServerConfig
from gatewayd.http2.server import H2ServerConnection
from gatewayd.rpc.framing import encode_frame
from gatewayd.testing.harness import CHECK, ECHO, SLOW, Harness, check_request, echo_request
from gatewayd.testing.raw_http1 import RawHttp1
from gatewayd.testing.wait import until

MAX_STREAM_ID = 2**31 - 1


def only_connection(h: Harness) -> H2ServerConnection:
    assert h.server is not None
    [conn] = h.server.factory.h2_connections
    return conn


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


