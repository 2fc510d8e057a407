"""The HTTP/1.1 channel's strict request heads and its deadlines, on a StringTransport and a Clock.

The same attacks against a real process are in tests/hostile/test_hostile_http1.py;
here each rule is pinned without sockets or wall-clock time.
"""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Request

from gatewayd.transport.http1 import GatewayHTTPChannel, GatewaySite

BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class Hello(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bytes] = []

    def render(self, request: Request) -> bytes:
        self.seen.append(request.content.read())
        return b"hello"


class NoRpc:
    def handler_for(self, exchange: object) -> None:
        return None


class Channel:
    """One channel of a ``GatewaySite`` on a StringTransport, its timers on a Clock."""

    def __init__(self, header_timeout_s: float | None = 10.0, body_timeout_s: float | None = 60.0) -> None:
        self.clock = Clock()
        self.resource = Hello()
        site = GatewaySite(self.resource, NoRpc(), max_body_bytes=4096, max_header_bytes=4096,  # type: ignore[arg-type]
                           header_timeout_s=header_timeout_s, body_timeout_s=body_timeout_s)
        site.reactor = self.clock  # type: ignore[assignment]
        self.channel: GatewayHTTPChannel = site.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1234))
        self.channel.callLater = self.clock.callLater  # type: ignore[method-assign]
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 1234))
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> bytes:
        self.channel.dataReceived(data)
        return self.transport.value()

    @property
    def closing(self) -> bool:
        return bool(self.transport.disconnecting or getattr(self.transport, "_writeDisconnected", False)
                    or self.channel._refused)


GET = b"GET / HTTP/1.1\r\n"


@pytest.mark.parametrize("head", [
    GET + b"Host: x\r\nX-A: a\r\n b\r\n\r\n",  # obs-fold
    GET + b" Host: x\r\n\r\n",  # whitespace before the first header
    GET + b"Host: x\nX-A: 1\r\n\r\n",  # bare LF in a complete line
    b"GET / HTTP/1.1\nHost: x\n\n",  # bare LF only: no CRLF ever comes
    GET + b"Host: x\rX-A: 1\r\n\r\n",  # bare CR
    GET + b"Host: x\r\nTransfer-Encoding: identity\r\nContent-Length: 1\r\n\r\nx",
    GET + b"Host: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    GET + b"\r\n",  # HTTP/1.1 without Host
    GET + b"Host: a\r\nHost: b\r\n\r\n",
    GET + b"Host: a@b\r\n\r\n",
])
def test_smuggling_shaped_heads_are_400_and_the_request_never_runs(head: bytes) -> None:
    c = Channel()
    assert c.send(head) == BAD_REQUEST
    assert c.closing and c.resource.seen == []
    assert c.send(GET + b"Host: x\r\n\r\n") == BAD_REQUEST  # nothing more is read


@pytest.mark.parametrize("head", [
    GET + b"Host: x\r\n\r\n",
    GET + b"Host: [::1]:8080\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",  # HTTP/1.0 needs no Host
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
])
def test_well_formed_heads_are_served(head: bytes) -> None:
    c = Channel()
    assert c.send(head).split(b"\r\n")[0].endswith(b"200 OK")
    assert len(c.resource.seen) == 1


def test_pipelined_requests_with_line_feeds_in_their_bodies_are_served() -> None:
    # Bytes after a request are replayed into the parser once its response is done; the bare-LF
    # rule is for request heads, never for the bodies that come along in the same read.
    c = Channel()
    one = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n\n\r\rx"
    c.send(one * 3)
    assert c.transport.value().count(b"HTTP/1.1 200 OK") == 3 and not c.closing
    assert c.resource.seen == [b"\n\r\rx"] * 3


def test_a_head_split_anywhere_is_fine() -> None:
    c = Channel()
    raw = GET + b"Host: x\r\nX-A: 1\r\n\r\n"
    for i in range(len(raw)):
        c.send(raw[i : i + 1])  # a CR at the end of one read, its LF in the next
    assert c.transport.value().startswith(b"HTTP/1.1 200 OK")


def test_trickled_head_gets_408_at_its_deadline_however_often_bytes_come() -> None:
    c = Channel(header_timeout_s=10.0)
    for byte in GET + b"Host: x\r\n":
        c.send(bytes([byte]))
        c.clock.advance(0.5)  # each read would reset an idle timeout
        if c.closing:
            break
    assert c.transport.value() == REQUEST_TIMEOUT
    assert 10.0 <= c.clock.seconds() < 10.5


def test_a_pipelined_head_begun_in_the_same_read_has_its_deadline_too() -> None:
    c = Channel(header_timeout_s=10.0)
    c.send(GET + b"Host: x\r\n\r\n" + GET + b"Host: x\r\n")  # one whole request, half of the next
    c.clock.advance(9.9)
    c.send(b"X-Slow: 1\r\n")
    assert not c.closing
    c.clock.advance(0.1)
    assert c.transport.value().endswith(REQUEST_TIMEOUT) and len(c.resource.seen) == 1


def test_trickled_body_gets_408_at_its_deadline() -> None:
    c = Channel(body_timeout_s=5.0)
    c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    for _ in range(100):
        c.send(b"x")
        c.clock.advance(0.25)
        if c.closing:
            break
    assert c.transport.value() == REQUEST_TIMEOUT and c.resource.seen == []
    assert c.clock.seconds() == 5.0


def test_deadlines_run_per_request_not_per_connection() -> None:
    c = Channel(header_timeout_s=1.0, body_timeout_s=1.0)
    for _ in range(5):
        c.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n")
        c.clock.advance(0.9)
        c.send(b"ok")
        c.clock.advance(5.0)  # idle between requests: no head has started, nothing to time
    assert c.resource.seen == [b"ok"] * 5 and not c.closing
    assert not c.clock.getDelayedCalls() or all(call.getTime() > c.clock.seconds() + 100
                                                  for call in c.clock.getDelayedCalls())
