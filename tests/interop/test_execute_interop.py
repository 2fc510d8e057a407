"""ExecuteCommand with third-party clients against a whole gateway: connect-es and ``buf curl``.

connect-node (``node/client.mjs``) calls ``gateway.v1.Gateway/ExecuteCommand`` over Connect
(binary and JSON codecs, HTTP/1.1 and HTTP/2), gRPC (HTTP/2) and gRPC-Web (HTTP/1.1 and
HTTP/2); ``buf curl`` (connect-go) over Connect, gRPC and gRPC-Web. Every request is signed
in Python, fresh per call (``signed_execute_request``), and handed over as protobuf JSON;
every answer comes back as protobuf JSON and is verified here with ``gatewayd.signing``
alone against the key served at ``/api/v1/public/gateway-keys`` (the project's client is
not involved). Per protocol, one request with a bad signature is rejected, and the test
pins the exact code the third-party client reports: UNAUTHENTICATED.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
from google.protobuf import json_format
from twisted.internet import defer

from gatewayd._proto.gateway.v1.gateway_pb2 import ExecuteCommandRequest, ExecuteCommandResponse
from gatewayd.client import DeviceKey
from gatewayd.client.client import DeviceSession
from gatewayd.rpc.codes import Code
from gatewayd.testing.client import (
    RunningGateway,
    login,
    new_email,
    running_gateway,
    signed_execute_request,
)
from gatewayd.testing.events import check_response as check_signed
from gatewayd.testing.events import published_keys
from gatewayd.testing.wait import bounded
from tests.interop._clients import BUF, BUF_VARIANTS, NodeClient, buf_curl, run_tool
from tests.interop._support import require_node

EXECUTE = "gateway.v1.Gateway/ExecuteCommand"
MESSAGE_TYPE = "user.notes.create"
METHOD_LABEL_PART = "ExecuteCommand"

# connect-node: (step id, transport, HTTP version, binary codec, the content type the gateway must
# answer with, the protocol gatewayd's metrics must have counted the call under)
NODE_VARIANTS = [
    ("connect-h1-proto", "connect", "1.1", True, "application/proto", "connect"),
    ("connect-h1-json", "connect", "1.1", False, "application/json", "connect"),
    ("connect-h2-proto", "connect", "2", True, "application/proto", "connect"),
    ("connect-h2-json", "connect", "2", False, "application/json", "connect"),
    ("grpc-h2", "grpc", "2", True, "application/grpc", "grpc"),
    ("grpc-web-h1", "grpcweb", "1.1", True, "application/grpc-web", "grpc-web"),
    ("grpc-web-h2", "grpcweb", "2", True, "application/grpc-web", "grpc-web"),
]

Device = tuple[DeviceKey, DeviceSession]


@pytest_twisted.async_yield_fixture
async def gateway(tmp_path: Any) -> AsyncIterator[RunningGateway]:
    async with running_gateway(str(tmp_path / "state")) as gw:
        yield gw


def good_request(device: Device, text: str) -> ExecuteCommandRequest:
    key, session = device
    payload = json.dumps({"text": text}).encode()
    return signed_execute_request(key, session.device_session_id, MESSAGE_TYPE, payload)


def bad_signature_request(device: Device, text: str) -> ExecuteCommandRequest:
    """Well-formed, known session, right payload hash: only the signature (one bit flipped) is wrong."""
    request = good_request(device, text)
    signature = bytearray(request.signature)
    signature[0] ^= 0x01
    request.signature = bytes(signature)
    return request


def as_json(request: ExecuteCommandRequest) -> dict[str, Any]:
    return json_format.MessageToDict(request)


def check_response(response: ExecuteCommandResponse, request: ExecuteCommandRequest, keys: dict[str, bytes],
                   text: str) -> None:
    """Assert ``response`` answers ``request`` and is signed by a published gateway key over
    PROTOCOL.md's response signing input (the caller's device_session_id included)."""
    envelope = response.envelope
    assert (envelope.protocol_version, envelope.request_id, envelope.result_code) == (
        1, request.envelope.request_id, "ok"), response
    check_signed(response, request.envelope.device_session_id, keys)
    note = json.loads(response.payload_bytes)
    assert note["text"] == text and note["note_id"], note


def execute_calls(gw: RunningGateway) -> dict[tuple[str, str], float]:
    """gatewayd's own count of finished ExecuteCommand calls, by (protocol, code name)."""
    counts: dict[tuple[str, str], float] = {}
    for metric in gw.gateway.metrics.registry.collect():
        if metric.name != "gatewayd_rpc_calls":
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total") and METHOD_LABEL_PART in sample.labels["method"]:
                key = (sample.labels["protocol"], sample.labels["code"])
                counts[key] = counts.get(key, 0) + sample.value
    return counts


