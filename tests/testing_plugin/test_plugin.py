"""gatewayd's pytest plugin as an installed project meets it: loaded by its entry point, fixtures that work."""

from __future__ import annotations

import json

import pytest
import pytest_twisted

from gatewayd.client import GatewayClient, RpcCallError, VerifiedEvent
from gatewayd.rpc.codes import Code
from gatewayd.testing.dev import DevGateway, InMemoryGateway, UnknownSession
from gatewayd.testing.wait import bounded, until

SERVER_TIME = "gateway.server_time"


def test_the_plugin_is_registered_once_by_its_entry_point(pytestconfig: pytest.Config) -> None:
    import gatewayd.testing.plugin as plugin

    manager = pytestconfig.pluginmanager
    assert manager.get_plugin("gatewayd") is plugin
    assert [name for name, p in manager.list_name_plugin() if p is plugin] == ["gatewayd"]
    [dist] = [dist for p, dist in manager.list_plugin_distinfo() if p is plugin]
    assert dist.project_name == "gatewayd"


async def subscribed(client: GatewayClient) -> tuple[list[VerifiedEvent], object]:
    """Open SubscribeEvents; return once ``gateway.server_time`` arrived (events published now reach it)."""
    events: list[VerifiedEvent] = []
    stream = client.subscribe(events.append)
    await until(lambda: bool(events), "gateway.server_time")
    assert events[0].event_type == SERVER_TIME
    return events, stream


@pytest_twisted.ensureDeferred
async def test_gatewayd_client_is_logged_in_and_answers_are_signed_with_the_published_keys(
        gatewayd_dev: DevGateway, gatewayd_client: GatewayClient) -> None:
    session = gatewayd_client.session
    assert session is not None and gatewayd_client.protocol == "connect"
    response = await bounded(gatewayd_client.execute("user.profile.get"))
    assert response.ok and json.loads(response.payload_bytes)["user_id"] == session.user_id
    assert response.key_id in gatewayd_dev.gateway_keys
    assert dict(await bounded(gatewayd_client.fetch_gateway_keys())) == gatewayd_dev.gateway_keys
    assert gatewayd_client.public_url == gatewayd_dev.rest_url
    assert gatewayd_dev.url.startswith("http://127.0.0.1:")
    [entry] = [e for e in gatewayd_dev.received() if e["request_id"] == response.request_id]
    assert (entry["path"], entry["device_session_id"]) == ("/api/v1/user/profile", session.device_session_id)


@pytest.mark.parametrize("gatewayd_client", ["grpc", "grpc-web"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_gatewayd_client_speaks_the_protocol_it_is_parametrized_with(gatewayd_client: GatewayClient) -> None:
    assert gatewayd_client.protocol in ("grpc", "grpc-web")
    response = await bounded(gatewayd_client.execute("user.notes.create", {"text": "over " + gatewayd_client.protocol}))
    assert response.ok and json.loads(response.payload_bytes)["text"] == "over " + gatewayd_client.protocol


@pytest_twisted.ensureDeferred
async def test_publish_reaches_one_session_or_every_session_of_the_user(gatewayd_dev: DevGateway) -> None:
    phone = await gatewayd_dev.login("publish@example.com")
    laptop = await gatewayd_dev.login("publish@example.com")
    assert phone.session is not None and laptop.session is not None
    assert phone.session.user_id == laptop.session.user_id
    phone_events, _ = await subscribed(phone)
    laptop_events, _ = await subscribed(laptop)

    only_phone = gatewayd_dev.publish("test.ping", {"to": "phone"}, device_session_id=phone.session.device_session_id)
    both = gatewayd_dev.publish("test.ping", b'{"to":"both"}', user_id=phone.session.user_id, event_id="ev_both")
    assert both == "ev_both"
    await until(lambda: len(phone_events) == 3 and len(laptop_events) == 2, "two events on the phone, one on the other")
    assert [(e.event_id, json.loads(e.payload_bytes)) for e in phone_events[1:]] == [
        (only_phone, {"to": "phone"}), ("ev_both", {"to": "both"})]
    assert [e.event_id for e in laptop_events[1:]] == ["ev_both"]


def test_publish_names_its_target(gatewayd_dev: DevGateway) -> None:
    with pytest.raises(ValueError, match="user_id or a device_session_id"):
        gatewayd_dev.publish("test.ping")
    with pytest.raises(UnknownSession):
        gatewayd_dev.publish("test.ping", device_session_id="ds_nobody")


@pytest_twisted.ensureDeferred
async def test_revoke_ends_the_sessions_stream_and_refuses_its_calls(
        gatewayd_dev: DevGateway, gatewayd_client: GatewayClient) -> None:
    assert gatewayd_client.session is not None
    session_id = gatewayd_client.session.device_session_id
    _, stream = await subscribed(gatewayd_client)
    assert gatewayd_dev.revoke(session_id) == 1
    with pytest.raises(RpcCallError) as ended:
        await bounded(stream)  # type: ignore[arg-type]
    assert ended.value.code == Code.FAILED_PRECONDITION
    with pytest.raises(RpcCallError) as refused:
        await bounded(gatewayd_client.execute("user.profile.get"))
    assert refused.value.code == Code.UNAUTHENTICATED
    assert gatewayd_dev.revoke(session_id) == 0
    with pytest.raises(UnknownSession):
        gatewayd_dev.revoke("ds_nobody")


def test_gatewayd_memory_needs_no_reactor(gatewayd_memory: InMemoryGateway) -> None:
    client = gatewayd_memory.result(gatewayd_memory.login(protocol="grpc"))
    events: list[VerifiedEvent] = []
    client.subscribe(events.append)
    gatewayd_memory.flush()
    assert client.session is not None
    gatewayd_memory.publish("test.ping", {"n": 1}, user_id=client.session.user_id)
    gatewayd_memory.flush()
    assert [e.event_type for e in events] == [SERVER_TIME, "test.ping"]
    assert gatewayd_memory.result(client.execute("user.profile.get")).ok


@pytest_twisted.ensureDeferred
async def test_a_blocking_client_runs_in_a_thread_while_gatewayd_dev_serves(gatewayd_dev: DevGateway) -> None:
    import grpc
    from twisted.internet import threads

    from gatewayd._proto.grpc.health.v1 import health_pb2

    def check() -> int:
        target = gatewayd_dev.url.removeprefix("http://")
        with grpc.insecure_channel(target, options=[("grpc.enable_http_proxy", 0)]) as channel:
            call = channel.unary_unary("/grpc.health.v1.Health/Check",
                                       request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                                       response_deserializer=health_pb2.HealthCheckResponse.FromString)
            status: int = call(health_pb2.HealthCheckRequest(service="gateway.v1.Gateway"), timeout=10).status
            return status

    assert await bounded(threads.deferToThread(check), 15) == health_pb2.HealthCheckResponse.SERVING
