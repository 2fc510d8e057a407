"""HTTP method and media type errors on RPC paths, and Connect's spelling of ``canceled``
(PROTOCOL.md section 8, "Connect method errors"), over HTTP/1.1 and HTTP/2.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

from gatewayd.rpc.framing import encode_frame
from gatewayd.testing.client import start_gateway
from gatewayd.testing.harness import CHECK, ECHO, SLOW, STREAM, Harness, echo_request
from gatewayd.testing.raw_h2 import RawH2Client
from gatewayd.testing.raw_http1 import RawHttp1, http1_request, parse_http1_response
from gatewayd.testing.wait import until

Answer = tuple[int, dict[str, str], bytes]


async def _h1(port: int, method: str, path: str, body: bytes = b"", content_type: str | None = None) -> Answer:
    client = RawHttp1()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    assert client.transport is not None
    client.transport.write(http1_request(method, path, body, [("content-type", content_type)] if content_type else []))
    await client.wait(lambda: client.closed, "HTTP/1.1 connection close")
    response = parse_http1_response(client.received)
    return response.status, response.headers, response.body


async def _h2(port: int, method: str, path: str, body: bytes = b"", content_type: str | None = None) -> Answer:
    client = RawH2Client()
    await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), client)
    try:
        sid = client.open_stream(path, content_type, body or None, method=method)
        await client.wait(lambda: client.responses[sid].done, f"stream {sid}")
    finally:
        client.transport.loseConnection()  # type: ignore[union-attr]
    response = client.responses[sid]
    assert response.headers is not None
    return response.status, response.headers, response.data


TRANSPORTS = {"http1": _h1, "http2": _h2}


@pytest.mark.parametrize("transport", list(TRANSPORTS))
@pytest_twisted.ensureDeferred
async def test_non_post_to_an_rpc_is_405_with_allow_post(harness: Harness, transport: str) -> None:
    await harness.serve()
    send = TRANSPORTS[transport]
    for method, path, content_type in [
        ("GET", ECHO, None),  # a served path, no content type: what a browser or curl sends
        ("GET", STREAM, None),
        ("DELETE", CHECK, None),
        ("GET", ECHO, "application/proto"),  # an RPC content type on any method but POST
        ("PUT", "/no.such.Service/Method", "application/grpc-web+proto"),
    ]:
        status, headers, _ = await send(harness.port, method, path, b"", content_type)
        assert (status, headers.get("allow")) == (405, "POST"), (method, path, content_type, status, headers)
    # A path no method serves, without an RPC content type, is not the RPC surface's.
    status, headers, _ = await send(harness.port, "GET", "/no.such.Service/Method")
    assert status == 404 and "allow" not in headers
    await harness.assert_healthy()


@pytest.mark.parametrize("transport", list(TRANSPORTS))
@pytest.mark.parametrize("content_type", ["text/plain", "application/grpc+json", "application/connect+xml",
                                          "application/xml"])
@pytest_twisted.ensureDeferred
async def test_post_with_an_unsupported_content_type_is_415(harness: Harness, transport: str,
                                                            content_type: str) -> None:
    await harness.serve()
    body = encode_frame(echo_request(b"x"))
    status, _, _ = await TRANSPORTS[transport](harness.port, "POST", ECHO, body, content_type)
    assert status == 415
    await harness.assert_healthy()


@pytest_twisted.ensureDeferred
async def test_connect_reports_a_cancelled_call_as_canceled(harness: Harness) -> None:
    await harness.serve()
    client = await harness.h2()
    sid = client.open_stream(SLOW, "application/json", b"{}")
    await until(lambda: bool(harness.methods.slow), "the slow handler to start")
    harness.methods.slow[0].cancel()  # the handler gives up: CANCELLED, not caused by the client
    await client.wait(lambda: client.responses[sid].done, "the answer")
    response = client.responses[sid]
    assert response.status == 499
    assert json.loads(response.data) == {"code": "canceled", "message": "call cancelled"}


@pytest_twisted.ensureDeferred
async def test_get_on_execute_command_of_a_whole_gateway(tmp_path: Any) -> None:
    gw = await start_gateway(str(tmp_path / "state"))
    try:
        harness = Harness()
        harness.server = type("Server", (), {"port": gw.port.getHost().port})()  # type: ignore[assignment]
        for send in TRANSPORTS.values():
            status, headers, _ = await send(harness.port, "GET", "/gateway.v1.Gateway/ExecuteCommand")
            assert (status, headers.get("allow")) == (405, "POST")
            status, headers, _ = await send(harness.port, "POST", "/gateway.v1.Gateway/ExecuteCommand", b"x",
                                            "text/plain")
            assert status == 415
        for client in harness.clients:
            client.transport.abortConnection()  # type: ignore[union-attr]
    finally:
        await gw.stop()