@require_node()
@pytest_twisted.ensureDeferred
async def test_execute_command_with_connect_node(gateway: RunningGateway) -> None:
    keys = await published_keys(gateway.url)
    device = await login(gateway.url, new_email("node-exec"))
    requests: dict[str, tuple[ExecuteCommandRequest, ExecuteCommandRequest]] = {}
    steps: list[dict[str, Any]] = []
    for step_id, transport, http, binary, _type, _proto in NODE_VARIANTS:
        good, bad = good_request(device, step_id), bad_signature_request(device, step_id)
        requests[step_id] = (good, bad)
        # The good and the rejected call of a variant share one client transport (one HTTP/2 session).
        common = {"transport": transport, "httpVersion": http, "binary": binary, "method": EXECUTE,
                  "connection": step_id}
        steps += [{"id": step_id, "request": as_json(good), **common},
                  {"id": f"{step_id}/bad", "request": as_json(bad), **common}]
    node = NodeClient.start({"baseUrl": gateway.url, "steps": [*steps, {"pause": "counted"}]}, timeout=20.0)
    try:
        await bounded(node.wait_event("counted", "paused"), 15.0)
        # The HTTP/2 variants each hold one HTTP/2 connection, still open; the others none.
        h2_variants = sum(1 for v in NODE_VARIANTS if v[2] == "2")
        assert len(gateway.gateway.factory.h2_connections) == h2_variants
        node.send_line()
        results = await bounded(node.result(), 10.0)
    finally:
        if node.exit_code is None:
            node.signal("KILL")
            await bounded(node.ended)

    for step_id, _transport, _http, _binary, content_type, _proto in NODE_VARIANTS:
        good, _bad = requests[step_id]
        ok, rejected = results[step_id], results[f"{step_id}/bad"]
        assert ok["end"]["code"] == 0, (step_id, ok)
        (message,) = ok["messages"]
        check_response(json_format.ParseDict(message, ExecuteCommandResponse()), good, keys, step_id)
        assert ok["headers"]["content-type"].startswith(content_type), (step_id, ok["headers"])
        end = rejected["end"]
        assert (step_id, end["code"], end["codeName"], rejected["messages"]) == (
            step_id, Code.UNAUTHENTICATED, "Unauthenticated", []), rejected
        assert end["rawMessage"], end  # a short reason, and nothing of the key
        assert "signature" in end["rawMessage"].lower(), end

    # The gateway counted each call under the protocol it was sent with; only the good ones ran.
    calls = execute_calls(gateway)
    for proto in ("connect", "grpc", "grpc-web"):
        variants = sum(1 for v in NODE_VARIANTS if v[5] == proto)
        assert (proto, calls.get((proto, "OK")), calls.get((proto, "UNAUTHENTICATED"))) == (
            proto, variants, variants), calls
    received = await gateway.received()
    good_ids = sorted(good.envelope.request_id for good, _bad in requests.values())
    assert sorted(r["request_id"] for r in received) == good_ids
    assert sorted(json.loads(r["body"])["text"] for r in received) == sorted(v[0] for v in NODE_VARIANTS)


def _buf_curl(url: str, protocol: str, http2: bool, request: ExecuteCommandRequest,
              verbose: bool) -> list[str]:
    return buf_curl(url, EXECUTE, protocol, http2, as_json(request), verbose)


@pytest.mark.skipif(not BUF.exists(), reason="buf (PyPI buf-bin) is not installed in .venv")
@pytest_twisted.ensureDeferred
async def test_execute_command_with_buf_curl(gateway: RunningGateway) -> None:
    keys = await published_keys(gateway.url)
    device = await login(gateway.url, new_email("buf-exec"))
    names = [f"buf-{protocol}-{'h2' if h2 else 'h1'}" for protocol, h2 in BUF_VARIANTS]
    good = [good_request(device, name) for name in names]
    bad = [bad_signature_request(device, name) for name in names]
    # -v (the response status line) for the good calls; the rejected ones print only the error on stderr.
    url = gateway.url
    runs = [run_tool(_buf_curl(url, p, h2, r, True)) for (p, h2), r in zip(BUF_VARIANTS, good, strict=True)]
    runs += [run_tool(_buf_curl(url, p, h2, r, False)) for (p, h2), r in zip(BUF_VARIANTS, bad, strict=True)]
    results = await bounded(defer.gatherResults(runs), 20.0)

    answers = zip(names, BUF_VARIANTS, good, results[: len(names)], strict=True)
    for name, (_protocol, h2), request, (out, err, code) in answers:
        assert code == 0, (name, err)
        response = json_format.Parse(out, ExecuteCommandResponse())
        check_response(response, request, keys, name)
        # -v shows the response status line: the HTTP version asked for is the one served.
        assert (b"< (#1) HTTP/2.0 200" if h2 else b"< (#1) HTTP/1.1 200") in err, (name, err)
    for name, (out, err, code) in zip(names, results[len(names) :], strict=True):
        # buf curl exits with 8 times the status code and prints the error as Connect JSON on stderr.
        assert (name, code, out) == (name, 8 * Code.UNAUTHENTICATED, b""), err
        error = json.loads(err)
        assert (name, error["code"]) == (name, "unauthenticated"), err
        assert "signature" in error["message"], err  # a short reason, and nothing of the key
