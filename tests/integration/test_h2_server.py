"""gRPC, gRPC-Web and Connect over HTTP/2 cleartext, from a raw client that sends exact frames.

The raw clients and the test server are ``gatewayd.testing``'s: ``RawH2Client`` sends
frames through ``h2`` and records every frame it receives, ``Harness`` (the ``harness``
fixture of ``conftest.py``) runs a server with scripted methods and closes everything.
"""

from __future__ import annotations

import base64
import gzip
import json

import pytest_twisted
from hyperframe.frame import (
    HeadersFrame,
)

from gatewayd._proto.gateway.v1 import gateway_pb2
from gatewayd._proto.grpc.health.v1 import health_pb2
from gatewayd.config import ServerConfig
from gatewayd.rpc.codes import Code
from gatewayd.rpc.framing import (
    FLAG_COMPRESSED,
    FLAG_CONNECT_END_STREAM,
    Base64StreamDecoder,
    FrameDecoder,
    decode_grpc_web_trailers,
    encode_frame,
)
from gatewayd.testing.harness import (
    CHECK,
    ECHO,
    FAIL,
    ORIGIN,
    SLOW,
    STREAM,
    Harness,
    check_request,
    echo_request,
)
from gatewayd.transport.cors import CorsPolicy

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
