"""The checked-in starting inputs of each fuzz target: ``python -m tests.fuzz.seeds`` rewrites them.

Each seed is a well-formed input laid out the way its target's ``Reader`` reads
it (choice bytes first, then the body), so fuzzing starts from the paths real
clients take instead of having to discover a valid frame or signature first.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import hpack

from gatewayd._proto.gateway.v1.gateway_pb2 import ExecuteCommandRequest
from gatewayd._proto.grpc.health.v1.health_pb2 import HealthCheckRequest
from gatewayd.client.sign import sign_envelope
from gatewayd.reflection import VERSIONS
from gatewayd.rpc import details
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.framing import FLAG_COMPRESSED, encode_frame, encode_grpc_web_trailers
from gatewayd.rpc.protocols import connect
from gatewayd.signing import sha256
from tests.fuzz import targets
from tests.fuzz.fuzz import CORPUS, ROOT

NO_CUTS = b"\x00"  # Reader.chunked: zero size bytes, the body in one piece


def _index(options: tuple[object, ...], value: object) -> bytes:
    return bytes([options.index(value)])


def _blob(data: bytes) -> bytes:
    assert len(data) < 256
    return bytes([len(data)]) + data


def seeds() -> dict[str, dict[str, bytes]]:
    limit_4k = _index(targets.LIMITS, 4096)
    message = encode_frame(b"\x0a\x05hello")
    trailers = encode_grpc_web_trailers([("grpc-status", "3"), ("grpc-message", "bad%20thing")])
    check = HealthCheckRequest(service="gateway.v1.Gateway").SerializeToString()
    echo = ExecuteCommandRequest(payload_bytes=b"abc").SerializeToString()
    envelope = targets.RequestEnvelope(protocol_version=1, device_session_id="dev-1", request_id="req-1",
                                       timestamp_ms=1_700_000_000_000, message_type="user.profile.get",
                                       payload_hash=sha256(b"{}"))
    signed = ExecuteCommandRequest(envelope=envelope, payload_bytes=b"{}",
                                   signature=sign_envelope(targets._DEVICE_KEY, envelope)).SerializeToString()
    now = (1_700_000_000).to_bytes(6, "big")  # the envelope target's clock, in seconds
    retry = details.encode_status(8, "slow down", [details.retry_info(2.0)])
    request_headers = hpack.Encoder().encode(
        [*targets._PSEUDO_SEEDS, (b"content-type", b"application/grpc"), (b"te", b"trailers"),
         (b"grpc-timeout", b"5S"), (b"x-custom", b"one"), (b"x-custom", b"two")])

    def rpc(http2: bool, content_type: str, path: str, body: bytes, extra: list[tuple[str, str]] = ()) -> bytes:
        out = bytes([http2]) + b"\x00" + _index(targets._PATHS, path) + _index(targets._CONTENT_TYPES, content_type)
        out += bytes([len(extra)])
        for name, value in extra:
            out += _index(targets._HEADER_NAMES, name) + b"\x01" + _index(targets._HEADER_VALUES, value)
        return out + b"\x00" + NO_CUTS + body

    import base64

    return {
        "grpc_frames": {
            "one": limit_4k + NO_CUTS + message,
            "two-chunked": limit_4k + b"\x02\x03\x04" + message + message,
            "gzip": limit_4k + NO_CUTS + encode_frame(gzip.compress(b"x" * 100, mtime=0), FLAG_COMPRESSED),
        },
        "grpc_web": {
            "messages-and-trailers": limit_4k + b"\x00" + message + trailers,
            "status-details": limit_4k + b"\x00" + message + encode_grpc_web_trailers(
                [("grpc-status", "8"), ("grpc-message", "slow down"), ("retry-after", "2"),
                 ("grpc-status-details-bin", details.b64encode_unpadded(retry))]),
        },
        "grpc_web_text": {
            "text": b"\x00" + NO_CUTS + base64.b64encode(message) + base64.b64encode(trailers),
            "round-trip": b"\x01\x02\x05\x07" + message + trailers,
        },
        "connect_json": {
            "end-ok": b"\x01\x00{}",
            "end-error": b"\x01\x00" + json.dumps({"error": {"code": "unavailable", "message": "bye"},
                                                   "metadata": {"retry-after": ["3"]}}).encode(),
            "unary-error": b"\x00\x04" + json.dumps({"code": "not_found", "message": "no such"}).encode(),
            "end-error-details": b"\x01\x00" + json.dumps({"error": connect.error_json(
                RpcError(Code.RESOURCE_EXHAUSTED, "slow down", details=[details.retry_info(2.0)]))}).encode(),
        },
        "h2_request_headers": {
            "hpack": b"\x01" + request_headers,
            "fields": b"\x00\x01\x02\x04" + _blob(b"content-type") + _blob(b"application/grpc")
            + b"\x05" + _blob(b"te") + _blob(b"trailers"),
        },
        "rpc_request": {
            "grpc-check": rpc(True, "application/grpc", targets.CHECK, encode_frame(check),
                              [("grpc-timeout", "1S")]),
            "grpc-web-echo": rpc(False, "application/grpc-web+proto", targets.ECHO, encode_frame(echo)),
            "grpc-web-text-stream": rpc(False, "application/grpc-web-text", targets.STREAM,
                                        base64.b64encode(encode_frame(echo))),
            "connect-unary-json": rpc(False, "application/json", targets.CHECK, b'{"service": ""}',
                                      [("connect-timeout-ms", "100")]),
            "connect-unary-gzip": rpc(False, "application/proto", targets.ECHO, gzip.compress(echo, mtime=0),
                                      [("content-encoding", "gzip")]),
            "grpc-reflection": rpc(True, "application/grpc", targets.REFLECTION,
                                   encode_frame(VERSIONS[0].request(list_services="*").SerializeToString())),
            "connect-stream-json": rpc(True, "application/connect+json", targets.STREAM,
                                       encode_frame(b'{"payloadBytes": "YWJj"}')),
        },
        "http1_request": {
            "rest": NO_CUTS + b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n",
            "grpc-web-pipelined": b"\x02\x40\x07" + (b"POST " + targets.CHECK.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/grpc-web+proto\r\nContent-Length: %d\r\n\r\n" % len(encode_frame(check))
                + encode_frame(check)) * 2,
            "chunked": NO_CUTS + b"POST /api HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n0\r\n\r\n",
            # Whole in one read, answered by the channel itself; cut at byte 48, read by twisted.web.
            "connect-unary": b"\x01\x30" + b"POST " + targets.CHECK.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/proto\r\nContent-Length: %d\r\n\r\n" % len(check) + check,
            "connect-stream": b"\x01\x30" + b"POST " + targets.STREAM.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/connect+proto\r\nContent-Length: 5\r\n\r\n" + encode_frame(b""),
        },
        "envelope": {
            "protobuf": b"\x00" + now + b"\x00" + signed,
            "fields-signed": b"\x00" + now + b"\x01" + b"\x00" + b"\x01\x00" + b"\x01\x00"
            + (2**63 + 1_700_000_000_000).to_bytes(8, "big") + b"\x01" + b"\x00" + _blob(b"{}") + b"\x01\x01",
        },
        "public_bodies": {
            "send": b"\x00" + b'{"email": "ann@example.com"}',
            "confirm": b"\x01" + json.dumps({"challenge_id": "ch-1", "code": "000000",
                                             "client_public_key": targets._DEVICE_KEY.public_key_b64}).encode(),
            "content-type": b"\x02application/json; charset=utf-8",
        },
        "backend_answers": {
            "session": b"\x00\x00\x00" + json.dumps({"device_session_id": "d", "user_id": "u", "status": "active",
                                                     "client_public_key": targets._DEVICE_KEY.public_key_b64}).encode(),
            "success": b"\x01\x00\x00" + b'{"challenge_id": "ch-1", "extra": 1}',
            "error-429": b"\x02" + _index(targets._STATUSES, 429) + b"\x01" + _blob(b"7")
            + b'{"error": {"code": "resource_exhausted", "message": "slow down"}}',
        },
        "config_toml": {
            "shipped": b"\x00" + (ROOT / "conf" / "gatewayd.toml").read_bytes(),
            "env": b"\x01\x01\x01" + _blob(b"1048576") + b'[server]\nlisten = "tcp:0"\n[routes]\n'
            b'"a.b" = { method = "GET", path = "x/y" }\n',
        },
    }


def main() -> None:
    for name, inputs in seeds().items():
        assert name in targets.TARGETS, name
        directory: Path = CORPUS / name
        directory.mkdir(parents=True, exist_ok=True)
        for label, data in inputs.items():
            (directory / f"seed-{label}").write_bytes(data)


if __name__ == "__main__":
    main()
