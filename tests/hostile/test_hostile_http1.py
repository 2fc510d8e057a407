"""Hostile HTTP/1.1 clients against a real ``twist gatewayd --dev`` process.

Request smuggling: every request head that a proxy in front could read
differently from us (two lengths, obfuscated or misplaced Transfer-Encoding,
obs-fold, bare LF or CR, missing or doubled Host) is answered with exactly one
``400`` and ``Connection: close``, and the connection is closed: the request
hidden behind it is never answered. ``Upgrade: h2c`` is ignored (HTTP/2 is
prior knowledge only). Slowloris: a head or body trickled a byte at a time is
cut off with 408 by its own deadline, which trickling cannot reset.

Each attack runs inside ``attack(..., http1=True)``: a well-behaved gRPC-Web
client keeps calling Health/Check over HTTP/1.1 throughout and must be served.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from gatewayd.rpc.framing import encode_frame, split_grpc_web_body
from gatewayd.testing.harness import CHECK, check_request
from gatewayd.testing.raw_http1 import RawHttp1, parse_http1_response
from tests.hostile.support import GatewayProcess, attack, http1_client, sample_until

HEADER_TIMEOUT_S = 1.0
BODY_TIMEOUT_S = 1.0
GATEWAY_CONFIG = f"""
[server]
request_header_timeout_s = {HEADER_TIMEOUT_S}
request_body_timeout_s = {BODY_TIMEOUT_S}
"""

BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
CHECK_BODY = encode_frame(check_request())
GRPC_WEB = b"Content-Type: application/grpc-web+proto\r\n"
POST = b"POST " + CHECK.encode() + b" HTTP/1.1\r\n"
# The request a smuggling attempt hides in its body: were it ever parsed, a second answer would come.
HIDDEN = b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
CHUNKED_HIDING = b"0\r\n\r\n" + HIDDEN  # a chunked body that ends early: the rest is "the next request"

SMUGGLING = {
    "content-length-and-transfer-encoding":
        POST + b"Host: x\r\n" + GRPC_WEB + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n"
        % len(CHUNKED_HIDING) + CHUNKED_HIDING,
    "transfer-encoding-then-content-length":
        POST + b"Host: x\r\n" + GRPC_WEB + b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n\r\n"
        % len(CHUNKED_HIDING) + CHUNKED_HIDING,
    "two-content-lengths":
        POST + b"Host: x\r\n" + GRPC_WEB + b"Content-Length: %d\r\nContent-Length: %d\r\n\r\n"
        % (len(CHECK_BODY), len(CHECK_BODY) + len(HIDDEN)) + CHECK_BODY + HIDDEN,
    "content-length-list":
        POST + b"Host: x\r\n" + GRPC_WEB + b"Content-Length: %d, %d\r\n\r\n"
        % (len(CHECK_BODY), len(CHECK_BODY)) + CHECK_BODY + HIDDEN,
    "obs-fold-transfer-encoding":
        POST + b"Host: x\r\n" + GRPC_WEB + b"Content-Length: %d\r\nTransfer-Encoding:\r\n chunked\r\n\r\n"
        % len(CHUNKED_HIDING) + CHUNKED_HIDING,
    "obs-fold":
        POST + b"Host: x\r\n" + GRPC_WEB + b"X-Folded: a\r\n\tb\r\nContent-Length: %d\r\n\r\n"
        % len(CHECK_BODY) + CHECK_BODY + HIDDEN,
    "whitespace-before-first-header":
        POST + b" Transfer-Encoding: chunked\r\nHost: x\r\n" + GRPC_WEB + b"Content-Length: %d\r\n\r\n"
        % len(CHUNKED_HIDING) + CHUNKED_HIDING,
    "bare-lf-line-ends":
        POST.replace(b"\r\n", b"\n") + b"Host: x\n" + GRPC_WEB.replace(b"\r\n", b"\n")
        + b"Content-Length: %d\n\n" % len(CHECK_BODY) + CHECK_BODY + HIDDEN,
    "bare-lf-inside-a-header":
        POST + b"Host: x\r\n" + GRPC_WEB + b"X-A: 1\nTransfer-Encoding: chunked\r\nContent-Length: %d\r\n\r\n"
        % len(CHUNKED_HIDING) + CHUNKED_HIDING,
    "bare-cr-inside-a-header":
        POST + b"Host: x\r\n" + GRPC_WEB + b"X-A: 1\rTransfer-Encoding: chunked\r\nContent-Length: %d\r\n\r\n"
        % len(CHUNKED_HIDING) + CHUNKED_HIDING,
    "transfer-encoding-identity":
        POST + b"Host: x\r\n" + GRPC_WEB + b"Transfer-Encoding: identity\r\nContent-Length: %d\r\n\r\n"
        % len(CHECK_BODY) + CHECK_BODY + HIDDEN,
    "transfer-encoding-xchunked":
        POST + b"Host: x\r\n" + GRPC_WEB + b"Transfer-Encoding: xchunked\r\nContent-Length: %d\r\n\r\n"
        % len(CHUNKED_HIDING) + CHUNKED_HIDING,
    "transfer-encoding-space-before-colon":
        POST + b"Host: x\r\n" + GRPC_WEB + b"Transfer-Encoding : chunked\r\nContent-Length: %d\r\n\r\n"
        % len(CHUNKED_HIDING) + CHUNKED_HIDING,
    "transfer-encoding-twice":
        POST + b"Host: x\r\n" + GRPC_WEB + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n"
        + CHUNKED_HIDING,
    "transfer-encoding-in-http-1.0":
        POST.replace(b"HTTP/1.1", b"HTTP/1.0") + b"Host: x\r\n" + GRPC_WEB
        + b"Transfer-Encoding: chunked\r\nContent-Length: %d\r\n\r\n" % len(CHUNKED_HIDING) + CHUNKED_HIDING,
    "no-host": POST + GRPC_WEB + b"Content-Length: %d\r\n\r\n" % len(CHECK_BODY) + CHECK_BODY + HIDDEN,
    "two-hosts":
        POST + b"Host: a\r\nHost: b\r\n" + GRPC_WEB + b"Content-Length: %d\r\n\r\n" % len(CHECK_BODY) + CHECK_BODY
        + HIDDEN,
    "malformed-host":
        POST + b"Host: a b/c\r\n" + GRPC_WEB + b"Content-Length: %d\r\n\r\n" % len(CHECK_BODY) + CHECK_BODY + HIDDEN,
}


async def _exchange(port: int, raw: bytes) -> RawHttp1:
    """Send ``raw`` on a new connection; return the client once the gateway has closed it (bounded)."""
    client = await http1_client(port)
    assert client.transport is not None
    client.transport.write(raw)
    await client.wait(lambda: client.closed, "the gateway to close the connection")
    return client


@pytest.mark.parametrize("raw", list(SMUGGLING.values()), ids=list(SMUGGLING))
@pytest_twisted.ensureDeferred
async def test_request_smuggling_attempt_is_400_and_close(gateway: GatewayProcess, raw: bytes) -> None:
    async with attack(gateway, http1=True):
        client = await _exchange(gateway.port, raw)
        assert client.received == BAD_REQUEST, client.received


@pytest_twisted.ensureDeferred
async def test_the_same_requests_well_formed_are_served(gateway: GatewayProcess) -> None:
    # The control: what the smuggling attempts break is what makes them 400, nothing else.
    framed = POST + b"Host: x\r\n" + GRPC_WEB + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(CHECK_BODY)
    chunk = b"%x\r\n" % len(CHECK_BODY) + CHECK_BODY + b"\r\n0\r\n\r\n"
    chunked = POST + b"Host: x\r\n" + GRPC_WEB + b"Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk
    for raw in (framed + CHECK_BODY, chunked, framed.replace(b"Host: x", b"Host: [::1]:8080") + CHECK_BODY):
        response = parse_http1_response((await _exchange(gateway.port, raw)).received)
        assert response.status == 200, response
        assert split_grpc_web_body(response.body, 1 << 20)[1] == {"grpc-status": "0"}


@pytest_twisted.ensureDeferred
async def test_upgrade_h2c_is_ignored(gateway: GatewayProcess) -> None:
    # An h2c upgrade (the "h2c smuggling" of proxies that pass Upgrade through): no 101, the
    # request is answered over HTTP/1.1, and the connection stays HTTP/1.1, so the HTTP/2
    # preface sent after it is a malformed HTTP/1.1 request.
    async with attack(gateway, http1=True):
        client = await http1_client(gateway.port)
        assert client.transport is not None
        upgrade = (POST + b"Host: x\r\n" + GRPC_WEB + b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                   b"HTTP2-Settings: AAMAAABkAAQAAP__\r\nContent-Length: %d\r\n\r\n" % len(CHECK_BODY) + CHECK_BODY)
        client.transport.write(upgrade)
        await client.wait(lambda: client.received.endswith(b"0\r\n\r\n"), "the answer to the upgrade request")
        response = parse_http1_response(client.received)
        assert response.raw.startswith(b"HTTP/1.1 200 OK\r\n") and b"101" not in response.raw.split(b"\r\n")[0]
        assert "upgrade" not in response.headers
        assert split_grpc_web_body(response.body, 1 << 20)[1] == {"grpc-status": "0"}
        answered = len(client.received)
        client.transport.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        await client.wait(lambda: client.closed, "the gateway to close the connection")
        assert client.received[answered:] == BAD_REQUEST


async def _trickle(clients: list[RawHttp1], data: bytes, interval: float) -> None:
    """Write ``data`` one byte per ``interval`` to every client still open, until all are closed or done."""
    for i in range(len(data)):
        open_clients = [c for c in clients if not c.closed]
        if not open_clients:
            return
        for client in open_clients:
            assert client.transport is not None
            client.transport.write(data[i : i + 1])
        await task.deferLater(reactor, interval, lambda: None)


@pytest_twisted.ensureDeferred
async def test_slowloris_headers_get_408(gateway: GatewayProcess) -> None:
    # 100 connections trickle a request head a byte every 100 ms: each read would reset an idle
    # timeout, but the head's own deadline (1 s from its first byte) ends them all with 408.
    head = POST + b"Host: x\r\n" + GRPC_WEB + b"X-Padding: " + b"p" * 200 + b"\r\nContent-Length: 5\r\n\r\n"
    async with attack(gateway, http1=True) as state:
        clients = [await http1_client(gateway.port) for _ in range(100)]
        started = reactor.seconds()
        trickling = defer.ensureDeferred(_trickle(clients, head, 0.1))
        await sample_until(state, lambda: all(c.closed for c in clients), "every trickling connection closed",
                           timeout=HEADER_TIMEOUT_S + 10)
        elapsed = reactor.seconds() - started
        await trickling
        assert HEADER_TIMEOUT_S <= elapsed < HEADER_TIMEOUT_S + 10, elapsed
        for client in clients:
            assert client.received == REQUEST_TIMEOUT


@pytest_twisted.ensureDeferred
async def test_slow_but_in_time_head_is_served(gateway: GatewayProcess) -> None:
    # Within the deadline, slowness is fine: a head sent in pieces over half a second is answered.
    raw = POST + b"Host: x\r\n" + GRPC_WEB + b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(CHECK_BODY)
    client = await http1_client(gateway.port)
    assert client.transport is not None
    for i in range(0, len(raw), len(raw) // 5 + 1):
        client.transport.write(raw[i : i + len(raw) // 5 + 1])
        await task.deferLater(reactor, 0.1, lambda: None)
    client.transport.write(CHECK_BODY)
    await client.wait(lambda: client.closed, "the answer")
    response = parse_http1_response(client.received)
    assert response.status == 200 and split_grpc_web_body(response.body, 1 << 20)[1] == {"grpc-status": "0"}


@pytest_twisted.ensureDeferred
async def test_slowloris_body_gets_408(gateway: GatewayProcess) -> None:
    # The head arrives at once; the body (declared 200 bytes) a byte every 100 ms, on 50 connections.
    head = POST + b"Host: x\r\n" + GRPC_WEB + b"Content-Length: 200\r\n\r\n"
    async with attack(gateway, http1=True) as state:
        clients = [await http1_client(gateway.port) for _ in range(50)]
        for client in clients:
            assert client.transport is not None
            client.transport.write(head)
        started = reactor.seconds()
        trickling = defer.ensureDeferred(_trickle(clients, b"\x00" * 200, 0.1))
        await sample_until(state, lambda: all(c.closed for c in clients), "every trickling body cut off",
                           timeout=BODY_TIMEOUT_S + 10)
        elapsed = reactor.seconds() - started
        await trickling
        assert BODY_TIMEOUT_S <= elapsed + 0.2 < BODY_TIMEOUT_S + 10, elapsed
        for client in clients:
            assert client.received == REQUEST_TIMEOUT
