"""gRPC-Web and Connect over HTTP/1.1 (raw sockets, exact bytes), and gRPC refused there."""

from __future__ import annotations

import base64
import gzip
import json

import pytest_twisted

from gatewayd._proto.gateway.v1 import gateway_pb2
from gatewayd.config import ServerConfig
from gatewayd.rpc.codes import Code
from gatewayd.rpc.framing import (
    FLAG_COMPRESSED,
    FLAG_CONNECT_END_STREAM,
    Base64StreamDecoder,
    FrameDecoder,
    decode_grpc_message,
    encode_frame,
    split_grpc_web_body,
)
from gatewayd.testing.harness import CHECK, ECHO, FAIL, ORIGIN, STREAM, Harness, check_request, echo_request
from gatewayd.testing.raw_http1 import http1_request
from gatewayd.transport.cors import CorsPolicy

GRPC_WEB = ("content-type", "application/grpc-web+proto")
JSON = ("content-type", "application/json")
PROTO = ("content-type", "application/proto")


def web_frames(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    return split_grpc_web_body(body, 1 << 24)


@pytest_twisted.ensureDeferred
async def test_grpc_over_http1_is_refused_with_a_status(harness: Harness) -> None:
    await harness.serve()
    response = await harness.http1(
        http1_request("POST", CHECK, encode_frame(check_request()), [("Content-Type", "application/grpc")])
    )
    assert response.status == 505
    assert response.headers["grpc-status"] == str(int(Code.UNIMPLEMENTED))
    assert "HTTP/2" in decode_grpc_message(response.headers["grpc-message"])
    await harness.assert_healthy()


@pytest_twisted.ensureDeferred
async def test_grpc_web_unary_streaming_and_text(harness: Harness) -> None:
    await harness.serve()
    response = await harness.http1(http1_request("POST", ECHO, encode_frame(echo_request(b"h1")), [GRPC_WEB]))
    assert response.status == 200 and response.headers["content-type"] == "application/grpc-web+proto"
    messages, trailers = web_frames(response.body)
    assert gateway_pb2.ExecuteCommandResponse.FromString(messages[0]).payload_bytes == b"h1"
    assert trailers == {"grpc-status": "0"}
    body = encode_frame(echo_request(b'{"count": 3}'))
    response = await harness.http1(http1_request("POST", STREAM, body, [GRPC_WEB]))
    messages, trailers = web_frames(response.body)
    assert len(messages) == 3 and trailers == {"grpc-status": "0"}
    text = base64.b64encode(encode_frame(echo_request(b'{"count": 2}')))
    response = await harness.http1(http1_request("POST", STREAM, text, [("content-type", "application/grpc-web-text")]))
    messages, trailers = web_frames(Base64StreamDecoder().feed(response.body))
    assert len(messages) == 2 and trailers == {"grpc-status": "0"}


@pytest_twisted.ensureDeferred
async def test_unknown_path_per_protocol(harness: Harness) -> None:
    await harness.serve()
    response = await harness.http1(http1_request("POST", "/no.Such/Thing", encode_frame(b""), [GRPC_WEB]))
    assert response.status == 200 and response.body == b""
    assert response.headers["grpc-status"] == "12"
    response = await harness.http1(http1_request("POST", "/no.Such/Thing", b"{}", [JSON]))
    assert response.status == 404
    assert json.loads(response.body)["code"] == "unimplemented"
    response = await harness.http1(http1_request("POST", CHECK, b"x", [("content-type", "text/plain")]))
    assert response.status == 415
    response = await harness.http1(http1_request("GET", CHECK, b"", [GRPC_WEB]))
    assert response.status == 405
    await harness.assert_healthy()


@pytest_twisted.ensureDeferred
async def test_malformed_and_oversized_messages(harness: Harness) -> None:
    await harness.serve(ServerConfig(max_message_bytes=1000))
    truncated = encode_frame(echo_request(b"abc"))[:-2]
    response = await harness.http1(http1_request("POST", ECHO, truncated, [GRPC_WEB]))
    assert response.headers["grpc-status"] == str(int(Code.INVALID_ARGUMENT))
    big = encode_frame(echo_request(b"x" * 2000))
    response = await harness.http1(http1_request("POST", ECHO, big, [GRPC_WEB]))
    assert response.headers["grpc-status"] == str(int(Code.RESOURCE_EXHAUSTED))
    response = await harness.http1(http1_request("POST", ECHO, b"\x00" * 2000, [PROTO]))
    assert response.status == 429 and json.loads(response.body)["code"] == "resource_exhausted"
    response = await harness.http1(http1_request("POST", CHECK, b'{"service":', [JSON]))
    assert response.status == 400 and json.loads(response.body)["code"] == "invalid_argument"
    for not_an_object in (b"[1, 2]", b'"gateway.v1.Gateway"', b"null", b"7"):
        response = await harness.http1(http1_request("POST", CHECK, not_an_object, [JSON]))
        assert response.status == 400 and json.loads(response.body)["code"] == "invalid_argument", not_an_object
    await harness.assert_healthy()


@pytest_twisted.ensureDeferred
async def test_deeply_nested_json_is_invalid_argument(harness: Harness) -> None:
    await harness.serve()
    response = await harness.http1(http1_request("POST", CHECK, b"[" * 50_000, [JSON]))
    assert response.status == 400 and json.loads(response.body)["code"] == "invalid_argument"
    await harness.assert_healthy()


@pytest_twisted.ensureDeferred
async def test_rpc_body_larger_than_web_limit_but_under_message_limit(harness: Harness) -> None:
    # The public REST surface caps bodies at 64 KiB; RPC messages are bounded by max_message_bytes (4 MiB).
    await harness.serve()
    payload = b"p" * 200_000
    response = await harness.http1(http1_request("POST", ECHO, echo_request(payload), [PROTO]))
    assert response.status == 200, response
    assert gateway_pb2.ExecuteCommandResponse.FromString(response.body).payload_bytes == payload
    text = base64.b64encode(encode_frame(echo_request(payload)))
    response = await harness.http1(http1_request("POST", ECHO, text, [("content-type", "application/grpc-web-text")]))
    messages, trailers = web_frames(Base64StreamDecoder().feed(response.body))
    assert trailers == {"grpc-status": "0"}
    assert gateway_pb2.ExecuteCommandResponse.FromString(messages[0]).payload_bytes == payload


@pytest_twisted.ensureDeferred
async def test_rpc_body_far_over_the_limit_is_resource_exhausted(harness: Harness) -> None:
    await harness.serve(ServerConfig(max_message_bytes=1000))
    response = await harness.http1(http1_request("POST", ECHO, b"\x00" * 300_000, [GRPC_WEB]))
    assert response.headers.get("grpc-status") == str(int(Code.RESOURCE_EXHAUSTED)), response
    response = await harness.http1(http1_request("POST", ECHO, b"\x00" * 300_000, [PROTO]))
    assert response.status == 429 and json.loads(response.body)["code"] == "resource_exhausted"
    await harness.assert_healthy()


@pytest_twisted.ensureDeferred
async def test_gzip_requests(harness: Harness) -> None:
    await harness.serve(ServerConfig(max_message_bytes=5000))
    payload = b"compressible " * 200
    body = encode_frame(gzip.compress(echo_request(payload)), FLAG_COMPRESSED)
    response = await harness.http1(http1_request(
        "POST", ECHO, body, [GRPC_WEB, ("grpc-encoding", "gzip"), ("grpc-accept-encoding", "gzip")]))
    frames = FrameDecoder(1 << 20).feed(response.body)
    assert response.headers["grpc-encoding"] == "gzip"
    assert frames[0][0] == FLAG_COMPRESSED
    assert gateway_pb2.ExecuteCommandResponse.FromString(gzip.decompress(frames[0][1])).payload_bytes == payload
    response = await harness.http1(http1_request(
        "POST", ECHO, gzip.compress(echo_request(payload)),
        [("content-type", "application/proto"), ("content-encoding", "gzip"), ("accept-encoding", "gzip")]))
    assert response.status == 200 and response.headers["content-encoding"] == "gzip"
    assert gateway_pb2.ExecuteCommandResponse.FromString(gzip.decompress(response.body)).payload_bytes == payload
    stream_body = encode_frame(gzip.compress(echo_request(b'{"count": 1}')), FLAG_COMPRESSED)
    response = await harness.http1(http1_request(
        "POST", STREAM, stream_body,
        [("content-type", "application/connect+proto"), ("connect-content-encoding", "gzip")]))
    assert [f for f, _ in FrameDecoder(1 << 20).feed(response.body)] == [0, FLAG_CONNECT_END_STREAM]
    bomb = gzip.compress(echo_request(b"\x00" * 1_000_000))
    response = await harness.http1(http1_request(
        "POST", ECHO, bomb, [("content-type", "application/proto"), ("content-encoding", "gzip")]))
    assert response.status == 429
    await harness.assert_healthy()


@pytest_twisted.ensureDeferred
async def test_grpc_message_percent_encoding_in_grpc_web_trailers(harness: Harness) -> None:
    await harness.serve()
    text = "tschüß 100%"
    response = await harness.http1(http1_request("POST", FAIL, encode_frame(echo_request(text.encode())), [GRPC_WEB]))
    assert response.headers["grpc-status"] == str(int(Code.FAILED_PRECONDITION))  # trailers-only
    assert response.headers["grpc-message"] == "tsch%C3%BC%C3%9F 100%25"
    assert decode_grpc_message(response.headers["grpc-message"]) == text


@pytest_twisted.ensureDeferred
async def test_cors_over_http1(harness: Harness) -> None:
    await harness.serve(cors=CorsPolicy([ORIGIN]))
    response = await harness.http1(http1_request("OPTIONS", ECHO, b"", [
        ("Origin", ORIGIN), ("Access-Control-Request-Method", "POST"),
        ("Access-Control-Request-Headers", "content-type,x-grpc-web,x-user-agent")]))
    assert response.status == 204
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["access-control-allow-headers"] == "content-type,x-grpc-web,x-user-agent"
    assert "POST" in response.headers["access-control-allow-methods"]
    response = await harness.http1(http1_request("OPTIONS", ECHO, b"", [("Origin", "http://other.test")]))
    assert response.status == 403 and "access-control-allow-origin" not in response.headers
    response = await harness.http1(http1_request("POST", ECHO, encode_frame(echo_request(b"")),
                                                 [GRPC_WEB, ("Origin", ORIGIN)]))
    assert response.headers["access-control-allow-origin"] == ORIGIN
    exposed = {h.strip() for h in response.headers["access-control-expose-headers"].split(",")}
    assert {"grpc-status", "grpc-message", "grpc-status-details-bin", "connect-content-encoding"} <= exposed
    response = await harness.http1(http1_request("POST", "/no.Such/X", b"{}",
                                                 [("content-type", "application/json"), ("Origin", ORIGIN)]))
    assert response.status == 404 and response.headers["access-control-allow-origin"] == ORIGIN


@pytest_twisted.ensureDeferred
async def test_oversized_request_headers_431(harness: Harness) -> None:
    await harness.serve(ServerConfig(max_header_list_bytes=4096))
    response = await harness.http1(http1_request("POST", ECHO, b"", [GRPC_WEB, ("x-big", "a" * 5000)]))
    assert response.status == 431
    many = [(f"x-h{i}", "v" * 60) for i in range(100)]
    response = await harness.http1(http1_request("POST", ECHO, b"", [GRPC_WEB, *many]))
    assert response.status == 431
    ok = await harness.http1(http1_request("POST", ECHO, encode_frame(echo_request(b"")),
                                           [GRPC_WEB, ("x-small", "a" * 1000)]))
    assert ok.status == 200
    await harness.assert_healthy()
