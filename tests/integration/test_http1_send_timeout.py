"""``server.send_timeout_s`` over HTTP/1.1: a client that stops reading its event stream is dropped.

A real socket with a small receive buffer asks for a large server stream over
Connect on HTTP/1.1 and never reads. The stream bound is set high so that only
the send timeout can end it: once the socket has taken nothing for
``send_timeout_s``, the connection is aborted and the running call cancelled.
"""

from __future__ import annotations

import json
import socket
import struct
import time

import pytest_twisted

from gatewayd.config import ServerConfig
from gatewayd.testing.harness import STREAM, Harness, echo_request
from gatewayd.testing.wait import until

SEND_TIMEOUT_S = 1.0


@pytest_twisted.ensureDeferred
async def test_a_client_that_stops_reading_is_aborted_after_the_send_timeout(harness: Harness) -> None:
    server = await harness.serve(ServerConfig(send_timeout_s=SEND_TIMEOUT_S, stream_buffer_bytes=64 * 1024 * 1024))
    # 16 MiB of events, far more than both kernel buffers hold; the call then stays open.
    body = echo_request(json.dumps({"count": 256, "size": 64 * 1024, "hold": True}).encode())
    frame = b"\x00" + struct.pack(">I", len(body)) + body
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    try:
        sock.connect(("127.0.0.1", harness.port))
        sock.sendall(b"POST " + STREAM.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/connect+proto\r\nConnect-Protocol-Version: 1\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(frame) + frame)
        await until(lambda: len(server.factory.connections) == 1, "the connection")
        started = time.monotonic()
        await until(lambda: STREAM in harness.methods.cancelled, "the stalled stream's call cancelled",
                    timeout=SEND_TIMEOUT_S + 10)
        assert time.monotonic() - started >= SEND_TIMEOUT_S * 0.9
        await until(lambda: not server.factory.connections, "the server to drop the connection")
    finally:
        sock.close()
    await harness.assert_healthy()
