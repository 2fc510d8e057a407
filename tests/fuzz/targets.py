"""The fuzz targets: every decoder gatewayd owns, each with the only exceptions it may raise.

A target takes one input (``bytes``) and must either return or raise one of
its ``allowed`` exception types. Anything else, an ``AssertionError`` from a
broken invariant included, is a crash. Targets are plain functions (no atheris
here), so a crash file replays with ``python -m tests.fuzz.fuzz --replay FILE``
or through ``tests/fuzz/test_fuzz.py``.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hpack
from google.protobuf.message import DecodeError
from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.web.resource import Resource
from twisted.web.server import Request

from gatewayd._proto.gateway.v1.gateway_pb2 import (
    ExecuteCommandRequest,
    ExecuteCommandResponse,
    GatewayEvent,
    RequestEnvelope,
    SubscribeEventsRequest,
)
from gatewayd.backend.rest import Session, parse_session
from gatewayd.client.keys import DeviceKey
from gatewayd.client.sign import sign_envelope
from gatewayd.config import Config, ConfigError, load
from gatewayd.health import HealthService
from gatewayd.http2.request_headers import parse_request_headers
from gatewayd.pipeline.context import SUBSCRIBE_MESSAGE_TYPE, RequestContext
from gatewayd.pipeline.envelope import EnvelopeStage
from gatewayd.pipeline.freshness import FreshnessStage
from gatewayd.pipeline.payload_hash import PayloadHashStage
from gatewayd.pipeline.signature import SignatureStage
from gatewayd.public.abuse import RequestKind
from gatewayd.public.backend_answers import answer_error, success_body
from gatewayd.public.validation import (
    PublicError,
    check_content_type,
    parse_confirm_email_code,
    parse_send_email_code,
    valid_email,
    valid_public_key,
)
from gatewayd.reflection import ReflectionService
from gatewayd.rpc.call import Call, ServerStream
from gatewayd.rpc.codes import Code
from gatewayd.rpc.compression import gunzip
from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.framing import (
    FLAG_COMPRESSED,
    FLAG_GRPC_WEB_TRAILERS,
    HEADER_SIZE,
    Base64StreamDecoder,
    FrameDecoder,
    decode_grpc_message,
    decode_single_frame,
    encode_base64_chunk,
    encode_grpc_message,
    split_grpc_web_body,
)
from gatewayd.rpc.methods import Method, MethodTable
from gatewayd.rpc.protocols import connect, grpcweb
from gatewayd.rpc.server import RpcApplication
from gatewayd.transport.cors import CorsPolicy
from gatewayd.transport.exchange import HeaderList
from gatewayd.transport.http1 import GatewaySite
from tests.fuzz.reader import Reader


@dataclass(frozen=True)
class Target:
    """One decoder under fuzzing: ``run(data)`` returns or raises one of ``allowed``."""

    name: str
    run: Callable[[bytes], None]
    allowed: tuple[type[BaseException], ...]


TARGETS: dict[str, Target] = {}


def target(name: str, *allowed: type[BaseException]) -> Callable[[Callable[[bytes], None]], Callable[[bytes], None]]:
    def register(run: Callable[[bytes], None]) -> Callable[[bytes], None]:
        TARGETS[name] = Target(name, run, allowed)
        return run

    return register


LIMITS = (0, 1, 5, 64, 4096, 4 * 1024 * 1024)


# --- gRPC framing (length-prefixed messages, gzip inside) --------------------------


def _feed(limit: int, pieces: list[bytes]) -> tuple[list[tuple[int, bytes]], int] | RpcError:
    decoder = FrameDecoder(limit)
    frames: list[tuple[int, bytes]] = []
    try:
        for piece in pieces:
            frames += decoder.feed(piece)
    except RpcError as e:
        return e
    return frames, decoder.pending


@target("grpc_frames", RpcError)
def grpc_frames(data: bytes) -> None:
    """FrameDecoder fed in chunks agrees with one feed; one frame per body; gzip payloads bounded."""
    r = Reader(data)
    limit = r.pick(LIMITS)
    pieces = r.chunked()
    body = b"".join(pieces)
    chunked, whole = _feed(limit, pieces), _feed(limit, [body])
    if isinstance(whole, RpcError):
        assert isinstance(chunked, RpcError) and chunked.code == whole.code == Code.RESOURCE_EXHAUSTED
    else:
        assert chunked == whole, (chunked, whole)
        frames, pending = whole
        assert pending == len(body) - sum(HEADER_SIZE + len(p) for _, p in frames)
        for flags, payload in frames:
            assert 0 <= flags <= 0xFF and len(payload) <= limit
            if flags & FLAG_COMPRESSED:
                try:
                    assert len(gunzip(payload, limit)) <= limit
                except RpcError as e:
                    assert e.code in (Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED), e
    decode_single_frame(body, limit)


# --- gRPC-Web: trailer frames and grpc-message, binary and text --------------------


@target("grpc_web", RpcError)
def grpc_web(data: bytes) -> None:
    """A whole gRPC-Web response body: its messages, and the status a client reads from its
    trailer frame (or from headers, for a trailers-only answer). Only the framing may raise."""
    r = Reader(data)
    limit = r.pick(LIMITS)
    http_status = r.pick((200, 200, 200, 400, 404, 429, 503))
    body = r.rest()
    text = body.decode("utf-8", "replace")
    assert decode_grpc_message(encode_grpc_message(text)) == text
    _check_status(grpcweb.headers_status(dict(_trailer_lines(body)), http_status))
    for flags, payload in FrameDecoder(limit).feed(body):
        if flags & FLAG_GRPC_WEB_TRAILERS:
            _check_status(grpcweb.decode_trailer_frame(payload))
    messages, trailers = split_grpc_web_body(body, limit)
    assert all(len(m) <= limit for m in messages)
    for name, value in trailers.items():
        assert name == name.strip().lower() and value == value.strip(), (name, value)


def _trailer_lines(body: bytes) -> list[tuple[str, str]]:
    """``body`` read loosely as ``name: value`` lines (headers of a trailers-only answer)."""
    pairs = []
    for line in body.decode("latin-1").split("\r\n"):
        name, _, value = line.partition(":")
        pairs.append((name.strip().lower(), value.strip()))
    return pairs


def _check_status(status: RpcError | None) -> None:
    """A decoded status is None (OK) or a well-formed error."""
    if status is None:
        return
    assert isinstance(status, RpcError) and isinstance(status.code, Code) and status.code is not Code.OK, status
    assert isinstance(status.message, str)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in status.metadata.items()), status.metadata
    for detail in status.details:
        assert isinstance(detail.type_url, str) and isinstance(detail.value, bytes)


@target("grpc_web_text", RpcError)
def grpc_web_text(data: bytes) -> None:
    """Base64StreamDecoder: arbitrary text raises only RpcError; flushes encoded apart decode back."""
    r = Reader(data)
    round_trip = r.flag()
    pieces = r.chunked()
    if not round_trip:
        decoder = Base64StreamDecoder()
        out = b"".join(decoder.feed(p) for p in pieces)
        assert len(out) <= len(b"".join(pieces))
        return
    # Each piece is one writer flush, base64-encoded (and padded) on its own; the reader
    # sees the concatenation cut at other places, with line breaks a proxy might add.
    text = b"".join(encode_base64_chunk(p) for p in pieces)
    text = b"\r\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    decoder = Base64StreamDecoder()
    cut = [text[i : i + 7] for i in range(0, len(text), 7)]
    assert b"".join(decoder.feed(c) for c in cut) == b"".join(pieces)
    assert decoder.pending == 0


# --- Connect: the end-stream message and unary error bodies (client side) ----------

_STATUSES = (200, 400, 401, 403, 404, 408, 409, 412, 413, 415, 429, 431, 499, 500, 501, 502, 503, 504, 505, 0, 999)


@target("connect_json")
def connect_json(data: bytes) -> None:
    """The end-stream message reports OK or a well-formed error; an error body always an error.
    Neither decoder raises, whatever the JSON (details included)."""
    r = Reader(data)
    end_stream = r.flag()
    status = r.pick(_STATUSES)
    body = r.rest()
    if end_stream:
        _check_status(connect.decode_end_stream(body))
        return
    error = connect.decode_unary_error(body, status, {"retry-after": "1", "content-type": "application/json"})
    assert error is not None and "content-type" not in error.metadata
    _check_status(error)


# --- HTTP/2 request headers (our one-pass validation in place of h2's) -------------

_PSEUDO_SEEDS: list[tuple[bytes, bytes]] = [
    (b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/grpc.health.v1.Health/Check"),
    (b":authority", b"gatewayd.test"),
]
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz")


@target("h2_request_headers", hpack.HPACKError, IndexError, TypeError, UnicodeDecodeError)
def h2_request_headers(data: bytes) -> None:
    """parse_request_headers never raises; what it accepts is a well-formed request (RFC 9113 8.2, 8.3).

    Half of the inputs are HPACK blocks decoded as h2 does (the exceptions allowed are the
    ones h2 turns into COMPRESSION_ERROR), half are header lists built field by field.
    """
    r = Reader(data)
    pairs: list[tuple[bytes, bytes]]
    if r.flag():
        decoder = hpack.Decoder()
        decoder.max_header_list_size = 16 * 1024
        pairs = [(bytes(n), bytes(v)) for n, v in decoder.decode(r.rest(), raw=True)]
    else:
        pairs = list(_PSEUDO_SEEDS) if r.flag() else []
        for _ in range(r.byte() % 24):
            pairs.insert(r.byte() % (len(pairs) + 1), (r.blob(40), r.blob(80)))
    parsed = parse_request_headers(pairs)
    if parsed is None:
        return
    method, path, headers = parsed
    assert method and path
    assert sum(1 for n, _ in pairs if n == b":method") == 1
    for name, value in headers.items():
        assert name and set(name.encode()) <= _TOKEN, name
        assert not set(value) & {"\x00", "\r", "\n"}, value
        assert name not in ("connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade")
    if "te" in headers:
        assert set(headers["te"].split(", ")) == {"trailers"}, headers["te"]


# --- one whole request through the RPC server (every protocol) ---------------------

CHECK = "/grpc.health.v1.Health/Check"
WATCH = "/grpc.health.v1.Health/Watch"
REFLECTION = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
ECHO = "/fuzz.v1.Fuzz/Echo"
STREAM = "/fuzz.v1.Fuzz/Stream"
_PATHS = (CHECK, WATCH, ECHO, STREAM, REFLECTION, "/no.Such/Method", "/grpc.health.v1.Health/", "/", "//x", "/a.b/c/d")
_CONTENT_TYPES = (
    "application/grpc", "application/grpc+proto", "application/grpc-web", "application/grpc-web+proto",
    "application/grpc-web-text", "application/grpc-web-text+proto", "application/connect+proto",
    "application/connect+json", "application/proto", "application/json", "application/grpc; charset=utf-8",
    "Application/JSON ; x=y", "text/plain", "application/grpcfoo", "",
)
_HEADER_NAMES = (
    "grpc-encoding", "content-encoding", "connect-content-encoding", "grpc-accept-encoding", "accept-encoding",
    "connect-accept-encoding", "grpc-timeout", "connect-timeout-ms", "origin", "access-control-request-headers",
    "connect-protocol-version", "x-grpc-web",
)
_HEADER_VALUES = ("gzip", "identity", "br", "gzip, br", "", "1S", "99999999H", "5m", "100", "0", "http://a.test")


class _Fuzz:
    """The methods behind the server target: Health, an echo, and a short stream."""

    def echo(self, call: Call, request: ExecuteCommandRequest) -> defer.Deferred[ExecuteCommandResponse]:
        return defer.succeed(ExecuteCommandResponse(payload_bytes=request.payload_bytes))

    def stream(self, call: Call, request: ExecuteCommandRequest, out: ServerStream) -> defer.Deferred[None]:
        for i in range(len(request.payload_bytes) % 4):
            out.send(GatewayEvent(event_id=str(i), payload_bytes=request.payload_bytes))
        if len(request.payload_bytes) % 2:
            return defer.fail(RpcError(Code.ABORTED, request.payload_bytes.decode("utf-8", "replace")))
        return defer.succeed(None)


class RecordingExchange:
    """An in-memory ``Exchange``: records the response and fails on any write after its end."""

    def __init__(self, method: str, path: str, headers: dict[str, str], http2: bool) -> None:
        self.method, self.path, self.headers, self.http2 = method, path, headers, http2
        self.peer = "192.0.2.1"
        self.status: int | None = None
        self.response_headers: HeaderList = []
        self.data = b""
        self.trailers: HeaderList | None = None
        self.ended = False
        self.was_reset = False
        self.buffered_bytes = 0

    def send_headers(self, status: int, headers: HeaderList, end_stream: bool = False) -> None:
        assert self.status is None and not self.ended, "headers twice"
        assert 100 <= status <= 599 or (status == 0 and not self.http2), status
        self.status, self.response_headers, self.ended = status, list(headers), end_stream

    def send_data(self, data: bytes, end_stream: bool = False) -> None:
        assert self.status is not None and not self.ended, "data outside the response"
        self.data += data
        self.ended = end_stream

    def send_trailers(self, trailers: HeaderList) -> None:
        assert self.status is not None and not self.ended, "trailers outside the response"
        self.trailers, self.ended = list(trailers), True

    def reset(self) -> None:
        self.was_reset = self.ended = True

    def on_drain(self, callback: Callable[[], None] | None) -> None:
        pass


_server: tuple[RpcApplication, task.Clock] | None = None


def _app() -> tuple[RpcApplication, task.Clock]:
    global _server
    if _server is None:
        clock = task.Clock()
        methods = MethodTable()
        fuzz = _Fuzz()
        for method in (
            *HealthService(["", "gateway.v1.Gateway"]).methods(),
            *ReflectionService(methods).methods(),
            Method(ECHO, ExecuteCommandRequest, ExecuteCommandResponse, unary=fuzz.echo),
            Method(STREAM, ExecuteCommandRequest, GatewayEvent, stream=fuzz.stream),
        ):
            methods.add(method)
        app = RpcApplication(methods, clock, CorsPolicy(["http://a.test"]), max_message_bytes=4096)
        _server = (app, clock)
    return _server


@target("rpc_request")
def rpc_request(data: bytes) -> None:
    """Any request (method, path, content type, codec headers, body in chunks) gets one whole answer.

    Nothing may raise: the transports call these handlers from their read loops.
    After the answer (and any deadline), no call is left active.
    """
    app, clock = _app()
    r = Reader(data)
    http2 = r.flag()
    method = r.pick(("POST", "POST", "POST", "GET", "OPTIONS", "PUT"))
    path = r.pick(_PATHS)
    headers = {"content-type": r.pick(_CONTENT_TYPES)}
    for _ in range(r.byte() % 4):
        name = r.pick(_HEADER_NAMES)
        headers[name] = r.pick(_HEADER_VALUES) if r.flag() else r.text(24)
    compress = r.flag()
    pieces = r.chunked()
    if compress and pieces:
        # A well-formed compressed message around the fuzzed bytes, so gzip's inside is reached.
        import gzip

        from gatewayd.rpc.framing import encode_frame

        pieces = [encode_frame(gzip.compress(b"".join(pieces), mtime=0), FLAG_COMPRESSED)]
        headers.setdefault("grpc-encoding", "gzip")
        headers.setdefault("connect-content-encoding", "gzip")
    exchange = RecordingExchange(method, path, headers, http2)
    handler = app.handler_for(exchange)
    if handler is None:
        return
    for piece in pieces:
        handler.body_received(piece)
    handler.body_complete()
    clock.advance(10 * 3600 * 24 * 365)  # every deadline passes
    streaming_open = path == WATCH and not exchange.ended
    assert exchange.ended or streaming_open, (exchange.status, exchange.response_headers)
    handler.aborted()
    assert not app.active, "a call outlived its request"
    if exchange.trailers is not None:
        status = dict(exchange.trailers).get(b"grpc-status", b"")
        assert status.isdigit(), exchange.trailers
    if exchange.status is not None and dict(exchange.response_headers).get(b"content-type") == b"application/json":
        document = json.loads(exchange.data)
        assert isinstance(document, dict)


# --- HTTP/1.1 request heads (twisted.web's parser with our strict rules on top) ------

_REFUSALS = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
)


class _Hello(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return b"hello"


@target("http1_request")
def http1_request(data: bytes) -> None:
    """Any bytes on an HTTP/1.1 connection, then every deadline: nothing raises; a refusal (400,
    408, 431) is exactly ours and the last thing written; and how the bytes were cut into reads
    changes nothing (the same answers whole as in the fuzzed pieces)."""
    pieces = Reader(data).chunked()
    chunked = _http1_exchange(pieces)
    whole = _http1_exchange([b"".join(pieces)])
    assert chunked == whole, (chunked[:300], whole[:300])
    for refusal in _REFUSALS:
        at = chunked.find(refusal)
        if at >= 0:
            assert chunked.endswith(refusal) and b"HTTP/1.1 " not in chunked[at + 9 :], chunked
    if chunked:
        assert chunked.startswith((b"HTTP/1.1 ", b"HTTP/1.0 ")), chunked[:100]


_DATE = re.compile(rb"\r\nDate: [^\r]*")


def _http1_exchange(reads: list[bytes]) -> bytes:
    """What a fresh channel writes for ``reads`` (0.5 s apart, then an hour), Date headers removed."""
    app, _ = _app()
    clock = task.Clock()
    site = GatewaySite(_Hello(), app, max_body_bytes=4096, max_header_bytes=2048, max_rpc_body_bytes=8192)
    site.reactor = clock  # type: ignore[assignment]
    address = IPv4Address("TCP", "192.0.2.1", 1234)
    channel = site.buildProtocol(address)
    channel.callLater = clock.callLater
    transport = StringTransport(peerAddress=address)
    channel.makeConnection(transport)
    for piece in reads:
        channel.dataReceived(piece)
        clock.advance(0.5)
    clock.advance(3600)
    channel.connectionLost(None)
    assert not app.active, "a call outlived its connection"
    return _DATE.sub(b"", transport.value())


# --- envelopes and the stages that read them ---------------------------------------

_DEVICE_KEY = DeviceKey.from_seed(bytes(range(32)))
_FRESHNESS_S = 300.0


def _structured_envelope(r: Reader, subscription: bool) -> RequestEnvelope:
    return RequestEnvelope(
        protocol_version=r.pick((1, 1, 1, 0, 2, 2**32 - 1)),
        device_session_id=r.pick(("dev-1", "", "a" * 129)) if r.flag() else r.text(140),
        request_id=r.pick(("req-1", "", "b" * 128)) if r.flag() else r.text(140),
        timestamp_ms=r.uint(8) - 2**63,
        message_type=(SUBSCRIBE_MESSAGE_TYPE if subscription else "user.profile.get") if r.flag() else r.text(140),
        payload_hash=r.blob(40),
    )


@target("envelope", DecodeError, RpcError)
def envelope(data: bytes) -> None:
    """A request message (protobuf bytes, or fields set one by one) through the envelope,
    payload-hash, signature and freshness stages: each passes or raises RpcError."""
    r = Reader(data)
    subscription = r.flag()
    clock = task.Clock()
    clock.advance(r.uint(6))
    signature = b""
    payload = b""
    if r.flag():
        env: RequestEnvelope | None = _structured_envelope(r, subscription)
        payload = r.blob() if not subscription else b""
        if r.flag():
            from gatewayd.signing import sha256

            env.payload_hash = sha256(payload)  # type: ignore[union-attr]
        signature = sign_envelope(_DEVICE_KEY, env) if r.flag() else r.blob(80)  # type: ignore[arg-type]
    else:
        raw = r.rest()
        if subscription:
            sub = SubscribeEventsRequest.FromString(raw)
            env, signature = (sub.envelope if sub.HasField("envelope") else None), sub.signature
        else:
            req = ExecuteCommandRequest.FromString(raw)
            env, signature, payload = (req.envelope if req.HasField("envelope") else None), req.signature, \
                req.payload_bytes
    call = Call(method="/gateway.v1.Gateway/ExecuteCommand", protocol="grpc", metadata={}, peer="192.0.2.1")
    ctx = RequestContext(call, env, payload, signature, subscription=subscription)
    EnvelopeStage().check(ctx)
    assert ctx.envelope is not None
    ctx.session = Session(ctx.envelope.device_session_id, "user-1", _DEVICE_KEY.public_key, "active")
    for stage in (PayloadHashStage(), SignatureStage(), FreshnessStage(clock, _FRESHNESS_S)):
        stage.check(ctx)


# --- the public REST bodies, and what the backend answers to them ------------------


@target("public_bodies", PublicError)
def public_bodies(data: bytes) -> None:
    """The public auth bodies: a PublicError (4xx) or a value that re-encodes to itself."""
    r = Reader(data)
    kind = r.byte() % 3
    body = r.rest()
    try:
        if kind == 0:
            sent = parse_send_email_code(body)
            assert valid_email(sent.email)
            assert parse_send_email_code(sent.as_json()) == sent
        elif kind == 1:
            confirm = parse_confirm_email_code(body)
            assert valid_public_key(confirm.client_public_key)
            assert parse_confirm_email_code(confirm.as_json()) == confirm
        else:
            check_content_type(body.decode("latin-1"))
    except PublicError as e:
        assert 400 <= e.status <= 499 and json.loads(e.body())["error"]["code"] == e.code
        raise


@target("backend_answers", ValueError, PublicError)
def backend_answers(data: bytes) -> None:
    """The backend's session record and auth answers: ValueError or PublicError, and a client
    never sees more than the contract's fields or a safe message."""
    r = Reader(data)
    kind = r.byte() % 3
    status = r.pick(_STATUSES)
    retry_after = r.text(12) if r.flag() else None
    body = r.rest()
    if kind == 0:
        session = parse_session(body)
        assert isinstance(session.client_public_key, bytes)
    elif kind == 1:
        which = r.pick((RequestKind.SEND_EMAIL_CODE, RequestKind.CONFIRM_EMAIL_CODE))
        out = json.loads(success_body(which, body))
        assert all(isinstance(v, str) for v in out.values())
    else:
        error = answer_error(status, body, retry_after)
        assert error.status in (503, status) and "\n" not in error.message
        assert error.retry_after_s is None or error.retry_after_s >= 0


