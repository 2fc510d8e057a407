"""The backend client's keep-alive HTTP/1.1 pool over real loopback sockets.

Against a raw socket server that answers exactly the bytes a test scripts
(the edge cases: chunked, closed mid-answer, keep-alive, 5xx), and against
the reference backend under more concurrent calls than pooled connections.
Clock-driven cases (timeouts, queue bounds, parsing in pieces) live in
tests/unit/test_backend_pool.py.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock

from gatewayd.backend.rest import BackendAnswer, BackendClient, BackendUnavailable
from gatewayd.config import Route
from gatewayd.devbackend.service import DevBackend, make_http_site
from tests.support import record_connections

Answer = Callable[[bytes, Any], None]
"""Given one request's bytes and the server transport, write (or not) an answer."""


class RawServer(Protocol):
    """Collects one request at a time (head, plus a Content-Length body) and lets ``answer`` reply."""

    def __init__(self, factory: RawFactory) -> None:
        self.factory = factory
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            request = head + b"\r\n\r\n" + rest[:length]
            self.buffer = rest[length:]
            self.factory.requests.append(request)
            self.factory.answer(request, self.transport)


class RawFactory(Factory):
    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.connections = 0
        self.authority = b""

    def buildProtocol(self, addr: Any) -> RawServer:
        self.connections += 1
        return RawServer(self)


async def with_raw_server(answer: Answer, test: Callable[[BackendClient, RawFactory], Any],
                          **options: Any) -> None:
    factory = RawFactory(answer)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    factory.authority = f"127.0.0.1:{port.getHost().port}".encode()
    client = BackendClient(reactor, "http://" + factory.authority.decode(), **{
        "timeout_s": 5.0, "max_connections": 4, **options})
    try:
        await test(client, factory)
    finally:
        await client.close()
        await port.stopListening()


def always(raw: bytes) -> Answer:
    return lambda request, transport: transport.write(raw)


SESSION = (b'{"device_session_id":"ds_1","user_id":"usr_1","client_public_key":"'
           + base64.b64encode(bytes(32)) + b'","status":"active"}')


