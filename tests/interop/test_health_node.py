"""connect-es (@connectrpc/connect-node) against gatewayd: grpc.health.v1.Health over
Connect (binary and JSON), gRPC and gRPC-Web, on HTTP/1.1 and HTTP/2.

Each test runs one Node process (``node/client.mjs``) with a plan of several
calls, to keep Node's start-up cost out of the loop.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted

from gatewayd.health import NOT_SERVING
from gatewayd.rpc.codes import Code
from gatewayd.testing.wait import until
from tests.interop._clients import NodeClient, run_node
from tests.interop._support import HealthServer, require_node
from tests.support import record_connections

pytestmark = require_node()

CHECK = "grpc.health.v1.Health/Check"
# Non-ASCII and '%' in the name: grpc-message must be percent-encoded and decoded back intact.
UNKNOWN = "no.such.Service/ünï %"
WATCH = "grpc.health.v1.Health/Watch"

# (transport, HTTP version, binary): every way connect-node can reach the server.
VARIANTS: list[tuple[str, str, bool]] = [
    ("connect", "1.1", True),
    ("connect", "1.1", False),
    ("connect", "2", True),
    ("connect", "2", False),
    ("grpc", "2", True),
    ("grpcweb", "1.1", True),
    ("grpcweb", "2", True),
]


def _name(transport: str, http: str, binary: bool) -> str:
    return f"{transport}-h{http}-{'bin' if binary else 'json'}"


def _step(step_id: str, transport: str, http: str, binary: bool, method: str, **extra: Any) -> dict[str, Any]:
    return {"id": step_id, "transport": transport, "httpVersion": http, "binary": binary, "method": method, **extra}


def _timeout_header(transport: str, ms: int) -> dict[str, str]:
    # Sent by hand, with no client-side timer: only the server's deadline can end the call.
    return {"connect-timeout-ms": str(ms)} if transport == "connect" else {"grpc-timeout": f"{ms}m"}


@pytest_twisted.ensureDeferred
async def test_check_over_every_transport(health_server: HealthServer) -> None:
    steps = []
    for transport, http, binary in VARIANTS:
        base = _name(transport, http, binary)
        steps += [
            _step(f"{base}/all", transport, http, binary, CHECK, request={}),
            _step(f"{base}/gateway", transport, http, binary, CHECK, request={"service": "gateway.v1.Gateway"}),
            _step(f"{base}/gzip", transport, http, binary, CHECK, request={"service": ""}, gzip=True),
            _step(f"{base}/unknown", transport, http, binary, CHECK, request={"service": UNKNOWN}),
        ]
    results = await run_node({"baseUrl": health_server.url, "steps": steps})
    for transport, http, binary in VARIANTS:
        base = _name(transport, http, binary)
        for case in ("all", "gateway", "gzip"):
            got = results[f"{base}/{case}"]
            assert got["end"]["code"] == Code.OK, (base, case, got)
            assert got["messages"] == [{"status": "SERVING"}], (base, case, got)
        unknown = results[f"{base}/unknown"]
        assert unknown["messages"] == [], (base, unknown)
        assert unknown["end"]["code"] == Code.NOT_FOUND, (base, unknown)
        assert unknown["end"]["rawMessage"] == f"unknown service {UNKNOWN!r}", (base, unknown)
    # Content types as each protocol names them.
    assert results["connect-h1.1-bin/all"]["headers"]["content-type"] == "application/proto"
    assert results["connect-h2-json/all"]["headers"]["content-type"] == "application/json"
    assert results["grpc-h2-bin/all"]["headers"]["content-type"].startswith("application/grpc")
    assert results["grpc-h2-bin/all"]["end"]["trailers"].get("grpc-status") == "0"
    assert results["grpcweb-h1.1-bin/all"]["headers"]["content-type"].startswith("application/grpc-web")
    assert results["grpcweb-h2-bin/all"]["end"]["trailers"].get("grpc-status") == "0"
    assert health_server.idle(), health_server.state()


@pytest_twisted.ensureDeferred
async def test_watch_sees_the_change_then_cancel_frees_every_stream(health_server: HealthServer) -> None:
    group = [
        _step(_name(*variant), *variant, WATCH, request={"service": ""}, cancelAfter=2) for variant in VARIANTS
    ]
    client = NodeClient.start({"baseUrl": health_server.url, "steps": [{"group": group}, {"pause": "cancelled"}]})
    try:
        for step in group:
            first = await client.wait_event(step["id"], "message")
            assert first["message"] == {"status": "SERVING"}, step["id"]
        assert health_server.health.watcher_count() == len(VARIANTS)
        # Every client holds its first message: the change must reach all of them.
        health_server.health.set("", NOT_SERVING)
        await client.wait_event("cancelled", "paused")
        results = client.by_step()
        for step in group:
            got = results[step["id"]]
            assert got["messages"] == [{"status": "SERVING"}, {"status": "NOT_SERVING"}], got
            assert got["end"]["cancelledByClient"] and got["end"]["code"] == Code.CANCELLED, got
        # The Node process is still alive and its HTTP/2 sessions stay open: the streams are
        # freed by RST_STREAM (HTTP/2) or the request's socket closing (HTTP/1.1) alone.
        await until(health_server.idle, health_server.state)
        assert len(health_server.server.factory.h2_connections) == sum(1 for v in VARIANTS if v[1] == "2")
    finally:
        if client.exit_code is None:
            client.send_line()
    assert await client.ended == 0


@pytest_twisted.ensureDeferred
async def test_watch_deadline_is_enforced_by_the_server(health_server: HealthServer) -> None:
    group = [
        _step(_name(*v), *v, WATCH, request={"service": "gateway.v1.Gateway"}, headers=_timeout_header(v[0], 300))
        for v in VARIANTS
    ]
    results = await run_node({"baseUrl": health_server.url, "steps": [{"group": group}]})
    for step in group:
        got = results[step["id"]]
        end = got["end"]
        assert got["messages"] == [{"status": "SERVING"}], got
        assert end["code"] == Code.DEADLINE_EXCEEDED, got
        # The client set no timer of its own: this status and message came from the server.
        assert end["rawMessage"] == "deadline exceeded", got
        assert not end["cancelledByClient"], got
        assert end["elapsedMs"] >= 250, got
        if step["transport"] != "connect":
            assert end["metadata"].get("grpc-status") == "4", got
    await until(health_server.idle, health_server.state)


@pytest_twisted.ensureDeferred
async def test_watch_client_timeout_ends_with_deadline_exceeded(health_server: HealthServer) -> None:
    # The ordinary way: connect-es sends the timeout header and arms its own timer too.
    group = [_step(_name(*v), *v, WATCH, request={}, timeoutMs=500) for v in VARIANTS]
    results = await run_node({"baseUrl": health_server.url, "steps": [{"group": group}]})
    for step in group:
        got = results[step["id"]]
        # The client's timer runs from before it connects: on a loaded machine it may win
        # before the first message arrives.
        assert got["messages"] in ([], [{"status": "SERVING"}]), got
        assert got["end"]["code"] == Code.DEADLINE_EXCEEDED, got
    await until(health_server.idle, health_server.state)


@pytest_twisted.ensureDeferred
async def test_unknown_method_is_unimplemented(health_server: HealthServer) -> None:
    # gen/ holds gateway.v1.Gateway, which this server does not serve.
    steps = [
        _step(transport, transport, "2", True, "gateway.v1.Gateway/ExecuteCommand", request={"payloadBytes": "e30="})
        for transport in ("grpc", "grpcweb", "connect")
    ]
    results = await run_node({"baseUrl": health_server.url, "steps": steps})
    for step in steps:
        assert results[step["id"]]["end"]["code"] == Code.UNIMPLEMENTED, results


@pytest_twisted.ensureDeferred
async def test_cancel_on_a_shared_connection_resets_only_that_stream(health_server: HealthServer) -> None:
    # Three Watches multiplexed on one HTTP/2 connection; one is cancelled after its first message.
    group = [
        _step(step_id, "grpc", "2", True, WATCH, request={}, cancelAfter=n, connection="shared")
        for step_id, n in (("early", 1), ("late1", 2), ("late2", 2))
    ]
    client = NodeClient.start({"baseUrl": health_server.url, "steps": [{"group": group}, {"pause": "cancelled"}]})
    try:
        await client.wait_event("early", "end")
        for step_id in ("late1", "late2"):
            await client.wait_event(step_id, "message")

        def two_left() -> bool:
            return health_server.health.watcher_count() == 2 and [len(s) for s in health_server.h2_streams()] == [2]

        await until(two_left, health_server.state)
        assert len(health_server.server.app.active) == 2
        health_server.health.set("", NOT_SERVING)
        await client.wait_event("cancelled", "paused")
        results = client.by_step()
        assert results["early"]["messages"] == [{"status": "SERVING"}]
        for step_id in ("late1", "late2"):
            assert results[step_id]["messages"] == [{"status": "SERVING"}, {"status": "NOT_SERVING"}], results
        await until(health_server.idle, health_server.state)
        assert len(health_server.server.factory.h2_connections) == 1
    finally:
        if client.exit_code is None:
            client.send_line()
    assert await client.ended == 0


@pytest_twisted.ensureDeferred
async def test_more_streams_than_the_concurrency_limit_on_one_connection(health_server: HealthServer) -> None:
    # The server advertises SETTINGS_MAX_CONCURRENT_STREAMS (100 by default); the client queues
    # the rest and each finishes once earlier streams are cancelled: none is refused.
    count = health_server.server.factory.limits.max_concurrent_streams + 20
    group = [
        _step(f"w{i}", "grpc", "2", True, WATCH, request={}, cancelAfter=1, connection="one") for i in range(count)
    ]
    results = await run_node({"baseUrl": health_server.url, "steps": [{"group": group}]})
    ends = [results[step["id"]]["end"] for step in group]
    assert all(r["messages"] == [{"status": "SERVING"}] for r in results.values()), results
    assert all(e["cancelledByClient"] and e["code"] == Code.CANCELLED for e in ends), ends
    await until(health_server.idle, health_server.state)


@pytest_twisted.ensureDeferred
async def test_http1_connection_is_kept_alive_across_calls(health_server: HealthServer) -> None:
    # Node keeps HTTP/1.1 sockets alive: each response (a success, an error, a unary Connect
    # error body) must be framed so the next request on the socket is read cleanly. A stream
    # comes last: connect-es drops the socket of any stream that ends in an error, whatever
    # the server does (the server keeps it open: its chunked framing ends cleanly).
    built = record_connections(health_server.server.factory)
    steps = []
    for transport in ("connect", "grpcweb"):
        common = {"transport": transport, "httpVersion": "1.1", "connection": transport}
        steps += [
            {**common, "id": f"{transport}/ok", "method": CHECK, "request": {}},
            {**common, "id": f"{transport}/unknown", "method": CHECK, "request": {"service": "zz"}},
            {**common, "id": f"{transport}/again", "method": CHECK, "request": {"service": "gateway.v1.Gateway"}},
            {**common, "id": f"{transport}/watch", "method": WATCH, "request": {},
             "headers": _timeout_header(transport, 100)},
        ]
    results = await run_node({"baseUrl": health_server.url, "steps": steps})
    codes = {step_id: got["end"]["code"] for step_id, got in results.items()}
    for transport in ("connect", "grpcweb"):
        assert codes[f"{transport}/ok"] == codes[f"{transport}/again"] == Code.OK, results
        assert codes[f"{transport}/unknown"] == Code.NOT_FOUND, results
        assert codes[f"{transport}/watch"] == Code.DEADLINE_EXCEEDED, results
        assert results[f"{transport}/watch"]["messages"] == [{"status": "SERVING"}], results
    assert len(built) == 2, f"expected one kept-alive connection per transport, got {len(built)}"
    await until(health_server.idle, health_server.state)
