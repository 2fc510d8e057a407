"""One status codec per protocol: what the server writes, the clients read back, byte for byte.

The server side writes through each protocol's ``WireProtocol.write_error`` onto a
recording exchange; the client side reads those bytes with the decoders that
``rpc.client``, ``gatewayd.client`` and ``gatewayd.testing`` use.
"""

from __future__ import annotations

import base64
import json

import pytest
from google.protobuf.any_pb2 import Any as AnyProto
from google.rpc.error_details_pb2 import RetryInfo
from google.rpc.status_pb2 import Status

from gatewayd.rpc import details
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.framing import FLAG_CONNECT_END_STREAM, FLAG_GRPC_WEB_TRAILERS, FrameDecoder
from gatewayd.rpc.protocols import BY_CONTENT_TYPE, connect, grpc, grpcweb
from gatewayd.rpc.wire import WireProtocol
from tests.unit.test_codecs import RecordingExchange

ERRORS = [
    RpcError(Code.RESOURCE_EXHAUSTED, "100% full: ü\n", {"retry-after": "3"}),
    RpcError(Code.CANCELLED, "call cancelled"),
    RpcError(Code.NOT_FOUND),
]


def _fields(pairs: list[tuple[bytes, bytes]]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in pairs}


def _written(proto: WireProtocol, error: RpcError, started: bool) -> RecordingExchange:
    """What ``proto`` writes to end a call with ``error``, before or after the response headers."""
    ex = RecordingExchange()
    if started:
        proto.start_stream(ex, [])
    proto.write_error(ex, error, started, [])
    return ex


def _same(decoded: RpcError | None, sent: RpcError) -> None:
    assert decoded is not None
    assert (decoded.code, decoded.message) == (sent.code, sent.message)
    assert decoded.metadata == sent.metadata


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.code.name)
@pytest.mark.parametrize("started", [False, True])
def test_grpc_status_round_trip(error: RpcError, started: bool) -> None:
    ex = _written(grpc.Grpc({}, "application/grpc"), error, started)
    fields = _fields(ex.trailers if started else ex.response_headers)  # type: ignore[arg-type]
    _same(grpc.decode_status(fields), error)


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.code.name)
@pytest.mark.parametrize("started", [False, True])
def test_grpc_web_status_round_trip(error: RpcError, started: bool) -> None:
    ex = _written(grpcweb.GrpcWeb({}, "application/grpc-web+proto"), error, started)
    head = _fields(ex.response_headers)
    assert grpcweb.status_in_headers(head, 200) is not started
    if not started:
        _same(grpcweb.headers_status(head, 200), error)
        return
    [(flags, payload)] = FrameDecoder(1 << 20).feed(ex.data)
    assert flags == FLAG_GRPC_WEB_TRAILERS
    _same(grpcweb.decode_trailer_frame(payload), error)


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.code.name)
def test_connect_unary_error_round_trip(error: RpcError) -> None:
    ex = RecordingExchange()
    connect.ConnectUnary({}, "application/proto").write_error(ex, error, False, [])
    assert ex.status is not None
    _same(connect.decode_unary_error(ex.data, ex.status, _fields(ex.response_headers)), error)


@pytest.mark.parametrize("error", ERRORS, ids=lambda e: e.code.name)
@pytest.mark.parametrize("started", [False, True])
def test_connect_end_stream_round_trip(error: RpcError, started: bool) -> None:
    ex = _written(connect.ConnectStreaming({}, "application/connect+proto"), error, started)
    assert ex.status == 200
    [(flags, payload)] = FrameDecoder(1 << 20).feed(ex.data)
    assert flags == FLAG_CONNECT_END_STREAM
    _same(connect.decode_end_stream(payload), error)


def test_ok_decodes_to_none_everywhere() -> None:
    assert grpc.decode_status({"grpc-status": "0"}) is None
    assert grpcweb.decode_trailer_frame(b"grpc-status: 0\r\n") is None
    assert connect.decode_end_stream(b"{}") is None


