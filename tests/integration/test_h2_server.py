"""gRPC, gRPC-Web and Connect over HTTP/2 cleartext, from a raw client that sends exact frames.

The first half of this module is the raw-client harness that test_abuse.py and
test_http1.py import: ``RawH2Client`` sends frames through ``h2`` and records
every frame it receives by parsing them itself (so it keeps reading after a
GOAWAY, when h2's own state machine would refuse), ``RawHttp1`` sends exact
bytes over HTTP/1.1, ``Harness`` runs a server and closes everything.
"""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import h2.config
import h2.connection
import h2.errors
import hpack
import pytest
import pytest_twisted
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    SettingsFrame,
    WindowUpdateFrame,
)
from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure

from gatewayd._proto.gateway.v1 import gateway_pb2
from gatewayd._proto.grpc.health.v1 import health_pb2
from gatewayd.config import ServerConfig
from gatewayd.health import HealthService
from gatewayd.rpc.call import Call, ServerStream
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.framing import (
    FLAG_COMPRESSED,
    FLAG_CONNECT_END_STREAM,
    Base64StreamDecoder,
    FrameDecoder,
    decode_grpc_message,
    decode_grpc_web_trailers,
    encode_frame,
)
from gatewayd.rpc.methods import Method
from gatewayd.testing.server import RunningServer, serve
from gatewayd.transport.cors import CorsPolicy

WAIT_S = 5.0
CHECK = "/grpc.health.v1.Health/Check"
ECHO = "/test.v1.Test/Echo"
SLOW = "/test.v1.Test/Slow"
STREAM = "/test.v1.Test/Stream"
FAIL = "/test.v1.Test/Fail"
ORIGIN = "http://example.test"


# --- test-only methods -------------------------------------------------------------


class TestMethods:
    """Echo, a slow unary the test finishes by hand, a streamer, and a failing method."""

    __test__ = False

    def __init__(self) -> None:
        self.slow: list[defer.Deferred[gateway_pb2.ExecuteCommandResponse]] = []
        self.cancelled: list[str] = []

    def echo(self, call: Call, request: gateway_pb2.ExecuteCommandRequest) -> defer.Deferred[Any]:
        return defer.succeed(gateway_pb2.ExecuteCommandResponse(payload_bytes=request.payload_bytes))

    def slow_call(self, call: Call, request: gateway_pb2.ExecuteCommandRequest) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred(lambda _: self.cancelled.append(call.method))
        self.slow.append(d)
        return d

    def stream(self, call: Call, request: gateway_pb2.ExecuteCommandRequest, out: ServerStream) -> defer.Deferred[None]:
        spec = json.loads(request.payload_bytes or b"{}")
        for i in range(spec.get("count", 3)):
            out.send(gateway_pb2.GatewayEvent(event_id=str(i), payload_bytes=b"x" * spec.get("size", 10)))
        if spec.get("hold"):
            return defer.Deferred(lambda _: self.cancelled.append(call.method))
        return defer.succeed(None)

    def fail(self, call: Call, request: gateway_pb2.ExecuteCommandRequest) -> defer.Deferred[Any]:
        return defer.fail(RpcError(Code.FAILED_PRECONDITION, request.payload_bytes.decode("utf-8")))

    def methods(self) -> list[Method]:
        req, resp, event = (gateway_pb2.ExecuteCommandRequest, gateway_pb2.ExecuteCommandResponse,
                            gateway_pb2.GatewayEvent)
        return [
            *HealthService(["", "gateway.v1.Gateway"]).methods(),
            Method(ECHO, req, resp, unary=self.echo),
            Method(SLOW, req, resp, unary=self.slow_call),
            Method(STREAM, req, event, stream=self.stream),
            Method(FAIL, req, resp, unary=self.fail),
        ]


def echo_request(payload: bytes) -> bytes:
    return gateway_pb2.ExecuteCommandRequest(payload_bytes=payload).SerializeToString()


def check_request(service: str = "") -> bytes:
    return health_pb2.HealthCheckRequest(service=service).SerializeToString()


# --- waiting without sleeping ------------------------------------------------------


