"""The three codecs' bytes on a recording exchange: statuses, trailers, end-stream, errors, gzip."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Callable

import pytest

from gatewayd.rpc import compression
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.framing import (
    FLAG_COMPRESSED,
    FLAG_CONNECT_END_STREAM,
    Base64StreamDecoder,
    FrameDecoder,
    decode_grpc_message,
    encode_frame,
    split_grpc_web_body,
)
from gatewayd.rpc.protocols import protocol_for
from gatewayd.rpc.protocols.connect import ConnectStreaming, ConnectUnary, error_json
from gatewayd.rpc.protocols.grpc import Grpc, status_headers
from gatewayd.rpc.protocols.grpcweb import GrpcWeb, GrpcWebText
from gatewayd.rpc.wire import WireProtocol, rpc_path_shape
from gatewayd.transport.exchange import HeaderList


class RecordingExchange:
    """An ``Exchange`` that records what a codec writes."""

    http2 = True
    method = "POST"
    path = "/test.v1.Test/Echo"
    peer = "127.0.0.1"

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.status: int | None = None
        self.response_headers: HeaderList = []
        self.data = b""
        self.trailers: HeaderList | None = None
        self.ended = False
        self.buffered_bytes = 0

    def send_headers(self, status: int, headers: HeaderList, end_stream: bool = False) -> None:
        assert self.status is None and not self.ended
        self.status, self.response_headers = status, list(headers)
        self.ended = end_stream

    def send_data(self, data: bytes, end_stream: bool = False) -> None:
        assert self.status is not None and not self.ended
        self.data += data
        self.ended = end_stream

    def send_trailers(self, trailers: HeaderList) -> None:
        assert self.status is not None and not self.ended
        self.trailers, self.ended = list(trailers), True

    def header(self, name: bytes) -> bytes | None:
        return dict(self.response_headers).get(name)


BOOM = RpcError(Code.RESOURCE_EXHAUSTED, "100% full: ü\n", {"retry-after": "3"})


# --- gRPC ------------------------------------------------------------------------


def test_grpc_unary_then_trailers() -> None:
    ex = RecordingExchange()
    Grpc({}, "application/grpc").write_unary(ex, b"resp", [(b"x-extra", b"1")])
    assert ex.status == 200
    assert ex.header(b"content-type") == b"application/grpc"
    assert ex.header(b"x-extra") == b"1"
    assert ex.data == b"\x00\x00\x00\x00\x04resp"
    assert ex.trailers == [(b"grpc-status", b"0")]


def test_grpc_trailers_only_error() -> None:
    ex = RecordingExchange()
    Grpc({}, "application/grpc+proto").write_error(ex, BOOM, started=False, extra=[])
    assert ex.ended and ex.data == b"" and ex.trailers is None
    headers = dict(ex.response_headers)
    assert ex.status == 200
    assert headers[b"content-type"] == b"application/grpc+proto"
    assert headers[b"grpc-status"] == b"8"
    assert headers[b"grpc-message"] == b"100%25 full: %C3%BC%0A"
    assert decode_grpc_message(headers[b"grpc-message"].decode()) == BOOM.message
    assert headers[b"retry-after"] == b"3"


def test_grpc_error_after_stream_started_goes_in_trailers() -> None:
    ex = RecordingExchange()
    proto = Grpc({}, "application/grpc")
    proto.start_stream(ex, [])
    ex.send_data(proto.frame_message(b"m1"))
    proto.write_error(ex, RpcError(Code.UNAVAILABLE, "bye"), started=True, extra=[])
    assert ex.trailers == [(b"grpc-status", b"14"), (b"grpc-message", b"bye")]


def test_grpc_status_headers_without_message() -> None:
    assert status_headers(RpcError(Code.NOT_FOUND)) == [(b"grpc-status", b"5")]
    assert status_headers(None) == [(b"grpc-status", b"0")]


def test_grpc_response_gzip_only_when_accepted_and_large() -> None:
    big = b"z" * 5000
    plain = Grpc({}, "application/grpc")
    assert plain.frame_message(big) == encode_frame(big)
    gz = Grpc({"grpc-accept-encoding": "identity, gzip"}, "application/grpc")
    framed = gz.frame_message(big)
    [(flags, payload)] = FrameDecoder(10_000).feed(framed)
    assert flags == FLAG_COMPRESSED and gzip.decompress(payload) == big
    assert gz.frame_message(b"small") == encode_frame(b"small")
    ex = RecordingExchange()
    gz.start_stream(ex, [])
    assert ex.header(b"grpc-encoding") == b"gzip"


def test_grpc_request_encoding() -> None:
    assert Grpc({}, "application/grpc").request_encoding() is None
    assert Grpc({"grpc-encoding": "identity"}, "application/grpc").request_encoding() is None
    assert Grpc({"grpc-encoding": "gzip"}, "application/grpc").request_encoding() == "gzip"
    with pytest.raises(RpcError) as info:
        Grpc({"grpc-encoding": "snappy"}, "application/grpc").request_encoding()
    assert info.value.code is Code.UNIMPLEMENTED
    assert info.value.metadata == {"grpc-accept-encoding": "gzip"}


def test_compressed_flag_without_encoding_is_an_error() -> None:
    with pytest.raises(RpcError) as info:
        Grpc({}, "application/grpc").unwrap_frame(FLAG_COMPRESSED, gzip.compress(b"x"), 100)
    assert info.value.code is Code.INTERNAL
    proto = Grpc({"grpc-encoding": "gzip"}, "application/grpc")
    assert proto.unwrap_frame(FLAG_COMPRESSED, gzip.compress(b"x"), 100) == b"x"
    assert proto.unwrap_frame(0, b"raw", 100) == b"raw"


def test_grpc_timeout_header() -> None:
    assert Grpc({"grpc-timeout": "150m"}, "application/grpc").timeout() == pytest.approx(0.15)
    assert Grpc({}, "application/grpc").timeout() is None
    with pytest.raises(RpcError):
        Grpc({"grpc-timeout": "soon"}, "application/grpc").timeout()


# --- gRPC-Web --------------------------------------------------------------------


def _split_web_body(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    return split_grpc_web_body(body, 1 << 20)


def test_grpc_web_unary_body_ends_with_trailer_frame() -> None:
    ex = RecordingExchange()
    GrpcWeb({}, "application/grpc-web+proto").write_unary(ex, b"resp", [])
    assert ex.ended and ex.trailers is None
    assert ex.data == b"\x00\x00\x00\x00\x04resp" + b"\x80\x00\x00\x00\x10grpc-status: 0\r\n"
    assert ex.header(b"content-type") == b"application/grpc-web+proto"


def test_grpc_web_error_after_start_is_a_trailer_frame() -> None:
    ex = RecordingExchange()
    proto = GrpcWeb({}, "application/grpc-web")
    proto.start_stream(ex, [])
    ex.send_data(proto.frame_message(b"m"))
    proto.write_error(ex, BOOM, started=True, extra=[])
    messages, trailers = _split_web_body(ex.data)
    assert messages == [b"m"]
    assert trailers == {"grpc-status": "8", "grpc-message": "100%25 full: %C3%BC%0A", "retry-after": "3"}


def test_grpc_web_trailers_only_error() -> None:
    ex = RecordingExchange()
    GrpcWeb({}, "application/grpc-web").write_error(ex, RpcError(Code.UNIMPLEMENTED, "no"), False, [])
    assert ex.ended and ex.data == b""
    assert ex.header(b"grpc-status") == b"12"


def test_grpc_web_text_each_flush_base64_on_its_own() -> None:
    ex = RecordingExchange()
    proto = GrpcWebText({}, "application/grpc-web-text")
    proto.start_stream(ex, [])
    for message in (b"a", b"bc", b"def"):
        ex.send_data(proto.frame_message(message))
    proto.end_stream(ex)
    assert ex.data.count(b"=") >= 2  # padding mid-body
    decoder = Base64StreamDecoder()
    messages, trailers = _split_web_body(decoder.feed(ex.data))
    assert messages == [b"a", b"bc", b"def"] and trailers == {"grpc-status": "0"}


def test_grpc_web_text_unary() -> None:
    ex = RecordingExchange()
    GrpcWebText({}, "application/grpc-web-text+proto").write_unary(ex, b"xyz", [])
    body = Base64StreamDecoder().feed(ex.data)
    assert _split_web_body(body) == ([b"xyz"], {"grpc-status": "0"})
    assert base64.b64decode(ex.data[:12]) == b"\x00\x00\x00\x00\x03xyz"


# --- Connect ---------------------------------------------------------------------


def test_connect_error_json() -> None:
    assert error_json(RpcError(Code.INVALID_ARGUMENT, "bad")) == {"code": "invalid_argument", "message": "bad"}
    assert error_json(RpcError(Code.UNAVAILABLE)) == {"code": "unavailable"}


@pytest.mark.parametrize(
    ("code", "status"),
    [
        (Code.CANCELLED, 499), (Code.UNKNOWN, 500), (Code.INVALID_ARGUMENT, 400), (Code.DEADLINE_EXCEEDED, 504),
        (Code.NOT_FOUND, 404), (Code.ALREADY_EXISTS, 409), (Code.PERMISSION_DENIED, 403),
        (Code.RESOURCE_EXHAUSTED, 429), (Code.FAILED_PRECONDITION, 400), (Code.ABORTED, 409),
        (Code.OUT_OF_RANGE, 400), (Code.UNIMPLEMENTED, 501), (Code.INTERNAL, 500), (Code.UNAVAILABLE, 503),
        (Code.DATA_LOSS, 500), (Code.UNAUTHENTICATED, 401),
    ],
)
def test_connect_unary_error_status_and_body(code: Code, status: int) -> None:
    ex = RecordingExchange()
    ConnectUnary({}, "application/proto").write_error(ex, RpcError(code, "m"), False, [])
    assert ex.status == status
    assert ex.header(b"content-type") == b"application/json"
    assert json.loads(ex.data) == {"code": code.connect_name, "message": "m"}
    assert int(ex.header(b"content-length") or b"-1") == len(ex.data)


def test_connect_unary_error_metadata_as_headers() -> None:
    ex = RecordingExchange()
    ConnectUnary({}, "application/json").write_error(ex, BOOM, False, [])
    assert ex.status == 429 and ex.header(b"retry-after") == b"3"
    assert json.loads(ex.data)["message"] == BOOM.message  # JSON carries it unencoded


def test_connect_unary_success_and_gzip() -> None:
    ex = RecordingExchange()
    ConnectUnary({}, "application/proto").write_unary(ex, b"abc", [])
    assert ex.status == 200 and ex.data == b"abc" and ex.header(b"content-length") == b"3"
    big = b"q" * 4096
    ex = RecordingExchange()
    ConnectUnary({"accept-encoding": "gzip"}, "application/json").write_unary(ex, big, [])
    assert ex.header(b"content-encoding") == b"gzip"
    assert gzip.decompress(ex.data) == big
    assert int(ex.header(b"content-length") or b"0") == len(ex.data)


def test_connect_unary_request_encoding_and_timeout() -> None:
    proto = ConnectUnary({"content-encoding": "gzip", "connect-timeout-ms": "250"}, "application/proto")
    assert proto.request_encoding() == "gzip" and proto.timeout() == 0.25
    assert not proto.framed and not proto.json
    assert ConnectUnary({}, "application/json").json


def test_connect_streaming_end_stream_frame_bytes() -> None:
    ex = RecordingExchange()
    proto = ConnectStreaming({}, "application/connect+proto")
    proto.start_stream(ex, [])
    ex.send_data(proto.frame_message(b"m"))
    proto.end_stream(ex)
    assert ex.data == b"\x00\x00\x00\x00\x01m" + b"\x02\x00\x00\x00\x02{}"
    assert ex.header(b"content-type") == b"application/connect+proto"


def test_connect_streaming_error_end_stream() -> None:
    ex = RecordingExchange()
    ConnectStreaming({}, "application/connect+json").write_error(ex, BOOM, started=False, extra=[])
    assert ex.status == 200  # streaming errors travel in the end-stream message, not the HTTP status
    [(flags, payload)] = FrameDecoder(1000).feed(ex.data)
    assert flags == FLAG_CONNECT_END_STREAM
    assert json.loads(payload) == {
        "error": {"code": "resource_exhausted", "message": BOOM.message},
        "metadata": {"retry-after": ["3"]},
    }


def test_connect_streaming_unary_method() -> None:
    ex = RecordingExchange()
    ConnectStreaming({}, "application/connect+proto").write_unary(ex, b"r", [])
    frames = FrameDecoder(1000).feed(ex.data)
    assert frames == [(0, b"r"), (FLAG_CONNECT_END_STREAM, b"{}")]


# --- choosing a protocol ---------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/grpc", Grpc),
        ("application/grpc+proto", Grpc),
        ("Application/GRPC; charset=x", Grpc),
        ("application/grpc-web", GrpcWeb),
        ("application/grpc-web+proto", GrpcWeb),
        ("application/grpc-web-text", GrpcWebText),
        ("application/grpc-web-text+proto", GrpcWebText),
        ("application/connect+proto", ConnectStreaming),
        ("application/connect+json", ConnectStreaming),
        ("application/proto", ConnectUnary),
        ("application/json", ConnectUnary),
        ("text/plain", None),
        ("", None),
    ],
)
def test_protocol_for(content_type: str, expected: type[WireProtocol] | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    assert protocol_for("/a.B/C", headers) is expected


def test_connect_unary_needs_an_rpc_path() -> None:
    # application/json to a REST path is the public surface's, not an RPC.
    rest = "/api/v1/public/auth/send-email-code"
    assert protocol_for(rest, {"content-type": "application/json"}) is None
    assert rpc_path_shape("/grpc.health.v1.Health/Check")
    for path in ("/", "/a/b", "/a.b/", "//x", "/a.b/c/d", "a.b/c"):
        assert not rpc_path_shape(path)


# --- gzip ------------------------------------------------------------------------


def test_gunzip_limits() -> None:
    data = b"0123456789" * 100
    packed = gzip.compress(data)
    assert compression.gunzip(packed, len(data)) == data
    with pytest.raises(RpcError) as info:
        compression.gunzip(packed, len(data) - 1)
    assert info.value.code is Code.RESOURCE_EXHAUSTED


def test_gunzip_bomb_is_bounded() -> None:
    bomb = gzip.compress(b"\x00" * (16 * 1024 * 1024))
    assert len(bomb) < 100_000
    with pytest.raises(RpcError) as info:
        compression.gunzip(bomb, 1024)
    assert info.value.code is Code.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:-4],  # truncated trailer
        lambda b: b[:10],  # header only
        lambda b: b"",
        lambda b: b"not gzip at all",
        lambda b: b[:12] + bytes([b[12] ^ 0xFF]) + b[13:],  # corrupt deflate data
        lambda b: b[:-8] + b"\x00\x00\x00\x00" + b[-4:],  # wrong CRC
    ],
)
def test_gunzip_malformed(mangle: Callable[[bytes], bytes]) -> None:
    with pytest.raises(RpcError) as info:
        compression.gunzip(mangle(gzip.compress(b"hello gzip world" * 10)), 10_000)
    assert info.value.code is Code.INVALID_ARGUMENT


def test_check_encoding_and_accepts() -> None:
    assert compression.check_encoding(None) is None
    assert compression.check_encoding("gzip") == "gzip"
    with pytest.raises(RpcError):
        compression.check_encoding("br")
    assert compression.accepts_gzip("deflate, gzip;q=0.5")
    assert not compression.accepts_gzip("identity")
    assert not compression.accepts_gzip(None)
    assert gzip.decompress(compression.gzip_bytes(b"abc")) == b"abc"


@pytest.mark.parametrize(
    "content_type",
    ["application/grpcfoo", "application/grpc+json", "application/grpc-webx", "application/connect+xml",
     "application/connect+", "text/plain"],
)
def test_near_miss_content_types_are_no_protocol(content_type: str) -> None:
    assert protocol_for("/pkg.Service/Method", {"content-type": content_type}) is None


def test_gzip_with_data_after_the_stream_is_refused() -> None:
    import gzip

    from gatewayd.rpc.compression import gunzip

    with pytest.raises(RpcError) as refused:
        gunzip(gzip.compress(b"one") + gzip.compress(b"two"), 1024)
    assert refused.value.code is Code.INVALID_ARGUMENT