@pytest.mark.parametrize(
    ("fields", "http_status", "code", "message"),
    [
        ({}, 200, Code.INTERNAL, "server ended the stream without grpc-status"),
        ({"grpc-status": "x"}, 200, Code.UNKNOWN, "malformed grpc-status 'x'"),
        ({"grpc-status": "-1"}, 200, Code.UNKNOWN, "malformed grpc-status '-1'"),
        ({"grpc-status": "99", "grpc-message": "m"}, 200, Code.UNKNOWN, "grpc-status 99: m"),
        ({"grpc-status": "0"}, 503, Code.UNAVAILABLE, "HTTP status 503 without gRPC status"),
        ({}, 404, Code.UNIMPLEMENTED, "HTTP status 404 without gRPC status"),
    ],
)
def test_grpc_status_by_the_spec_rules(fields: dict[str, str], http_status: int, code: Code, message: str) -> None:
    status = grpc.decode_status(fields, http_status)
    assert status is not None and (status.code, status.message) == (code, message)


def test_grpc_status_metadata_leaves_out_the_status_and_http_fields() -> None:
    status = grpc.decode_status({":status": "200", "content-type": "application/grpc", "grpc-status": "8",
                                 "grpc-message": "m", "retry-after": "2", "x-trace": "t"})
    assert status is not None and status.metadata == {"retry-after": "2", "x-trace": "t"}


def test_grpc_web_headers_settle_the_call_when_they_carry_a_status_or_are_not_200() -> None:
    assert not grpcweb.status_in_headers({"content-type": "application/grpc-web"}, 200)
    status = grpcweb.headers_status({"grpc-status": "5"}, 505)  # the headers' own status wins
    assert status is not None and status.code == Code.NOT_FOUND
    status = grpcweb.headers_status({}, 401)
    assert status is not None and status.code == Code.UNAUTHENTICATED


def test_malformed_grpc_web_trailer_frame_is_internal() -> None:
    status = grpcweb.decode_trailer_frame(b"no colon here\r\n")
    assert status is not None and status.code == Code.INTERNAL


@pytest.mark.parametrize(
    ("body", "http_status", "code"),
    [
        (b'{"code": "unavailable", "message": "m"}', 503, Code.UNAVAILABLE),
        (b"not json", 429, Code.UNAVAILABLE),  # Connect's HTTP -> code table
        (b'{"code": 7}', 403, Code.PERMISSION_DENIED),
        (b'{"code": "no_such_code"}', 400, Code.UNKNOWN),
        (b"[[[[[[[[", 502, Code.UNAVAILABLE),
    ],
)
def test_connect_unary_error_decoding(body: bytes, http_status: int, code: Code) -> None:
    assert connect.decode_unary_error(body, http_status, {}).code == code


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"nope", Code.INTERNAL),
        (b"[]", Code.INTERNAL),
        (b'{"error": "string"}', Code.UNKNOWN),
        (b'{"error": {"code": "aborted"}, "metadata": {"a": ["1", "2"], "B": "3"}}', Code.ABORTED),
    ],
)
def test_connect_end_stream_decoding(payload: bytes, code: Code) -> None:
    status = connect.decode_end_stream(payload)
    assert status is not None and status.code == code


def test_connect_end_stream_metadata_values_are_joined() -> None:
    status = connect.decode_end_stream(json.dumps({"error": {"code": "aborted"},
                                                   "metadata": {"A": ["1", "2"], "b": "3"}}).encode())
    assert status is not None and status.metadata == {"a": "1,2", "b": "3"}


def test_registry_indexes_every_codec_of_every_protocol_module() -> None:
    codecs: list[type[WireProtocol]] = [*grpc.CODECS, *grpcweb.CODECS, *connect.CODECS]
    assert {ct: c for c in codecs for ct in c.content_types} == BY_CONTENT_TYPE
    assert len(BY_CONTENT_TYPE) == sum(len(c.content_types) for c in codecs)  # no content type claimed twice


def test_connect_spells_canceled_with_one_l_both_ways() -> None:
    assert Code.CANCELLED.connect_name == "canceled"
    assert Code.from_connect_name("canceled") is Code.CANCELLED
    ex = RecordingExchange()
    connect.ConnectUnary({}, "application/json").write_error(ex, RpcError(Code.CANCELLED, "c"), False, [])
    assert ex.status == 499 and json.loads(ex.data) == {"code": "canceled", "message": "c"}
    assert connect.decode_unary_error(b'{"code": "canceled"}', 499, {}).code is Code.CANCELLED


# --- error details (google.rpc) -------------------------------------------------------------