# --- configuration files -----------------------------------------------------------

_ENV_NAMES = (
    "GATEWAYD_SERVER_LISTEN", "GATEWAYD_SERVER_MAX_MESSAGE_BYTES", "GATEWAYD_SERVER_IDLE_TIMEOUT_S",
    "GATEWAYD_SERVER_CORS_ORIGINS", "GATEWAYD_LIMITS_IP", "GATEWAYD_STORES_KIND", "GATEWAYD_ROUTES_X",
    "GATEWAYD_DEV_ENABLED", "GATEWAYD_KEYS_PUBLISHED", "GATEWAYD_", "GATEWAYD_SERVER_",
)
_scratch: Path | None = None


def _config_path() -> Path:
    global _scratch
    if _scratch is None:
        _scratch = Path(tempfile.mkdtemp(prefix="gatewayd-fuzz-")) / "gatewayd.toml"
    return _scratch


@target("config_toml", ConfigError)
def config_toml(data: bytes) -> None:
    """A config file (any bytes) plus GATEWAYD_* overrides: a ConfigError naming the problem, or a
    Config whose numbers are finite and not negative."""
    r = Reader(data)
    environ = {}
    for _ in range(r.byte() % 4):
        name = r.pick(_ENV_NAMES) if r.flag() else "GATEWAYD_" + r.text(24).upper()
        environ[name] = r.text(64)
    path = _config_path()
    path.write_bytes(r.rest())
    config = load(path, environ)
    assert isinstance(config, Config)
    _check_numbers(config)


def _check_numbers(value: Any) -> None:
    import dataclasses
    import math

    for f in dataclasses.fields(value):
        item = getattr(value, f.name)
        if dataclasses.is_dataclass(item):
            _check_numbers(item)
        elif isinstance(item, float):
            assert math.isfinite(item) and item >= 0, (f.name, item)
        elif isinstance(item, int) and not isinstance(item, bool):
            assert item >= 0, (f.name, item)


__all__ = ["TARGETS", "Target"]