@pytest_twisted.ensureDeferred
async def test_requests_are_written_as_exact_http11_bytes() -> None:
    async def test(client: BackendClient, server: RawFactory) -> None:
        await client.get_session("ds_1:a/b")
        await client.call_route(Route("GET", "notes"), b"", "usr_1", "ds_1", "r-1")
        await client.call_route(Route("POST", "sessions/revoke"), b'{"a":1}', "usr_1\r\nX-Evil: 1", "ds_1", "r-2")
        host = server.authority
        assert server.requests == [
            b"GET /api/v1/internal/sessions/ds_1:a%2Fb HTTP/1.1\r\nHost: " + host
            + b"\r\nAccept: application/json\r\n\r\n",
            b"GET /api/v1/user/notes HTTP/1.1\r\nHost: " + host
            + b"\r\nContent-Type: application/json\r\nAccept: application/json\r\n"
            b"X-User-Id: usr_1\r\nX-Device-Session-Id: ds_1\r\nX-Request-Id: r-1\r\n\r\n",
            b"POST /api/v1/user/sessions/revoke HTTP/1.1\r\nHost: " + host
            + b"\r\nContent-Type: application/json\r\nAccept: application/json\r\n"
            b"X-User-Id: usr_1 X-Evil: 1\r\nX-Device-Session-Id: ds_1\r\nX-Request-Id: r-2\r\n"
            b"Content-Length: 7\r\n\r\n{\"a\":1}",
        ]
        assert server.connections == 1

    await with_raw_server(always(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"), test)


@pytest_twisted.ensureDeferred
async def test_a_request_bigger_than_the_socket_takes_at_once_arrives_whole_and_in_order() -> None:
    """A request is sent straight to the socket; what the socket does not take at once (a body
    of megabytes) goes through Twisted's buffer, behind it, and the next request after both."""
    big = random.Random(7).randbytes(12 * 1024 * 1024)  # the raw server reads a body as bytes

    async def test(client: BackendClient, server: RawFactory) -> None:
        answers = await gatherResults([
            client.call_route(Route("POST", "notes"), big, "usr_1", "ds_1", "r-1"),
            client.call_route(Route("POST", "notes"), b"{}", "usr_1", "ds_1", "r-2"),
        ])
        assert [a.status for a in answers] == [200, 200]
        await client.call_route(Route("POST", "notes"), b"[]", "usr_1", "ds_1", "r-3")
        bodies = [request.partition(b"\r\n\r\n")[2] for request in server.requests]
        assert sorted(bodies, key=len) == [b"{}", b"[]", big] or sorted(bodies, key=len) == [b"[]", b"{}", big]
        assert bodies[-1] == b"[]" and server.connections <= 2

    await with_raw_server(always(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), test,
                          max_body_bytes=16 * 1024 * 1024)


@pytest_twisted.ensureDeferred
async def test_keep_alive_connections_are_reused_and_5xx_is_an_answer() -> None:
    async def test(client: BackendClient, server: RawFactory) -> None:
        for _ in range(10):
            answer = await client.call_route(Route("POST", "notes"), b"{}", "u", "s", "r")
            assert answer == BackendAnswer(503, b"down")
        assert server.connections == 1
        stats = client.stats
        assert (stats.open, stats.in_use, stats.waiting) == (1, 0, 0)

    await with_raw_server(always(b"HTTP/1.1 503 Unavailable\r\nContent-Length: 4\r\n\r\ndown"), test)


@pytest_twisted.ensureDeferred
async def test_a_chunked_session_answer_in_separate_writes() -> None:
    def chunked(request: bytes, transport: Any) -> None:
        transport.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        half = len(SESSION) // 2
        for piece in (SESSION[:half], SESSION[half:]):
            reactor.callLater(0.01, transport.write, b"%x\r\n%s\r\n" % (len(piece), piece))
        reactor.callLater(0.02, transport.write, b"0\r\n\r\n")

    async def test(client: BackendClient, server: RawFactory) -> None:
        session = await client.get_session("ds_1")
        assert session is not None and session.user_id == "usr_1" and session.client_public_key == bytes(32)

    await with_raw_server(chunked, test)


@pytest_twisted.ensureDeferred
async def test_a_connection_closed_mid_answer_is_unavailable() -> None:
    def half(request: bytes, transport: Any) -> None:
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this")
        transport.loseConnection()

    async def test(client: BackendClient, server: RawFactory) -> None:
        with pytest.raises(BackendUnavailable):
            await client.call_route(Route("POST", "notes"), b"{}", "u", "s", "r")
        assert client.stats.open == 0

    await with_raw_server(half, test)


@pytest_twisted.ensureDeferred
async def test_a_backend_closing_connections_after_each_answer_costs_no_failed_lookup() -> None:
    """The backend closes after each answer without saying so: the next lookup finds (or retries on)
    a new connection."""
    def answer_then_close(request: bytes, transport: Any) -> None:
        transport.write(SESSION_ANSWER)
        reactor.callLater(0, transport.loseConnection)

    async def test(client: BackendClient, server: RawFactory) -> None:
        for _ in range(3):
            assert (await client.get_session("ds_1")) is not None
        assert server.connections == 3

    await with_raw_server(answer_then_close, test)


SESSION_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(SESSION), SESSION)


@pytest_twisted.ensureDeferred
async def test_a_slow_answer_times_out_and_the_pool_recovers() -> None:
    slow = {"on": True}

    def maybe(request: bytes, transport: Any) -> None:
        if not slow["on"]:
            transport.write(SESSION_ANSWER)

    async def test(client: BackendClient, server: RawFactory) -> None:
        with pytest.raises(BackendUnavailable, match="timed out"):
            await client.get_session("ds_1")
        slow["on"] = False
        assert (await client.get_session("ds_1")) is not None
        assert client.stats.open == 1

    await with_raw_server(maybe, test, timeout_s=0.2)


@pytest_twisted.ensureDeferred
async def test_more_calls_than_connections_wait_for_the_pool_against_the_reference_backend() -> None:
    backend = DevBackend(Clock(), random.Random(7).randbytes, fixed_code="000000", debug=True)
    site = make_http_site(backend)
    connections = record_connections(site)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    client = BackendClient(reactor, f"http://127.0.0.1:{port.getHost().port}", timeout_s=10.0,
                           max_connections=4, max_waiting=200)
    try:
        challenge = backend.send_email_code("pool@example.com")
        session = backend.confirm_email_code(challenge, "000000", base64.b64encode(bytes(32)).decode())
        calls = [client.call_route(Route("GET", "profile"), b"", session.user_id, session.device_session_id,
                                   f"r-{i}") for i in range(100)]
        calls += [client.get_session(session.device_session_id) for _ in range(28)]
        stats = client.stats
        assert stats.open + stats.connecting <= 4 and stats.waiting >= 120
        answers = await gatherResults(calls)
        assert all(a.status == 200 for a in answers[:100])
        assert all(s is not None and s.user_id == session.user_id for s in answers[100:])
        assert len(connections) <= 4
        stats = client.stats
        assert (stats.in_use, stats.waiting) == (0, 0) and 1 <= stats.open <= 4
    finally:
        await client.close()
        await port.stopListening()
