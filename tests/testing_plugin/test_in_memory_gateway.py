"""The whole gateway on a MemoryNetwork, driven by request builders that break one field at a time.

No socket and no running reactor: every byte and every second moves because the test says so.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from gatewayd.client import GatewayClient, RpcCallError
from gatewayd.rpc.codes import Code
from gatewayd.rpc.framing import encode_frame
from gatewayd.testing import InMemoryGateway, signed_execute_request, signed_subscribe_request
from gatewayd.testing.raw_h2 import RawH2Client

WINDOW_S = 300.0  # security.freshness_window_s's default


@pytest.fixture
def gateway() -> Iterator[InMemoryGateway]:
    with InMemoryGateway.open() as gateway:
        yield gateway


@pytest.fixture
def client(gateway: InMemoryGateway) -> GatewayClient:
    client: GatewayClient = gateway.result(gateway.login(protocol="grpc"))
    return client


def rejection(gateway: InMemoryGateway, client: GatewayClient, **broken: Any) -> Code | int:
    assert client.session is not None
    fields: dict[str, Any] = {"device_session_id": client.session.device_session_id, **broken}
    request = signed_execute_request(client.key, clock=gateway.network, **fields)
    with pytest.raises(RpcCallError) as refused:
        gateway.result(client.send(request))
    return refused.value.code


@pytest.mark.parametrize(("broken", "code"), [
    ({"protocol_version": 2}, Code.FAILED_PRECONDITION),
    ({"request_id": ""}, Code.INVALID_ARGUMENT),
    ({"device_session_id": "ds_unknown"}, Code.UNAUTHENTICATED),
    ({"payload_hash": b"\0" * 32}, Code.INVALID_ARGUMENT),
    ({"signature": b"\0" * 64}, Code.UNAUTHENTICATED),
    ({"timestamp_ms": 1}, Code.FAILED_PRECONDITION),
    ({"message_type": "no.such.route"}, Code.UNIMPLEMENTED),
])
def test_each_broken_field_is_refused_with_its_code_and_never_reaches_the_backend(
        gateway: InMemoryGateway, client: GatewayClient, broken: dict[str, Any], code: Code) -> None:
    assert rejection(gateway, client, **broken) == code
    assert gateway.received() == []


def test_a_request_goes_stale_when_the_clock_moves_past_the_window(
        gateway: InMemoryGateway, client: GatewayClient) -> None:
    assert client.session is not None
    request = signed_execute_request(client.key, client.session.device_session_id, clock=gateway.network)
    gateway.advance(WINDOW_S + 1)
    with pytest.raises(RpcCallError) as refused:
        gateway.result(client.send(request))
    assert refused.value.code == Code.FAILED_PRECONDITION
    fresh = signed_execute_request(client.key, client.session.device_session_id, clock=gateway.network)
    assert gateway.result(client.send(fresh)).ok


def test_the_same_request_twice_is_a_replay(gateway: InMemoryGateway, client: GatewayClient) -> None:
    assert client.session is not None
    request = signed_execute_request(client.key, client.session.device_session_id, clock=gateway.network)
    assert gateway.result(client.send(request)).ok
    with pytest.raises(RpcCallError) as refused:
        gateway.result(client.send(request))
    assert refused.value.code == Code.ALREADY_EXISTS
    assert len(gateway.received()) == 1


def test_a_raw_h2_client_sees_the_exact_trailers_of_a_refused_subscription(
        gateway: InMemoryGateway, client: GatewayClient) -> None:
    assert client.session is not None
    raw = RawH2Client(reactor=gateway.network)
    server, _ = gateway.network.connect(gateway.running.port, raw)
    request = signed_subscribe_request(client.key, client.session.device_session_id, clock=gateway.network,
                                       message_type="user.profile.get")
    sid = raw.open_stream("/gateway.v1.Gateway/SubscribeEvents", body=encode_frame(request.SerializeToString()))
    gateway.flush()
    response = raw.responses[sid]
    assert response.done and response.grpc_status() == Code.INVALID_ARGUMENT
    assert server in gateway.gateway.factory.connections
