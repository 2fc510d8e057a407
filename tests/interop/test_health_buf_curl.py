"""``buf curl`` (connect-go's clients) against gatewayd: grpc.health.v1.Health over
Connect, gRPC and gRPC-Web, on HTTP/1.1 and HTTP/2 (prior knowledge).

buf curl compiles the schema from ``proto/``: no reflection is needed. It exits
with 8 times the status code on an RPC error and prints the error as Connect
JSON on stderr.
"""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from twisted.internet import defer

from gatewayd.health import NOT_SERVING
from gatewayd.rpc.codes import Code
from gatewayd.testing.wait import until
from tests.interop._clients import BUF, BUF_VARIANTS, ToolProcess, buf_curl, run_tool
from tests.interop._support import HealthServer

pytestmark = pytest.mark.skipif(not BUF.exists(), reason="buf (PyPI buf-bin) is not installed in .venv")

VARIANTS = BUF_VARIANTS


def _curl(url: str, method: str, protocol: str, http2: bool, body: dict[str, str], verbose: bool = False) -> list[str]:
    return buf_curl(url, f"grpc.health.v1.Health/{method}", protocol, http2, body, verbose)


@pytest_twisted.ensureDeferred
async def test_check_with_every_protocol(health_server: HealthServer) -> None:
    url = health_server.url
    known = [run_tool(_curl(url, "Check", p, h2, {"service": "gateway.v1.Gateway"}, True)) for p, h2 in VARIANTS]
    unknown = [run_tool(_curl(url, "Check", p, h2, {"service": "no.such.Service"})) for p, h2 in VARIANTS]
    results = await defer.gatherResults(known + unknown)
    for (protocol, h2), (out, err, code) in zip(VARIANTS, results[: len(VARIANTS)], strict=True):
        assert code == 0, (protocol, h2, err)
        assert json.loads(out) == {"status": "SERVING"}, (protocol, h2, out)
        # -v shows the response status line: the HTTP version asked for is the one served.
        assert (b"< (#1) HTTP/2.0 200" if h2 else b"< (#1) HTTP/1.1 200") in err, (protocol, h2, err)
    for (protocol, h2), (out, err, code) in zip(VARIANTS, results[len(VARIANTS) :], strict=True):
        assert code == 8 * Code.NOT_FOUND, (protocol, h2, out, err)
        assert json.loads(err) == {"code": "not_found", "message": "unknown service 'no.such.Service'"}, err


@pytest_twisted.ensureDeferred
async def test_watch_streams_changes_and_a_killed_client_frees_its_stream(health_server: HealthServer) -> None:
    url = health_server.url
    tools = [ToolProcess.start(_curl(url, "Watch", p, h2, {"service": ""})) for p, h2 in VARIANTS]
    try:
        for tool in tools:
            await tool.wait_output(b'"SERVING"')
        assert health_server.health.watcher_count() == len(VARIANTS)
        health_server.health.set("", NOT_SERVING)
        for tool in tools:
            await tool.wait_output(b'"NOT_SERVING"')
    finally:
        for tool in tools:
            tool.signal("TERM")
    for tool in tools:
        await tool.ended
    await until(health_server.idle, health_server.state)
