"""connect-es (@connectrpc/connect-node) reads gatewayd's error statuses as their specs define them.

``canceled``: a call the server cancels reaches connect-node as Code.Canceled over every
transport; Connect spells it with one l (a name it does not know would be Code.Unknown).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest_twisted
from twisted.internet import defer

from gatewayd._proto.grpc.health.v1 import health_pb2
from gatewayd.rpc.call import Call, ServerStream
from gatewayd.rpc.codes import Code
from gatewayd.rpc.methods import Method
from gatewayd.testing.server import RunningServer, serve
from tests.interop._clients import run_node
from tests.interop._support import require_node

pytestmark = require_node()

VARIANTS = [("connect", "1.1", True), ("connect", "2", False), ("grpc", "2", True), ("grpcweb", "1.1", True)]


def _gives_up(call: Call, request: Any, stream: ServerStream | None = None) -> defer.Deferred[Any]:
    # The handler's own work was cancelled (not the client): the server ends the call CANCELLED.
    return defer.fail(defer.CancelledError())


@pytest_twisted.async_yield_fixture
async def cancelling_server() -> AsyncIterator[RunningServer]:
    request, response = health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
    running = await serve([Method("/grpc.health.v1.Health/Check", request, response, unary=_gives_up),
                           Method("/grpc.health.v1.Health/Watch", request, response, stream=_gives_up)])
    try:
        yield running
    finally:
        await running.stop()


@pytest_twisted.ensureDeferred
async def test_a_cancelled_call_is_canceled_to_connect_node(cancelling_server: RunningServer) -> None:
    steps = [{"id": f"{transport}-h{http}-{binary}-{method}", "transport": transport, "httpVersion": http,
              "binary": binary, "method": f"grpc.health.v1.Health/{method}", "request": {}}
             for transport, http, binary in VARIANTS for method in ("Check", "Watch")]
    results = await run_node({"baseUrl": cancelling_server.url, "steps": steps})
    for step in steps:
        end = results[step["id"]]["end"]
        assert (end["code"], end["codeName"]) == (Code.CANCELLED, "Canceled"), (step["id"], end)
        assert end["rawMessage"] == "call cancelled", (step["id"], end)
