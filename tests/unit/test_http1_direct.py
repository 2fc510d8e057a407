"""RPC requests the HTTP/1.1 channel answers itself (gatewayd/transport/http1_direct.py).

Pinned against twisted.web's own path: the same request, once whole in one read
(answered directly) and once split across two reads (read by twisted.web and
answered through ``Http1Exchange``), must give the handler the same exchange and
the client the same bytes. Requests the filter must leave to twisted.web, the
strict channel's refusals for RPC-shaped requests, pipelining, loss, and the
send timeout, on a StringTransport and a Clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource

from gatewayd.transport import http1_direct
from gatewayd.transport.exchange import Exchange
from gatewayd.transport.http1 import GatewayHTTPChannel, GatewaySite, Http1Exchange
from gatewayd.transport.http1_direct import DirectExchange, read_rpc_request

PATH = b"/pkg.Svc/Call"
LOST = Failure(ConnectionDone())
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

Script = Callable[[Exchange], None]


def rpc(body: bytes = b"hello", extra: bytes = b"", path: bytes = PATH) -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/proto\r\n"
            + extra + b"Content-Length: %d\r\n\r\n" % len(body) + body)


class Handler:
    """Records what it is given; runs ``script`` on the exchange once the body is in (unless held)."""

    def __init__(self, exchange: Exchange, script: Script | None) -> None:
        self.exchange = exchange
        self.script = script
        self.body = b""
        self.completed = False
        self.aborted_count = 0

    def body_received(self, data: bytes) -> None:
        self.body += data

    def body_complete(self) -> None:
        self.completed = True
        if self.script is not None:
            self.script(self.exchange)

    def aborted(self) -> None:
        self.aborted_count += 1


class App:
    def __init__(self, script: Script | None) -> None:
        self.script = script
        self.handlers: list[Handler] = []

    def handler_for(self, exchange: Exchange) -> Handler | None:
        if not exchange.path.startswith("/pkg."):
            return None
        handler = Handler(exchange, self.script)
        self.handlers.append(handler)
        return handler


class Hello(Resource):
    isLeaf = True

    def render(self, request: Any) -> bytes:
        return b"web"


class Channel:
    def __init__(self, script: Script | None = None, send_timeout_s: float | None = None,
                 max_rpc_body_bytes: int = 1024, clock: Clock | None = None) -> None:
        self.clock = clock or Clock()
        self.app = App(script)
        site = GatewaySite(Hello(), self.app, max_body_bytes=64, max_header_bytes=4096,  # type: ignore[arg-type]
                           timeout=300.0, max_rpc_body_bytes=max_rpc_body_bytes, send_timeout_s=send_timeout_s)
        site.reactor = self.clock  # type: ignore[assignment]
        self.channel: GatewayHTTPChannel = site.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1234))
        self.channel.callLater = self.clock.callLater  # type: ignore[method-assign]
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.1", 1234))
        self.channel.makeConnection(self.transport)

    def send(self, *reads: bytes) -> bytes:
        """Each read in a reactor turn of its own; what has been written once they are done."""
        for data in reads:
            self.channel.dataReceived(data)
            self.clock.advance(0)  # the turn ends: held answers go out
        return self.transport.value()

    @property
    def exchange_types(self) -> list[type]:
        return [type(h.exchange) for h in self.app.handlers]


def both_ways(request: bytes, script: Script) -> tuple[Channel, Channel]:
    """The request whole in one read, and split in its head (twisted.web reads it)."""
    direct, split = Channel(script), Channel(script)
    direct.send(request)
    split.send(request[:20], request[20:])
    assert direct.exchange_types == [DirectExchange] and split.exchange_types == [Http1Exchange]
    return direct, split


def unary(exchange: Exchange) -> None:
    payload = b"\x08\x01"
    exchange.send_headers(200, [(b"content-type", b"application/proto"), (b"accept-encoding", b"gzip"),
                                (b"content-length", b"%d" % len(payload)), (b"access-control-allow-origin", b"*")])
    exchange.send_data(payload, end_stream=True)


def error(exchange: Exchange) -> None:
    body = b'{"code":"unauthenticated","message":"no"}'
    exchange.send_headers(401, [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                                (b"x-meta", b"a"), (b"vary", b"origin"), (b"x-meta", b"b\r\nInjected: yes")])
    exchange.send_data(body, end_stream=True)


def refusal_without_body(exchange: Exchange) -> None:
    exchange.send_headers(405, [(b"allow", b"POST")], end_stream=True)


def no_content_type(exchange: Exchange) -> None:  # twisted.web adds text/html: so must we
    exchange.send_headers(200, [(b"content-length", b"2")])
    exchange.send_data(b"ok", end_stream=True)


def streaming(exchange: Exchange) -> None:
    exchange.send_headers(200, [(b"content-type", b"application/connect+proto")])
    exchange.send_data(b"one")
    exchange.send_data(b"")
    exchange.send_data(b"two" * 100)
    exchange.send_data(b"end", end_stream=True)


def streaming_ended_by_trailers(exchange: Exchange) -> None:
    exchange.send_headers(200, [(b"content-type", b"application/grpc-web+proto")])
    exchange.send_data(b"\x80\x00\x00\x00\x00")
    exchange.send_trailers([(b"grpc-status", b"0")])


def no_body_code(exchange: Exchange) -> None:
    exchange.send_headers(204, [(b"x-a", b"1")])
    exchange.send_data(b"dropped", end_stream=True)


@pytest.mark.parametrize("script", [unary, error, refusal_without_body, no_content_type, streaming,
                                    streaming_ended_by_trailers, no_body_code])
def test_the_answer_is_byte_for_byte_what_twisted_web_writes(script: Script) -> None:
    direct, split = both_ways(rpc(), script)
    assert direct.transport.value() == split.transport.value()
    assert b"\r\nInjected" not in direct.transport.value()  # no header injection through a value


def test_the_handler_sees_the_same_exchange() -> None:
    extra = (b"X-Dup: 1\r\nx-dup:  2 \t\r\nAuthorization:\tBearer abc\r\nConnection: Keep-Alive\r\n"
             b"Empty:\r\nOrigin: https://a.example\r\n")
    direct, split = both_ways(rpc(b"\x00\r\n\nbody", extra), unary)
    d, s = direct.app.handlers[0], split.app.handlers[0]
    for name in ("method", "path", "peer", "http2"):
        assert getattr(d.exchange, name) == getattr(s.exchange, name)
    assert dict(d.exchange.headers) == dict(s.exchange.headers)
    assert list(d.exchange.headers) == list(s.exchange.headers)
    assert d.exchange.headers["x-dup"] == "1, 2"
    assert d.body == s.body == b"\x00\r\n\nbody" and d.completed and s.completed


def test_keep_alive_requests_one_after_another_are_each_answered_directly() -> None:
    c = Channel(unary)
    for _ in range(3):
        c.send(rpc())
    assert c.exchange_types == [DirectExchange] * 3
    assert c.transport.value().count(b"HTTP/1.1 200 OK\r\n") == 3 and not c.transport.disconnecting


@pytest.mark.parametrize("request_bytes", [
    rpc(extra=b"Transfer-Encoding: chunked\r\n"),  # CL + TE
    rpc(extra=b"Content-Length: 5\r\n"),  # two Content-Lengths
    rpc(extra=b"X-A: a\r\n b\r\n"),  # obs-fold
    rpc(extra=b"X-A: a\nX-B: b\r\n"),  # bare LF
    rpc(extra=b"X-A: a\rX-B: b\r\n"),  # bare CR
    rpc(extra=b"Host: other\r\n"),  # two Hosts
    rpc().replace(b"Host: 127.0.0.1:8080", b"Host: a@b"),
    rpc().replace(b"Host: 127.0.0.1:8080\r\n", b""),
    rpc().replace(b"Content-Length: 5", b"Content-Length: +5"),
    rpc().replace(b"Content-Length: 5", b"Content-Length: \xb2"),  # a digit to str.isdigit, not to HTTP
    rpc(extra=b"Bad Name: 1\r\n"),
    rpc(extra=b"X-A: a\x00b\r\n"),
])
def test_smuggling_shapes_to_an_rpc_path_are_still_400(request_bytes: bytes) -> None:
    assert read_rpc_request(request_bytes, 4096, 100, 1024) is None
    c = Channel(unary)
    assert c.send(request_bytes) == BAD_REQUEST
    assert c.app.handlers == []


@pytest.mark.parametrize("request_bytes", [
    rpc(extra=b"Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n"),
    rpc(extra=b"Expect: 100-continue\r\n"),
    rpc(extra=b"Connection: close\r\n"),
    rpc().replace(b"HTTP/1.1", b"HTTP/1.0"),
    rpc(path=PATH + b"?q=1"),
    rpc(path=b"/pkg.Svc/Call/extra"),
    rpc()[:-1],  # the body's last byte in a later read
    rpc() + rpc(),  # pipelined
    b"\r\n" + rpc(),  # the extra CRLF some clients send between requests
    rpc(b"x" * 1025),  # over the RPC body limit: answered in the RPC's protocol by the usual path
    rpc(extra=b"X-Big: " + b"x" * 4096 + b"\r\n"),  # over the header limit: 431 by the usual path
    rpc().replace(b"POST", b"post"),
])
def test_requests_the_filter_leaves_to_twisted_web(request_bytes: bytes) -> None:
    assert read_rpc_request(request_bytes, 4096, 100, 1024) is None


def test_a_head_read_before_gives_the_same_request_and_the_limits_still_apply() -> None:
    request = rpc(b"body", extra=b"X-A: 1\r\nX-A:  2 \t\r\n")
    first = read_rpc_request(request, 4096, 100, 1024)
    assert first is not None
    assert first.headers == {"host": "127.0.0.1:8080", "content-type": "application/proto", "x-a": "1, 2",
                             "content-length": "4"}
    first.headers["x-a"] = "changed"  # a handler's change stays its own
    again = read_rpc_request(request, 4096, 100, 1024)
    assert again is not None and (again.path, again.body) == ("/pkg.Svc/Call", b"body")
    assert again.headers["x-a"] == "1, 2" and again.headers is not first.headers
    assert read_rpc_request(request, 4096, 5, 1024) is None  # five fields: at the header limit
    assert read_rpc_request(request, 4096, 6, 1024) is not None
    assert read_rpc_request(request, 4096, 100, 3) is None  # over the body limit
    assert read_rpc_request(request[:-1], 4096, 100, 1024) is None  # the body not all there
    assert read_rpc_request(request + b"x", 4096, 100, 1024) is None  # bytes after it
    assert read_rpc_request(request, 100, 100, 1024) is None  # over the head limit


def test_heads_read_are_kept_within_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http1_direct, "_READ", {})
    monkeypatch.setattr(http1_direct, "_READ_KEPT", 4)
    for n in range(10):
        assert read_rpc_request(rpc(b"x" * n), 4096, 100, 1024) is not None
        assert len(http1_direct._READ) <= 4
    long_head = rpc(extra=b"X-Long: " + b"y" * 1100 + b"\r\n")
    assert read_rpc_request(long_head, 4096, 100, 1024) is not None
    assert all(len(key) <= 1024 for key in http1_direct._READ)


def test_a_request_that_is_no_rpc_is_served_by_the_resource_tree() -> None:
    c = Channel(unary)
    answer = c.send(rpc(path=b"/web.Page/x"))  # the app declines it
    assert answer.startswith(b"HTTP/1.1 200 OK") and answer.endswith(b"web") and c.app.handlers == []


def test_bytes_arriving_during_a_direct_answer_wait_for_it() -> None:
    c = Channel()  # handlers answer only when told
    c.send(rpc(b"first"))
    c.send(rpc(b"second")[:30])
    c.send(rpc(b"second")[30:] + rpc(b"third"))
    assert len(c.app.handlers) == 1 and c.transport.value() == b""
    for expected in (1, 2, 3):
        unary(c.app.handlers[expected - 1].exchange)
        assert len(c.app.handlers) == min(expected + 1, 3)
    assert [h.body for h in c.app.handlers] == [b"first", b"second", b"third"]
    c.clock.advance(0)  # the turn ends: the last answer, held, goes out
    assert c.transport.value().count(b"HTTP/1.1 200 OK\r\n") == 3


def test_a_unary_answer_leaves_when_the_turn_ends_with_the_other_connections_answers() -> None:
    first = Channel()
    second = Channel(clock=first.clock)  # one reactor for both connections
    first.channel.dataReceived(rpc(b"a"))
    second.channel.dataReceived(rpc(b"b"))
    unary(first.app.handlers[0].exchange)
    unary(second.app.handlers[0].exchange)
    assert first.transport.value() == second.transport.value() == b""  # held until the turn ends
    assert len(first.clock.getDelayedCalls()) == 3  # two idle timeouts and one for the turn's writes
    first.clock.advance(0)
    assert first.transport.value().startswith(b"HTTP/1.1 200 OK\r\n")
    assert second.transport.value() == first.transport.value()


def test_a_held_answer_goes_out_before_anything_read_after_it() -> None:
    c = Channel()
    c.channel.dataReceived(rpc(b"first"))
    unary(c.app.handlers[0].exchange)
    assert c.transport.value() == b""
    # The next request arrives in the same turn and is refused at once (a bad head): the held
    # answer is written first, the refusal after it.
    c.channel.dataReceived(b"GET / HTTP/1.1\r\nBad Name: 1\r\n\r\n")
    written = c.transport.value()
    assert written.startswith(b"HTTP/1.1 200 OK\r\n") and b"HTTP/1.1 400 Bad Request" in written
    assert written.index(b"HTTP/1.1 200 OK") < written.index(b"HTTP/1.1 400")
    c.clock.advance(0)
    assert c.transport.value() == written  # nothing was left to flush


def test_an_answer_with_a_pipelined_request_behind_it_is_written_at_once() -> None:
    c = Channel()
    c.channel.dataReceived(rpc(b"first"))
    c.channel.dataReceived(rpc(b"second"))  # waits in the channel while the first is answered
    unary(c.app.handlers[0].exchange)
    assert c.transport.value().count(b"HTTP/1.1 200 OK\r\n") == 1  # not held: the second may answer next


def test_the_idle_timeout_is_off_while_answering_and_back_after() -> None:
    c = Channel()
    c.send(rpc())
    c.clock.advance(1000)
    assert not c.transport.disconnecting
    unary(c.app.handlers[0].exchange)
    c.clock.advance(301)
    assert c.transport.disconnecting


def test_direct_calls_reset_the_one_idle_timeout_instead_of_replacing_it() -> None:
    c = Channel(unary)
    [idle] = c.clock.getDelayedCalls()
    c.clock.advance(200)
    c.send(rpc())
    c.clock.advance(200)  # 400 s since the connection opened, 200 s since the answer
    c.send(rpc())
    assert c.clock.getDelayedCalls() == [idle] and idle.active()  # the same DelayedCall, pushed back
    assert not c.transport.disconnecting
    c.clock.advance(299.9)
    assert not c.transport.disconnecting
    c.clock.advance(0.1)  # 300 s after the last answer
    assert c.transport.disconnecting
    assert c.transport.value().count(b"HTTP/1.1 200 OK\r\n") == 2


def test_a_unary_answer_never_registers_a_producer_a_streamed_one_does_once() -> None:
    c = Channel(unary)
    registered: list[object] = []
    register = c.channel.registerProducer
    c.channel.registerProducer = lambda p, s: (registered.append(p), register(p, s))  # type: ignore[method-assign]
    c.send(rpc())
    assert registered == [] and c.channel._requestProducer is None
    c.app.script = None
    c.send(rpc())
    exchange = c.app.handlers[1].exchange
    exchange.send_headers(200, [(b"content-type", b"application/connect+proto")])
    assert registered == []
    exchange.send_data(b"a")
    exchange.send_data(b"b")
    assert registered == [exchange] and c.channel._requestProducer is exchange
    exchange.send_data(b"", end_stream=True)
    assert c.channel._requestProducer is None


def test_a_stream_starting_on_a_full_socket_starts_paused() -> None:
    c = Channel()
    c.send(rpc())
    exchange = c.app.handlers[0].exchange
    drained: list[int] = []
    exchange.on_drain(lambda: drained.append(exchange.buffered_bytes))
    exchange.send_headers(200, [(b"content-type", b"application/connect+proto")])
    c.channel.pauseProducing()  # an earlier answer filled the socket before this body began
    exchange.send_data(b"x" * 10)
    assert exchange.buffered_bytes == 10
    c.channel.resumeProducing()
    assert drained == [0]


def test_losing_the_connection_mid_answer_tells_the_handler_once() -> None:
    c = Channel()
    c.send(rpc())
    handler = c.app.handlers[0]
    handler.exchange.send_headers(200, [(b"content-type", b"application/connect+proto")])
    c.channel.connectionLost(LOST)
    assert handler.aborted_count == 1
    handler.exchange.send_data(b"late", end_stream=True)  # ignored
    assert c.transport.value() == b""


def test_reset_aborts_the_connection_and_the_handler_hears_of_it() -> None:
    c = Channel()
    c.send(rpc())
    handler = c.app.handlers[0]
    handler.exchange.reset()
    assert c.transport.disconnected  # StringTransport: aborted
    c.channel.connectionLost(LOST)
    assert handler.aborted_count == 1


def test_a_full_socket_counts_buffered_bytes_and_drains() -> None:
    c = Channel()
    c.send(rpc())
    exchange = c.app.handlers[0].exchange
    drained: list[int] = []
    exchange.on_drain(lambda: drained.append(exchange.buffered_bytes))
    exchange.send_headers(200, [(b"content-type", b"application/connect+proto")])
    c.channel.pauseProducing()  # as the transport does when its buffer is full
    exchange.send_data(b"x" * 10)
    assert exchange.buffered_bytes == 10  # body bytes, as Http1Exchange counts them
    c.channel.resumeProducing()
    assert drained == [0]


@pytest.mark.parametrize("direct", [True, False])
def test_a_socket_that_does_not_drain_for_the_send_timeout_is_aborted(direct: bool) -> None:
    c = Channel(send_timeout_s=10.0)
    request = rpc()
    c.send(request) if direct else c.send(request[:20], request[20:])
    handler = c.app.handlers[0]
    handler.exchange.send_headers(200, [(b"content-type", b"application/connect+proto")])
    c.channel.pauseProducing()
    c.clock.advance(9)
    c.channel.resumeProducing()  # it took bytes: the stall starts over
    c.channel.pauseProducing()
    c.clock.advance(9.9)
    assert not c.transport.disconnecting
    c.clock.advance(0.1)
    assert c.transport.disconnected  # StringTransport: aborted
    c.channel.connectionLost(LOST)
    assert handler.aborted_count == 1
    assert c.clock.getDelayedCalls() == [] or all(not call.active() for call in c.clock.getDelayedCalls())