LIMITED = RpcError(Code.RESOURCE_EXHAUSTED, "rate limit exceeded", {"retry-after": "2"}, [details.retry_info(1.2)])


def _retry_delay(decoded: RpcError | None) -> float | None:
    assert decoded is not None and all(isinstance(d, AnyProto) for d in decoded.details)
    return details.retry_delay_s(decoded.details)


def test_grpc_details_bin_is_a_google_rpc_status_equal_to_the_status() -> None:
    fields = _fields(grpc.status_headers(LIMITED))
    value = fields["grpc-status-details-bin"]
    assert "=" not in value  # binary metadata: unpadded base64
    status = Status.FromString(base64.b64decode(value + "=" * (-len(value) % 4)))
    assert (status.code, status.message) == (Code.RESOURCE_EXHAUSTED, "rate limit exceeded")
    [packed] = status.details
    assert packed.type_url == "type.googleapis.com/google.rpc.RetryInfo"
    info = RetryInfo()
    assert packed.Unpack(info) and info.retry_delay.ToMilliseconds() == 1200
    assert _retry_delay(grpc.decode_status(fields)) == pytest.approx(1.2)


@pytest.mark.parametrize("started", [False, True])
def test_grpc_web_carries_details_in_headers_or_trailer_frame(started: bool) -> None:
    ex = _written(grpcweb.GrpcWeb({}, "application/grpc-web+proto"), LIMITED, started)
    if started:
        [(_, payload)] = FrameDecoder(1 << 20).feed(ex.data)
        decoded = grpcweb.decode_trailer_frame(payload)
    else:
        decoded = grpcweb.headers_status(_fields(ex.response_headers), 200)
    assert _retry_delay(decoded) == pytest.approx(1.2)


def test_connect_details_are_type_and_unpadded_base64_value() -> None:
    ex = RecordingExchange()
    connect.ConnectUnary({}, "application/json").write_error(ex, LIMITED, False, [])
    [detail] = json.loads(ex.data)["details"]
    assert detail["type"] == "google.rpc.RetryInfo"
    assert detail["value"] == details.b64encode_unpadded(details.retry_info(1.2).SerializeToString())
    assert "=" not in detail["value"]
    assert ex.status is not None
    assert _retry_delay(connect.decode_unary_error(ex.data, ex.status, {})) == pytest.approx(1.2)
    stream = RecordingExchange()
    connect.ConnectStreaming({}, "application/connect+json").write_error(stream, LIMITED, False, [])
    [(_, payload)] = FrameDecoder(1 << 20).feed(stream.data)
    assert json.loads(payload)["error"]["details"] == [detail]
    assert _retry_delay(connect.decode_end_stream(payload)) == pytest.approx(1.2)


def test_padded_base64_is_accepted_too() -> None:
    value = base64.b64encode(details.retry_info(0.5).SerializeToString()).decode()
    document = {"code": "resource_exhausted", "details": [{"type": "google.rpc.RetryInfo", "value": value}]}
    assert _retry_delay(connect.decode_error(document)) == pytest.approx(0.5)


@pytest.mark.parametrize("value", ["!!!", "AAAA", base64.b64encode(b"\xff\xff\xff").decode()])
def test_malformed_grpc_details_are_ignored_and_the_status_stands(value: str) -> None:
    status = grpc.decode_status({"grpc-status": "8", "grpc-message": "m", "grpc-status-details-bin": value})
    assert status is not None and (status.code, status.message, status.details) == (Code.RESOURCE_EXHAUSTED, "m", ())


def test_malformed_connect_details_are_skipped() -> None:
    good = {"type": "google.rpc.RetryInfo", "value": details.b64encode_unpadded(b"\x0a\x02\x08\x01")}
    entries = ["x", {"type": 1, "value": "AA"}, {"type": "t"}, {"type": "t", "value": "*"}, good]
    decoded = connect.decode_error({"code": "resource_exhausted", "details": entries})
    assert _retry_delay(decoded) == 1.0
    assert connect.decode_error({"code": "unknown", "details": "nope"}).details == ()  # type: ignore[union-attr]


def test_retry_info_never_rounds_down() -> None:
    assert details.retry_info(0.0001).retry_delay.ToMilliseconds() == 1
    assert details.retry_delay_s([details.retry_info(2.5)]) == 2.5  # unpacked messages too
    assert details.retry_delay_s([]) is None
