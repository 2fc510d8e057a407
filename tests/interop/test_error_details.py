"""Error details read by third-party clients: a spent rate budget carries ``google.rpc.RetryInfo``.

grpcio with ``grpcio-status`` (``rpc_status.from_call``, which also checks that the
``google.rpc.Status`` in ``grpc-status-details-bin`` has the call's code and message),
and connect-node over Connect (the error JSON's ``details``), gRPC and gRPC-Web
(``grpc-status-details-bin``), each on a whole gateway whose session budget is one call
per 100 s. The detail's bytes are parsed here with the ``google.rpc`` protos.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
import pytest_twisted
from google.protobuf import json_format
from google.rpc.error_details_pb2 import RetryInfo
from grpc_status import rpc_status
from twisted.internet import threads

from gatewayd._proto.gateway.v1.gateway_pb2 import ExecuteCommandRequest, ExecuteCommandResponse
from gatewayd.config import Budget
from gatewayd.rpc.codes import Code
from gatewayd.testing.client import (
    RunningGateway,
    login,
    new_email,
    running_gateway,
    signed_execute_request,
)
from tests.interop._clients import run_node
from tests.interop._support import require_node

EXECUTE = "gateway.v1.Gateway/ExecuteCommand"
ONE_PER_100_S = Budget(rate=0.01, burst=1)

Device = tuple[Any, Any]


@pytest_twisted.async_yield_fixture
async def limited_gateway(tmp_path: Any) -> AsyncIterator[RunningGateway]:
    async with running_gateway(str(tmp_path / "state"), limits={"session": ONE_PER_100_S}) as gw:
        yield gw


async def _spent_device(gw: RunningGateway) -> Device:
    """A logged-in device whose session budget the project's own client has just spent."""
    from gatewayd.client import GatewayClient

    key, session = await login(gw.url, new_email("budget"))
    client = GatewayClient(gw.url, "connect", key=key, session=session, timeout_s=5.0)
    try:
        assert (await client.execute("user.profile.get")).ok
    finally:
        await client.close()
    return key, session


def _request(device: Device) -> ExecuteCommandRequest:
    key, session = device
    return signed_execute_request(key, session.device_session_id, "user.profile.get")


def _assert_retry_info(value: bytes) -> None:
    delay = RetryInfo.FromString(value).retry_delay.ToMilliseconds() / 1000
    assert 90 < delay <= 100, delay  # one unit at 0.01/s, less the time the test took


def _grpcio_call(target: str, request: ExecuteCommandRequest) -> Any:
    with grpc.insecure_channel(target) as channel:
        execute = channel.unary_unary(f"/{EXECUTE}", request_serializer=ExecuteCommandRequest.SerializeToString,
                                      response_deserializer=ExecuteCommandResponse.FromString)
        with pytest.raises(grpc.RpcError) as info:
            execute(request, timeout=10)
    call = info.value
    return call.code(), call.details(), rpc_status.from_call(call)


@pytest_twisted.ensureDeferred
async def test_grpcio_status_decodes_retry_info(limited_gateway: RunningGateway) -> None:
    device = await _spent_device(limited_gateway)
    target = f"127.0.0.1:{limited_gateway.port.getHost().port}"
    code, message, status = await threads.deferToThread(_grpcio_call, target, _request(device))
    assert (code, message) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit exceeded")
    assert status is not None and (status.code, status.message) == (Code.RESOURCE_EXHAUSTED, message)
    [detail] = status.details
    assert detail.Is(RetryInfo.DESCRIPTOR)
    _assert_retry_info(detail.value)


# (step id, transport, HTTP version, binary codec): every way connect-node reaches a gateway.
NODE_VARIANTS = [
    ("connect-h1-proto", "connect", "1.1", True),
    ("connect-h1-json", "connect", "1.1", False),
    ("connect-h2-proto", "connect", "2", True),
    ("grpc-h2", "grpc", "2", True),
    ("grpc-web-h1", "grpcweb", "1.1", True),
    ("grpc-web-h2", "grpcweb", "2", True),
]


@require_node()
@pytest_twisted.ensureDeferred
async def test_connect_node_decodes_retry_info(limited_gateway: RunningGateway) -> None:
    device = await _spent_device(limited_gateway)
    steps = [{"id": step_id, "transport": transport, "httpVersion": http, "binary": binary, "method": EXECUTE,
              "request": json_format.MessageToDict(_request(device))}
             for step_id, transport, http, binary in NODE_VARIANTS]
    results = await run_node({"baseUrl": limited_gateway.url, "steps": steps})
    for step_id, *_ in NODE_VARIANTS:
        end = results[step_id]["end"]
        assert (end["code"], end["rawMessage"]) == (Code.RESOURCE_EXHAUSTED, "rate limit exceeded"), (step_id, end)
        [detail] = end["details"]
        assert detail["type"] == "google.rpc.RetryInfo", (step_id, detail)
        _assert_retry_info(base64.b64decode(detail["value"]))