class Waitable:
    """Deferreds that fire once a predicate over the recorded state holds (bounded)."""

    def __init__(self) -> None:
        self._waiters: list[tuple[Callable[[], bool], defer.Deferred[None], Any]] = []

    def wait(
        self, predicate: Callable[[], bool], what: str = "condition", timeout: float = WAIT_S
    ) -> defer.Deferred[None]:
        if predicate():
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        timer = reactor.callLater(timeout, self._expire, d, what)  # type: ignore[attr-defined]
        self._waiters.append((predicate, d, timer))
        return d

    def _expire(self, d: defer.Deferred[None], what: str) -> None:
        self._waiters = [w for w in self._waiters if w[1] is not d]
        d.errback(TimeoutError(f"timed out waiting for {what}; state: {self.describe()}"))

    def describe(self) -> str:
        return ""

    def _check_waiters(self) -> None:
        for waiter in list(self._waiters):
            predicate, d, timer = waiter
            if waiter in self._waiters and predicate():
                self._waiters.remove(waiter)
                timer.cancel()
                d.callback(None)


async def until(predicate: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Poll ``predicate`` (server-side state) every few milliseconds, for at most ``timeout``."""
    deadline = reactor.seconds() + timeout  # type: ignore[attr-defined]
    while not predicate():
        if reactor.seconds() > deadline:  # type: ignore[attr-defined]
            raise TimeoutError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.005, lambda: None)


# --- the raw HTTP/2 client ---------------------------------------------------------


@dataclass
class Response:
    """What came back on one stream."""

    stream_id: int
    headers: dict[str, str] | None = None
    trailers: dict[str, str] | None = None
    data: bytes = b""
    ended: bool = False
    reset: int | None = None

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None

    @property
    def status(self) -> int:
        assert self.headers is not None, self
        return int(self.headers[":status"])

    def grpc_status(self) -> int:
        """grpc-status from the trailers, or from the headers of a trailers-only response."""
        source = self.trailers if self.trailers is not None else self.headers
        assert source is not None and "grpc-status" in source, self
        return int(source["grpc-status"])

    def grpc_message(self) -> str:
        source = self.trailers if self.trailers is not None else self.headers
        assert source is not None
        return decode_grpc_message(source.get("grpc-message", ""))

    def messages(self) -> list[tuple[int, bytes]]:
        return FrameDecoder(1 << 30).feed(self.data)


def _headers_dict(pairs: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in pairs:
        n, v = name.decode(), value.decode("latin-1")
        out[n] = out[n] + ", " + v if n in out else v
    return out


class RawH2Client(Protocol, Waitable):
    """An HTTP/2 client that sends exact frames and records every frame the server sends.

    ``auto_window`` returns every received DATA byte to the windows at once;
    turn it off to model a client that stops reading. ``auto_ping_ack`` answers PINGs.
    """

    def __init__(self, auto_window: bool = True, auto_ping_ack: bool = True) -> None:
        Waitable.__init__(self)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.auto_window = auto_window
        self.auto_ping_ack = auto_ping_ack
        self.frames: list[Frame] = []
        self.responses: dict[int, Response] = {}
        self.goaways: list[tuple[int, int]] = []  # (last_stream_id, error_code)
        self.closed = False
        self._buffer = bytearray()
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = 1 << 24
        self._block: tuple[int, bytearray, bool] | None = None

    def describe(self) -> str:
        return f"goaways={self.goaways} closed={self.closed} responses={list(self.responses.values())!r:.600}"

    # -- sending ----------------------------------------------------------------------

    def connectionMade(self) -> None:
        self.h2.initiate_connection()
        self.flush()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def write_frame(self, *frames: Frame) -> None:
        assert self.transport is not None
        self.transport.write(b"".join(f.serialize() for f in frames))

    def open_stream(self, path: str, content_type: str | None = "application/grpc", body: bytes | None = None,
                    extra: Iterable[tuple[str, str]] = (), end_stream: bool = True, method: str = "POST") -> int:
        """Send HEADERS (and DATA frames of ``body``); return the stream id."""
        sid: int = self.h2.get_next_available_stream_id()
        headers = [(b":method", method.encode()), (b":scheme", b"http"), (b":path", path.encode()),
                   (b":authority", b"gatewayd.test")]
        if content_type is not None:
            headers.append((b"content-type", content_type.encode()))
        if content_type is not None and content_type.startswith("application/grpc") and "grpc-web" not in content_type:
            headers.append((b"te", b"trailers"))
        headers += [(k.encode(), v.encode()) for k, v in extra]
        self.responses[sid] = Response(sid)
        self.h2.send_headers(sid, headers, end_stream=end_stream and not body)
        self.flush()
        if body:
            self.send_body(sid, body, end_stream)
        return sid

    def send_body(self, sid: int, body: bytes, end_stream: bool = True) -> None:
        # Written by hand: h2 never learns the server's windows here (we do not feed it what we receive).
        frames = []
        for i in range(0, len(body), 16384):
            chunk = body[i : i + 16384]
            frame = DataFrame(sid, chunk)
            if end_stream and i + 16384 >= len(body):
                frame.flags.add("END_STREAM")
            frames.append(frame)
        self.write_frame(*frames)

    def reset_stream(self, sid: int, code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        self.write_frame(RstStreamFrame(sid, error_code=code))

    def window_update(self, sid: int, increment: int) -> None:
        self.write_frame(WindowUpdateFrame(0, window_increment=increment),
                         WindowUpdateFrame(sid, window_increment=increment))

    async def call(self, path: str, body: bytes | None, content_type: str = "application/grpc",
                   extra: Iterable[tuple[str, str]] = ()) -> Response:
        sid = self.open_stream(path, content_type, body, extra)
        await self.wait(lambda: self.responses[sid].done or self.closed, f"stream {sid}")
        return self.responses[sid]

    # -- receiving --------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 9:
            frame, length = Frame.parse_frame_header(memoryview(bytes(self._buffer[:9])))
            if len(self._buffer) < 9 + length:
                break
            frame.parse_body(memoryview(bytes(self._buffer[9 : 9 + length])))
            del self._buffer[: 9 + length]
            self.frames.append(frame)
            self._handle(frame)
        self._check_waiters()

    def _handle(self, frame: Frame) -> None:
        if isinstance(frame, SettingsFrame):
            if "ACK" not in frame.flags:
                self.write_frame(SettingsFrame(0, flags=["ACK"]))
        elif isinstance(frame, PingFrame):
            if "ACK" not in frame.flags and self.auto_ping_ack:
                self.write_frame(PingFrame(0, frame.opaque_data, flags=["ACK"]))
        elif isinstance(frame, HeadersFrame):
            self._block = (frame.stream_id, bytearray(frame.data), "END_STREAM" in frame.flags)
            if "END_HEADERS" in frame.flags:
                self._headers_done()
        elif isinstance(frame, ContinuationFrame):
            assert self._block is not None
            self._block[1].extend(frame.data)
            if "END_HEADERS" in frame.flags:
                self._headers_done()
        elif isinstance(frame, DataFrame):
            response = self.responses.setdefault(frame.stream_id, Response(frame.stream_id))
            response.data += frame.data
            if "END_STREAM" in frame.flags:
                response.ended = True
            size = frame.flow_controlled_length
            if self.auto_window and size:
                self.write_frame(WindowUpdateFrame(0, window_increment=size))
                if not response.ended:
                    self.write_frame(WindowUpdateFrame(frame.stream_id, window_increment=size))
        elif isinstance(frame, RstStreamFrame):
            self.responses.setdefault(frame.stream_id, Response(frame.stream_id)).reset = frame.error_code
        elif isinstance(frame, GoAwayFrame):
            self.goaways.append((frame.last_stream_id, frame.error_code))

    def _headers_done(self) -> None:
        assert self._block is not None
        sid, block, end_stream = self._block
        self._block = None
        headers = _headers_dict(self._decoder.decode(bytes(block), raw=True))
        response = self.responses.setdefault(sid, Response(sid))
        if response.headers is None:
            response.headers = headers
        else:
            response.trailers = headers
        response.ended = response.ended or end_stream

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed = True
        self._check_waiters()


# --- the raw HTTP/1.1 client -------------------------------------------------------


@dataclass
class Http1Response:
    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes = field(repr=False, default=b"")


def parse_http1_response(raw: bytes) -> Http1Response:
    """One HTTP/1.1 response (content-length, chunked, or read to close)."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        n = name.strip().lower()
        headers[n] = headers[n] + ", " + value.strip() if n in headers else value.strip()
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = bytearray()
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            if size == 0:
                break
            body += rest[:size]
            rest = rest[size + 2 :]
        return Http1Response(status, headers, bytes(body), raw)
    if "content-length" in headers:
        return Http1Response(status, headers, rest[: int(headers["content-length"])], raw)
    return Http1Response(status, headers, rest, raw)


class RawHttp1(Protocol, Waitable):
    """Sends exact bytes over HTTP/1.1 and collects everything until the server closes."""

    def __init__(self) -> None:
        Waitable.__init__(self)
        self.received = b""
        self.closed = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self._check_waiters()

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.closed = True
        self._check_waiters()

    def describe(self) -> str:
        return f"closed={self.closed} received={self.received[:300]!r}"


def http1_request(method: str, path: str, body: bytes = b"", headers: Iterable[tuple[str, str]] = ()) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: gatewayd.test", "Connection: close",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --- harness -----------------------------------------------------------------------


class Harness:
    """A server for one test, its raw clients, and their cleanup."""

    def __init__(self) -> None:
        self.methods = TestMethods()
        self.server: RunningServer | None = None
        self.clients: list[Protocol] = []

    async def serve(self, config: ServerConfig | None = None, cors: CorsPolicy | None = None) -> RunningServer:
        self.server = await serve(self.methods.methods(), config=config, cors=cors)
        return self.server

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    async def h2(self, **kwargs: Any) -> RawH2Client:
        client = RawH2Client(**kwargs)
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        self.clients.append(client)
        return client

    async def http1(self, raw: bytes) -> Http1Response:
        """Send ``raw`` on a new connection; parse what came back before the server closed."""
        client = RawHttp1()
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", self.port), client)
        self.clients.append(client)
        assert client.transport is not None
        client.transport.write(raw)
        await client.wait(lambda: client.closed, "HTTP/1.1 connection close")
        return parse_http1_response(client.received)

    async def assert_healthy(self) -> None:
        """A normal Health Check on a new connection succeeds: the process stays healthy."""
        client = await self.h2()
        response = await client.call(CHECK, encode_frame(check_request()))
        assert response.grpc_status() == 0, response
        [(_, payload)] = response.messages()
        assert health_pb2.HealthCheckResponse.FromString(payload).status == health_pb2.HealthCheckResponse.SERVING
        client.transport.loseConnection()  # type: ignore[union-attr]

    async def close(self) -> None:
        for client in self.clients:
            if client.transport is not None and not getattr(client, "closed", True):
                client.transport.abortConnection()  # type: ignore[attr-defined]
        if self.server is not None:
            await self.server.stop()
        for client in self.clients:
            await client.wait(lambda c=client: c.closed, "client close")  # type: ignore[attr-defined]
        # Connections the server still holds learn of the loss in the next reactor turns.
        server = self.server
        if server is not None:
            await until(lambda: not server.factory.connections, "server connections to close")
        for d in self.methods.slow:
            if not d.called:
                d.cancel()


@pytest.fixture
def harness() -> Iterable[Harness]:
    h = Harness()
    yield h
    pytest_twisted.blockon(defer.ensureDeferred(h.close()))


# --- gRPC --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_grpc_health_check_and_echo(harness: Harness) -> None:
    await harness.serve()
    client = await harness.h2()
    response = await client.call(CHECK, encode_frame(check_request("gateway.v1.Gateway")))
    assert response.status == 200
    assert response.headers is not None and response.headers["content-type"] == "application/grpc"
    assert response.trailers == {"grpc-status": "0"}
    [(flags, payload)] = response.messages()
    assert flags == 0 and health_pb2.HealthCheckResponse.FromString(payload).status == 1
    response = await client.call(ECHO, encode_frame(echo_request(b"\x00\xffhello")))
    [(_, payload)] = response.messages()
    assert gateway_pb2.ExecuteCommandResponse.FromString(payload).payload_bytes == b"\x00\xffhello"
    unknown = await client.call(CHECK, encode_frame(check_request("nope")))
    assert unknown.grpc_status() == Code.NOT_FOUND and unknown.trailers is None  # trailers-only
    assert unknown.grpc_message() == "unknown service 'nope'"


@pytest_twisted.ensureDeferred
async def test_grpc_unknown_path_trailers_only_unimplemented(harness: Harness) -> None:
    await harness.serve()
    client = await harness.h2()
    response = await client.call("/no.such.Service/Method", encode_frame(b""))
    assert response.status == 200 and response.ended and response.data == b""
    assert response.trailers is None  # one HEADERS frame with END_STREAM
    assert response.headers is not None and response.headers["grpc-status"] == "12"
    headers_frames = [f for f in client.frames if isinstance(f, HeadersFrame) and f.stream_id == response.stream_id]
    assert len(headers_frames) == 1 and "END_STREAM" in headers_frames[0].flags
    await harness.assert_healthy()


@pytest_twisted.ensureDeferred
async def test_wrong_content_type_on_rpc_path_is_415(harness: Harness) -> None:
    await harness.serve()
    client = await harness.h2()
    response = await client.call(CHECK, b"whatever", content_type="text/plain")
    assert response.status == 415
    response = await client.call(CHECK, None, content_type=None)  # type: ignore[arg-type]
    assert response.status == 415
    await harness.assert_healthy()


@pytest_twisted.ensureDeferred
async def test_grpc_truncated_frame_is_invalid_argument(harness: Harness) -> None:
    await harness.serve()
    client = await harness.h2()
    for body in (encode_frame(echo_request(b"abc"))[:-1], b"\x00\x00\x00", b""):
        response = await client.call(ECHO, body)
        assert response.grpc_status() == Code.INVALID_ARGUMENT, (body, response)
    response = await client.call(ECHO, encode_frame(b"\xff\xff\xff"))  # not a protobuf message
    assert response.grpc_status() == Code.INVALID_ARGUMENT
    await harness.assert_healthy()


@pytest_twisted.ensureDeferred
async def test_grpc_message_over_limit_is_resource_exhausted(harness: Harness) -> None:
    await harness.serve(ServerConfig(max_message_bytes=1000))
    client = await harness.h2()
    ok = await client.call(ECHO, encode_frame(echo_request(b"x" * 900)))
    assert ok.grpc_status() == 0
    big = await client.call(ECHO, encode_frame(echo_request(b"x" * 5000)))
    assert big.grpc_status() == Code.RESOURCE_EXHAUSTED
    # Only the header of a 2 GiB message: refused at once, without the server waiting for the body.
    sid = client.open_stream(ECHO, body=b"\x00\x7f\xff\xff\xff", end_stream=False)
    await client.wait(lambda: client.responses[sid].done, "refusal before the body")
    assert client.responses[sid].grpc_status() == Code.RESOURCE_EXHAUSTED
    await harness.assert_healthy()


@pytest_twisted.ensureDeferred
async def test_grpc_gzip_request_and_response(harness: Harness) -> None:
    await harness.serve(ServerConfig(max_message_bytes=4000))
    client = await harness.h2()
    payload = b"gzip me " * 300
    body = encode_frame(gzip.compress(echo_request(payload)), FLAG_COMPRESSED)
    response = await client.call(ECHO, body, extra=[("grpc-encoding", "gzip"), ("grpc-accept-encoding", "gzip")])
    assert response.grpc_status() == 0, response
    assert response.headers is not None and response.headers["grpc-encoding"] == "gzip"
    [(flags, packed)] = response.messages()
    assert flags == FLAG_COMPRESSED
    assert gateway_pb2.ExecuteCommandResponse.FromString(gzip.decompress(packed)).payload_bytes == payload
    # A gzip bomb: small on the wire, over the limit once inflated.
    bomb = encode_frame(gzip.compress(echo_request(b"\x00" * 100_000)), FLAG_COMPRESSED)
    response = await client.call(ECHO, bomb, extra=[("grpc-encoding", "gzip")])
    assert response.grpc_status() == Code.RESOURCE_EXHAUSTED
    response = await client.call(ECHO, encode_frame(b"garbage", FLAG_COMPRESSED), extra=[("grpc-encoding", "gzip")])
    assert response.grpc_status() == Code.INVALID_ARGUMENT
    response = await client.call(ECHO, encode_frame(b"x", FLAG_COMPRESSED), extra=[("grpc-encoding", "br")])
    assert response.grpc_status() == Code.UNIMPLEMENTED
    await harness.assert_healthy()


@pytest_twisted.ensureDeferred
async def test_grpc_message_percent_encoded_on_the_wire(harness: Harness) -> None:
    await harness.serve()
    client = await harness.h2()
    text = "50% off: naïve ✓\r\n"
    response = await client.call(FAIL, encode_frame(echo_request(text.encode())))
    assert response.headers is not None
    assert response.headers["grpc-status"] == str(int(Code.FAILED_PRECONDITION))
    assert response.headers["grpc-message"] == "50%25 off: na%C3%AFve %E2%9C%93%0D%0A"
    assert response.grpc_message() == text


@pytest_twisted.ensureDeferred
async def test_grpc_server_streaming_and_deadline(harness: Harness) -> None:
    await harness.serve()
    client = await harness.h2()
    response = await client.call(STREAM, encode_frame(echo_request(b'{"count": 4}')))
    assert response.grpc_status() == 0
    events = [gateway_pb2.GatewayEvent.FromString(p) for _, p in response.messages()]
    assert [e.event_id for e in events] == ["0", "1", "2", "3"]
    response = await client.call(SLOW, encode_frame(echo_request(b"")), extra=[("grpc-timeout", "50m")])
    assert response.grpc_status() == Code.DEADLINE_EXCEEDED
    assert harness.methods.cancelled == [SLOW]
    response = await client.call(SLOW, encode_frame(echo_request(b"")), extra=[("grpc-timeout", "bogus")])
    assert response.grpc_status() == Code.INVALID_ARGUMENT


# --- gRPC-Web over HTTP/2 ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_grpc_web_binary_and_text(harness: Harness) -> None:
    await harness.serve()
    client = await harness.h2()
    response = await client.call(ECHO, encode_frame(echo_request(b"web")), "application/grpc-web+proto")
    assert response.status == 200 and response.trailers is None
    [(f1, payload), (f2, trailer)] = response.messages()
    assert (f1, f2) == (0, 0x80)
    assert gateway_pb2.ExecuteCommandResponse.FromString(payload).payload_bytes == b"web"
    assert decode_grpc_web_trailers(trailer) == {"grpc-status": "0"}
    body = base64.b64encode(encode_frame(echo_request(b"text")))
    response = await client.call(ECHO, body, "application/grpc-web-text")
    decoded = Base64StreamDecoder().feed(response.data)
    [(f1, payload), (f2, trailer)] = FrameDecoder(10_000).feed(decoded)
    assert (f1, f2) == (0, 0x80) and decode_grpc_web_trailers(trailer) == {"grpc-status": "0"}
    assert gateway_pb2.ExecuteCommandResponse.FromString(payload).payload_bytes == b"text"
    # Streaming over text: each flush padded on its own, decoded as one body.
    response = await client.call(STREAM, base64.b64encode(encode_frame(echo_request(b'{"count": 3, "size": 1}'))),
                                 "application/grpc-web-text")
    frames = FrameDecoder(10_000).feed(Base64StreamDecoder().feed(response.data))
    assert [f for f, _ in frames] == [0, 0, 0, 0x80]


@pytest_twisted.ensureDeferred
async def test_grpc_web_unknown_path_and_errors(harness: Harness) -> None:
    await harness.serve(ServerConfig(max_message_bytes=100))
    client = await harness.h2()
    response = await client.call("/no.Such/Thing", encode_frame(b""), "application/grpc-web")
    assert response.status == 200 and response.data == b""
    assert response.headers is not None and response.headers["grpc-status"] == "12"
    response = await client.call(ECHO, encode_frame(echo_request(b"x" * 200)), "application/grpc-web")
    assert response.grpc_status() == Code.RESOURCE_EXHAUSTED
    response = await client.call(ECHO, b"!!!!", "application/grpc-web-text")
    assert response.grpc_status() == Code.INVALID_ARGUMENT
    response = await client.call(ECHO, encode_frame(gzip.compress(echo_request(b"zz")), FLAG_COMPRESSED),
                                 "application/grpc-web", extra=[("grpc-encoding", "gzip")])
    [(f1, payload), _] = response.messages()
    assert f1 == 0
    assert gateway_pb2.ExecuteCommandResponse.FromString(payload).payload_bytes == b"zz"
    await harness.assert_healthy()


# --- Connect over HTTP/2 -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_connect_unary_proto_json_and_errors(harness: Harness) -> None:
    await harness.serve(ServerConfig(max_message_bytes=1000))
    client = await harness.h2()
    response = await client.call(ECHO, echo_request(b"cp"), "application/proto")
    assert response.status == 200
    assert gateway_pb2.ExecuteCommandResponse.FromString(response.data).payload_bytes == b"cp"
    response = await client.call(CHECK, b'{"service": "gateway.v1.Gateway"}', "application/json")
    assert response.status == 200 and json.loads(response.data) == {"status": "SERVING"}
    response = await client.call("/no.Such/Thing", b"{}", "application/json")
    assert response.status == 404 and json.loads(response.data)["code"] == "unimplemented"
    response = await client.call(CHECK, b'{"service": ', "application/json")
    assert response.status == 400 and json.loads(response.data)["code"] == "invalid_argument"
    response = await client.call(ECHO, b"\xff" * 2000, "application/proto")
    assert response.status == 429 and json.loads(response.data)["code"] == "resource_exhausted"
    response = await client.call(FAIL, echo_request("100% ✓".encode()), "application/proto")
    assert response.status == 400
    assert json.loads(response.data) == {"code": "failed_precondition", "message": "100% ✓"}
    packed = gzip.compress(b'{"service": ""}')
    response = await client.call(CHECK, packed, "application/json", extra=[("content-encoding", "gzip")])
    assert response.status == 200 and json.loads(response.data) == {"status": "SERVING"}
    await harness.assert_healthy()


@pytest_twisted.ensureDeferred
async def test_connect_streaming(harness: Harness) -> None:
    await harness.serve()
    client = await harness.h2()
    body = encode_frame(b'{"payloadBytes": "eyJjb3VudCI6IDJ9"}')  # {"count": 2}
    response = await client.call(STREAM, body, "application/connect+json")
    frames = response.messages()
    assert [f for f, _ in frames] == [0, 0, FLAG_CONNECT_END_STREAM]
    assert json.loads(frames[0][1])["eventId"] == "0"
    assert frames[-1][1] == b"{}"
    packed = encode_frame(gzip.compress(echo_request(b'{"count": 1}')), FLAG_COMPRESSED)
    response = await client.call(STREAM, packed, "application/connect+proto",
                                 extra=[("connect-content-encoding", "gzip")])
    assert [f for f, _ in response.messages()] == [0, FLAG_CONNECT_END_STREAM]
    response = await client.call("/no.Such/Thing", encode_frame(b"{}"), "application/connect+json")
    assert response.status == 404 and json.loads(response.data)["code"] == "unimplemented"
    # A streaming method over Connect unary is the wrong media type.
    response = await client.call(STREAM, echo_request(b""), "application/proto")
    assert response.status == 415


# --- CORS ----------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_cors_preflight_and_exposed_headers(harness: Harness) -> None:
    await harness.serve(cors=CorsPolicy([ORIGIN]))
    client = await harness.h2()
    sid = client.open_stream(ECHO, None, extra=[("origin", ORIGIN), ("access-control-request-method", "POST"),
                                                ("access-control-request-headers", "content-type, x-grpc-web")],
                             method="OPTIONS")
    await client.wait(lambda: client.responses[sid].done)
    headers = client.responses[sid].headers
    assert headers is not None and headers[":status"] == "204"
    assert headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in headers["access-control-allow-methods"]
    assert headers["access-control-allow-headers"] == "content-type, x-grpc-web"
    sid = client.open_stream(ECHO, None, extra=[("origin", "http://evil.test")], method="OPTIONS")
    await client.wait(lambda: client.responses[sid].done)
    assert client.responses[sid].status == 403
    response = await client.call("/no.Such/Thing", encode_frame(b""), "application/grpc-web",
                                 extra=[("origin", ORIGIN)])
    assert response.headers is not None
    assert response.headers["access-control-allow-origin"] == ORIGIN
    exposed = {h.strip() for h in response.headers["access-control-expose-headers"].split(",")}
    assert {"grpc-status", "grpc-message", "grpc-status-details-bin"} <= exposed
    response = await client.call(ECHO, echo_request(b""), "application/proto", extra=[("origin", ORIGIN)])
    assert response.headers is not None and response.headers["access-control-allow-origin"] == ORIGIN
    response = await client.call(ECHO, echo_request(b""), "application/proto", extra=[("origin", "http://evil.test")])
    assert response.headers is not None and "access-control-allow-origin" not in response.headers
