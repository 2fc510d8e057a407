"""Overriding ``gatewayd_config`` in a module changes the gateways its tests get."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted

from gatewayd.client import GatewayClient, RpcCallError
from gatewayd.rpc.codes import Code
from gatewayd.testing.client import routes_with, signed_execute_request
from gatewayd.testing.dev import DevGateway, InMemoryGateway
from gatewayd.testing.wait import bounded


@pytest.fixture
def gatewayd_config() -> dict[str, Any]:
    return {"security": {"freshness_window_s": 5.0},
            "routes": routes_with({"test.teapot": ("GET", "debug/status/418")})}


@pytest_twisted.ensureDeferred
async def test_a_route_added_by_config_reaches_the_backend(
        gatewayd_dev: DevGateway, gatewayd_client: GatewayClient) -> None:
    response = await bounded(gatewayd_client.execute("test.teapot"))
    assert response.result_code == "invalid_argument"  # PROTOCOL.md section 5: any other 4xx
    assert [e["path"] for e in gatewayd_dev.received()] == ["/api/v1/user/debug/status/418"]


def test_a_shorter_freshness_window_applies_to_the_in_memory_gateway(gatewayd_memory: InMemoryGateway) -> None:
    client = gatewayd_memory.result(gatewayd_memory.login())
    assert client.session is not None
    request = signed_execute_request(client.key, client.session.device_session_id, clock=gatewayd_memory.network)
    gatewayd_memory.advance(6)
    with pytest.raises(RpcCallError) as refused:
        gatewayd_memory.result(client.send(request))
    assert refused.value.code == Code.FAILED_PRECONDITION
