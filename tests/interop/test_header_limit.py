"""Request headers over the 16 KiB limit (PROTOCOL.md section 7): 431 on HTTP/1.1;
RST_STREAM, GOAWAY or a trailers-only RESOURCE_EXHAUSTED on HTTP/2. Sent by connect-es,
and once by a raw socket to pin down how the HTTP/1.1 connection is closed.
"""

from __future__ import annotations

import os
import select
import socket

import pytest_twisted
from twisted.internet import threads

from gatewayd.rpc.codes import Code
from gatewayd.testing.wait import until
from tests.interop._clients import run_node
from tests.interop._support import HealthServer, require_node

pytestmark = require_node()

CHECK = "grpc.health.v1.Health/Check"
# Together over 16 KiB, each line well under it.
SPLIT_HEADERS = {"x-pad-a": "a" * 6000, "x-pad-b": "b" * 6000, "x-pad-c": "c" * 6000}
# One header line longer than 16 KiB.
ONE_LONG_HEADER = {"x-pad": "a" * 17000}


def _connect_empty_body(step_id: str, headers: dict[str, str]) -> dict[str, object]:
    # Connect unary, binary, empty request: a request with no body, so the client has written
    # everything before the server answers and closes (see the lingering-close test below:
    # a client still writing a body may lose the 431).
    return {"id": step_id, "transport": "connect", "httpVersion": "1.1", "binary": True, "method": CHECK,
            "request": {}, "headers": headers}


def _assert_431(end: dict[str, object]) -> None:
    # connect-es reports a non-RPC HTTP error as UNKNOWN "HTTP <status>".
    assert (end["code"], end["rawMessage"]) == (Code.UNKNOWN, "HTTP 431"), end


@pytest_twisted.ensureDeferred
async def test_http1_headers_over_the_limit_get_431(health_server: HealthServer) -> None:
    steps = [_connect_empty_body("over", SPLIT_HEADERS), _connect_empty_body("after", {})]
    results = await run_node({"baseUrl": health_server.url, "steps": steps})
    _assert_431(results["over"]["end"])
    assert results["after"]["messages"] == [{"status": "SERVING"}], results
    await until(health_server.idle, health_server.state)


@pytest_twisted.ensureDeferred
async def test_http1_one_header_line_over_the_limit_gets_431(health_server: HealthServer) -> None:
    results = await run_node({"baseUrl": health_server.url, "steps": [_connect_empty_body("long", ONE_LONG_HEADER)]})
    _assert_431(results["long"]["end"])


def _send_over_limit_then_body(port: int, body_bytes: int) -> tuple[bytes, int]:
    """Raw HTTP/1.1 (in a thread): headers over the limit with a declared body, read the answer
    to EOF, then send the body. Returns (status line, socket error seen within 1 s after)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        head = b"".join(f"{k}: {v}\r\n".encode() for k, v in SPLIT_HEADERS.items())
        sock.sendall(
            b"POST /grpc.health.v1.Health/Check HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n" + head + b"Content-Length: %d\r\n\r\n" % body_bytes
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        sock.sendall(b"x" * body_bytes)
        # A peer that closed its socket answers the body with RST: POLLERR, SO_ERROR=EPIPE.
        poller = select.poll()
        poller.register(sock, select.POLLERR)
        poller.poll(1000)
        return answer.split(b"\r\n", 1)[0], sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)


@pytest_twisted.ensureDeferred
async def test_http1_431_is_followed_by_a_lingering_close(health_server: HealthServer) -> None:
    status, error = await threads.deferToThread(_send_over_limit_then_body, health_server.server.port, 64 * 1024)
    assert status.startswith(b"HTTP/1.1 431"), status
    assert error == 0, f"connection reset after the 431: {os.strerror(error)}"


@pytest_twisted.ensureDeferred
async def test_http2_headers_over_the_limit_are_refused_and_the_server_goes_on(health_server: HealthServer) -> None:
    steps: list[dict[str, object]] = []
    for transport in ("connect", "grpc", "grpcweb"):
        steps += [
            {"id": f"{transport}/split", "transport": transport, "httpVersion": "2", "method": CHECK,
             "request": {}, "headers": SPLIT_HEADERS},
            {"id": f"{transport}/long", "transport": transport, "httpVersion": "2", "method": CHECK,
             "request": {}, "headers": ONE_LONG_HEADER},
            {"id": f"{transport}/after", "transport": transport, "httpVersion": "2", "method": CHECK,
             "request": {}},
        ]
    results = await run_node({"baseUrl": health_server.url, "steps": steps})
    for transport in ("connect", "grpc", "grpcweb"):
        for case in ("split", "long"):
            got = results[f"{transport}/{case}"]
            # RST_STREAM, GOAWAY (ENHANCE_YOUR_CALM) or RESOURCE_EXHAUSTED: never an answer.
            assert got["messages"] == [] and got["end"]["code"] != Code.OK, (transport, case, got)
        after = results[f"{transport}/after"]
        assert after["messages"] == [{"status": "SERVING"}], (transport, after)
    await until(health_server.idle, health_server.state)
