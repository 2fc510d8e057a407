"""/metrics of a whole in-process gateway: scraped over HTTP/1.1 and HTTP/2 (h2c) on the main port,
and on a separate metrics endpoint; counts follow real calls made with GatewayClient."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor

from gatewayd.client import DeviceKey, GatewayClient, RpcCallError, VerifiedEvent
from gatewayd.client.client import DeviceSession
from gatewayd.config import AccessLogConfig
from gatewayd.observability import GatewayMetrics, MetricsService
from gatewayd.rpc.codes import Code
from gatewayd.testing.client import (
    RunningGateway,
    login,
    new_email,
    running_gateway,
    signed_execute_request,
    start_gateway,
)
from gatewayd.testing.public import Answer, h2c, http1
from gatewayd.testing.redis import RedisServer, ready
from gatewayd.testing.wait import until

EXECUTE = "/gateway.v1.Gateway/ExecuteCommand"
SUBSCRIBE = "/gateway.v1.Gateway/SubscribeEvents"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(body: bytes) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; 0 when absent (a labelled counter not yet incremented)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(gw: RunningGateway, over: str = "http1", path: str = "/metrics") -> Samples:
    port = gw.port.getHost().port
    answer: Answer = await (http1(port, "GET", path) if over == "http1" else h2c(port, "GET", path))
    assert answer.status == 200, answer
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse(answer.body)


@pytest_twisted.async_yield_fixture
async def gateway(tmp_path: Any) -> AsyncIterator[RunningGateway]:
    async with running_gateway(str(tmp_path / "state")) as gw:
        yield gw


@pytest_twisted.async_yield_fixture
async def clients(gateway: RunningGateway) -> AsyncIterator[Callable[..., Any]]:
    made: list[GatewayClient] = []

    async def make(protocol: str) -> tuple[GatewayClient, DeviceKey, DeviceSession]:
        key, session = await login(gateway.url, new_email("metrics"))
        client = GatewayClient(gateway.url, protocol, key=key, session=session, timeout_s=5.0)
        made.append(client)
        return client, key, session

    try:
        yield make
    finally:
        for client in made:
            await client.close()


async def ok_and_rejected(client: GatewayClient, key: DeviceKey, session: DeviceSession) -> None:
    """One successful ExecuteCommand and one rejected at the signature stage."""
    verified = await client.execute("user.profile.get")
    assert verified.ok
    bad = signed_execute_request(key, session.device_session_id, signature=b"\x00" * 64)
    with pytest.raises(RpcCallError) as info:
        await client.send(bad)
    assert info.value.code == Code.UNAUTHENTICATED


@pytest.mark.parametrize("protocol,over", [("connect", "http1"), ("grpc", "h2"), ("grpc-web", "h2")])
@pytest_twisted.ensureDeferred
async def test_calls_and_rejections_are_counted_under_their_labels(
        gateway: RunningGateway, clients: Any, protocol: str, over: str) -> None:
    client, key, session = await clients(protocol)
    await ok_and_rejected(client, key, session)
    samples = await scrape(gateway, over)

    calls = "gatewayd_rpc_calls_total"
    assert value(samples, calls, protocol=protocol, method=EXECUTE, code="OK") == 1
    assert value(samples, calls, protocol=protocol, method=EXECUTE, code="UNAUTHENTICATED") == 1
    assert sum(v for (name, _), v in samples.items() if name == calls) == 2
    assert value(samples, "gatewayd_rpc_call_duration_seconds_count", protocol=protocol, method=EXECUTE) == 2
    assert value(samples, "gatewayd_pipeline_rejections_total", stage="signature", code="UNAUTHENTICATED") == 1
    assert sum(v for (name, _), v in samples.items() if name == "gatewayd_pipeline_rejections_total") == 1
    # Both calls passed envelope, session and payload_hash; only the good one reached the route.
    assert value(samples, "gatewayd_pipeline_stage_duration_seconds_count", stage="envelope") == 2
    assert value(samples, "gatewayd_pipeline_stage_duration_seconds_count", stage="signature") == 2
    assert value(samples, "gatewayd_pipeline_stage_duration_seconds_count", stage="route") == 1
    assert value(samples, "gatewayd_backend_request_duration_seconds_count", operation="route") == 1
    # The session was looked up once (then cached); the login went through the public surface.
    assert value(samples, "gatewayd_backend_request_duration_seconds_count", operation="session") >= 1
    assert not [k for k in samples if k[0] == "gatewayd_backend_errors_total"]
    assert value(samples, "process_cpu_seconds_total") > 0
    if over == "h2":
        assert value(samples, "gatewayd_http2_connections_open") >= 1  # the scrape's own connection
    assert value(samples, "gatewayd_connections_open") >= 1


@pytest_twisted.ensureDeferred
async def test_http1_and_h2_scrapes_read_the_same_registry(gateway: RunningGateway, clients: Any) -> None:
    client, key, session = await clients("connect")
    await ok_and_rejected(client, key, session)
    over_h1, over_h2 = await scrape(gateway, "http1"), await scrape(gateway, "h2")
    name = "gatewayd_rpc_calls_total"
    for code in ("OK", "UNAUTHENTICATED"):
        labels = {"protocol": "connect", "method": EXECUTE, "code": code}
        assert value(over_h1, name, **labels) == value(over_h2, name, **labels) == 1
    assert gateway.gateway.metrics.registry is not GatewayMetrics().registry


@pytest_twisted.ensureDeferred
async def test_push_streams_and_events(gateway: RunningGateway, clients: Any) -> None:
    await gateway.gateway.push.when_connected()
    client, _, _ = await clients("grpc")
    events: list[VerifiedEvent] = []
    stream = client.subscribe(events.append)
    await until(lambda: len(events) >= 1, "gateway.server_time")
    samples = await scrape(gateway)
    assert value(samples, "gatewayd_push_streams_open") == 1
    assert value(samples, "gatewayd_push_consumer_state", gatewayd_push_consumer_state="connected") == 1
    assert value(samples, "gatewayd_push_consumer_state", gatewayd_push_consumer_state="backoff") == 0
    before_in = value(samples, "gatewayd_push_events_in_total")

    await client.execute("user.notes.create", {"text": "counted"})
    await until(lambda: len(events) >= 2, "user.note.created")
    samples = await scrape(gateway)
    assert value(samples, "gatewayd_push_events_in_total") == before_in + 1
    assert value(samples, "gatewayd_push_events_delivered_total") >= 1

    stream.cancel()
    with pytest.raises(Exception):  # noqa: B017 (cancelled: whichever shape the client gives it)
        await stream
    await until(lambda: len(gateway.gateway.hub) == 0, "the stream to unregister")
    samples = await scrape(gateway)
    assert value(samples, "gatewayd_push_streams_open") == 0
    assert value(samples, "gatewayd_rpc_calls_total", protocol="grpc", method=SUBSCRIBE, code="CANCELLED") == 1


@pytest_twisted.ensureDeferred
async def test_revocations_and_the_streams_they_end(gateway: RunningGateway, clients: Any) -> None:
    await gateway.gateway.push.when_connected()
    client, _, session = await clients("grpc")
    events: list[VerifiedEvent] = []
    stream = client.subscribe(events.append)
    await until(lambda: len(events) >= 1, "gateway.server_time")
    before = await scrape(gateway)
    assert value(before, "gatewayd_push_streams_revoked_total") == 0
    assert value(before, "gatewayd_push_resyncs_total") >= 1  # the push stream's first subscribe
    assert value(before, "gatewayd_push_resync_pending") == 0

    assert gateway.backend.revoke_sessions(session.user_id, session.device_session_id) == 1
    with pytest.raises(RpcCallError) as ended:
        await stream
    assert ended.value.code == Code.FAILED_PRECONDITION
    samples = await scrape(gateway)
    invalidations = "gatewayd_push_invalidations_total"
    assert value(samples, invalidations) == value(before, invalidations) + 1
    assert value(samples, "gatewayd_push_streams_revoked_total") == 1
    assert value(samples, "gatewayd_push_subscriptions_refused_total") == 0
    for name in ("gatewayd_push_resyncs_total", "gatewayd_push_resync_streams_ended_total",
                 "gatewayd_push_resync_lookup_errors_total", "gatewayd_push_resync_errors_total",
                 "gatewayd_push_resync_sessions_checked_total", "gatewayd_push_resync_sessions_revoked_total",
                 "gatewayd_push_consumer_handler_errors_total"):
        assert (name, frozenset()) in samples, name  # exported even while 0
        assert value(samples, name) == value(before, name), name


@pytest.mark.parametrize("over", ["http1", "h2"])
@pytest_twisted.ensureDeferred
async def test_other_paths_still_reach_the_public_surface(gateway: RunningGateway, over: str) -> None:
    port = gateway.port.getHost().port
    get = http1 if over == "http1" else h2c
    keys = await get(port, "GET", "/api/v1/public/gateway-keys")
    assert keys.status == 200
    assert gateway.gateway.keyring.signer.key_id in keys.body.decode()
    assert (await get(port, "GET", "/metrics/")).status == 404
    assert (await get(port, "GET", "/metricsx")).status == 404
    assert (await get(port, "POST", "/metrics", body=b"x")).status == 405


@pytest_twisted.ensureDeferred
async def test_backend_failures_are_counted(gateway: RunningGateway, clients: Any) -> None:
    client, _, _ = await clients("connect")
    await client.execute("user.profile.get")
    await gateway.stop_backend()
    with pytest.raises(RpcCallError) as info:
        await client.execute("user.profile.get")
    assert info.value.code == Code.UNAVAILABLE
    samples = await scrape(gateway)
    assert value(samples, "gatewayd_backend_errors_total", operation="route", reason="unavailable") == 1
    assert value(samples, "gatewayd_pipeline_rejections_total", stage="route", code="UNAVAILABLE") == 1


@pytest_twisted.ensureDeferred
async def test_separate_metrics_endpoint(gateway: RunningGateway, clients: Any) -> None:
    client, key, session = await clients("connect")
    await ok_and_rejected(client, key, session)
    service = MetricsService(reactor, "tcp:0:interface=127.0.0.1", gateway.gateway.metrics)
    await service.startService()
    try:
        port = service.port.getHost().port
        answer = await http1(port, "GET", "/metrics")
        assert answer.status == 200
        samples = parse(answer.body)
        assert value(samples, "gatewayd_rpc_calls_total", protocol="connect", method=EXECUTE, code="OK") == 1
        assert (await http1(port, "GET", "/api/v1/public/gateway-keys")).status == 404
    finally:
        await service.stopService()
    assert service.port is None


def test_gateways_have_their_own_registries() -> None:
    from gatewayd.rpc.call import Call

    a, b = GatewayMetrics(process=False), GatewayMetrics(process=False)
    a.observe_call(Call(EXECUTE, "grpc", {}, "127.0.0.1"), Code.OK, 0.01)
    assert a.registry.get_sample_value(
        "gatewayd_rpc_calls_total", {"protocol": "grpc", "method": EXECUTE, "code": "OK"}) == 1
    assert b.registry.get_sample_value(
        "gatewayd_rpc_calls_total", {"protocol": "grpc", "method": EXECUTE, "code": "OK"}) is None


@pytest.mark.parametrize("over", ["http1", "h2"])
@pytest_twisted.ensureDeferred
async def test_metrics_root_in_front_of_a_klein_app(over: str) -> None:
    """klein is a leaf resource routing on the whole path: it must see paths untouched."""
    from klein import Klein

    from gatewayd.observability import wrap_with_metrics
    from gatewayd.testing.server import serve

    app = Klein()

    @app.route("/", branch=True)
    def anything(request: Any) -> bytes:
        return b"klein saw " + request.path

    metrics = GatewayMetrics(process=False)
    server = await serve([], web_resource=wrap_with_metrics(app.resource(), metrics))
    try:
        get = http1 if over == "http1" else h2c
        for path in ("/", "/api/v1/public/x", "/metrics/", "/metrics/x", "/metricsx"):
            answer = await get(server.port, "GET", path)
            assert (answer.status, answer.body) == (200, b"klein saw " + path.encode()), path
        answer = await get(server.port, "GET", "/metrics")
        assert answer.status == 200
        assert b"# TYPE gatewayd_rpc_calls_total counter" in answer.body
    finally:
        await server.stop()


@pytest_twisted.ensureDeferred
async def test_redis_round_trips_are_observed(tmp_path: Any, redis_server: RedisServer) -> None:
    gw = await start_gateway(str(tmp_path / "state"), stores={"kind": "redis", "redis_url": redis_server.url})
    made: list[GatewayClient] = []
    try:
        await ready(gw.gateway.stores)
        key, session = await login(gw.url, new_email("metrics"))
        client = GatewayClient(gw.url, "connect", key=key, session=session, timeout_s=5.0)
        made.append(client)
        await client.execute("user.profile.get")
        samples = await scrape(gw)
        count = "gatewayd_store_operation_duration_seconds_count"
        # One round trip for the replay reservation and the four budgets together...
        assert value(samples, count, store="admission", operation="admit") == 1
        # ... and the public surface's login budgets, one script each.
        assert value(samples, count, store="rate", operation="consume") >= 1
        assert not [k for k in samples if k[0] == "gatewayd_store_errors_total"]
    finally:
        for c in made:
            await c.close()
        await gw.stop()


@pytest_twisted.ensureDeferred
async def test_the_backend_pool_shows_its_connections(gateway: RunningGateway, clients: Any) -> None:
    client, _, _ = await clients("connect")
    await client.execute("user.profile.get")
    samples = await scrape(gateway)
    assert value(samples, "gatewayd_backend_pool_connections_max") == 64
    assert value(samples, "gatewayd_backend_pool_connections_open") >= 1
    assert value(samples, "gatewayd_backend_pool_connections_in_use") == 0
    assert value(samples, "gatewayd_backend_pool_waiting") == 0
    assert value(samples, "gatewayd_backend_pool_waiting_max") == 1024
    assert value(samples, "gatewayd_backend_pool_refused_total") == 0


@pytest_twisted.ensureDeferred
async def test_the_access_log_sink_counts_what_it_drops(gateway: RunningGateway, clients: Any, tmp_path: Any) -> None:
    samples = await scrape(gateway)
    assert value(samples, "gatewayd_access_log_records_dropped_total") == 0
    assert value(samples, "gatewayd_access_log_write_errors_total") == 0
    assert ("gatewayd_access_log_pending_bytes", frozenset()) in samples
    access = gateway.gateway.access_log
    # A bound no record fits in: every record is dropped and counted, none written.
    access.configure(AccessLogConfig(target=str(tmp_path / "access.log"), buffer_bytes=10, max_pending_bytes=10))
    client, _, _ = await clients("grpc")
    await client.execute("user.profile.get")
    await client.execute("user.profile.get")
    samples = await scrape(gateway)
    assert value(samples, "gatewayd_access_log_records_dropped_total") >= 2
    assert value(samples, "gatewayd_access_log_pending_bytes") == 0
    await access.close()
    assert (tmp_path / "access.log").read_text() == ""


def test_store_and_backend_failures_get_bounded_reasons() -> None:
    from twisted.internet.defer import CancelledError
    from twisted.python.failure import Failure

    from gatewayd.backend.rest import BackendUnavailable
    from gatewayd.stores.base import StoreUnavailable

    metrics = GatewayMetrics(process=False)
    metrics.observe_store("admission", "admit", 0.002, Failure(StoreUnavailable("redis down")))
    metrics.observe_store("admission", "admit", 0.001, Failure(CancelledError()))
    metrics.observe_store("admission", "admit", 0.001, None)
    metrics.observe_backend("route", 5.0, Failure(BackendUnavailable("backend timed out")))
    metrics.observe_backend("route", 0.01, Failure(ValueError("a bug")))
    get = metrics.registry.get_sample_value
    admission = {"store": "admission", "operation": "admit"}
    assert get("gatewayd_store_errors_total", {**admission, "reason": "unavailable"}) == 1
    assert get("gatewayd_store_errors_total", {**admission, "reason": "cancelled"}) == 1
    assert get("gatewayd_store_operation_duration_seconds_count", admission) == 3
    assert get("gatewayd_store_operation_duration_seconds_sum", admission) == pytest.approx(0.004)
    assert get("gatewayd_backend_errors_total", {"operation": "route", "reason": "timeout"}) == 1
    assert get("gatewayd_backend_errors_total", {"operation": "route", "reason": "error"}) == 1
    route = {"operation": "route"}
    assert get("gatewayd_backend_request_duration_seconds_bucket", {**route, "le": "0.01"}) == 1
    assert get("gatewayd_backend_request_duration_seconds_bucket", {**route, "le": "2.5"}) == 1
    assert get("gatewayd_backend_request_duration_seconds_bucket", {**route, "le": "5.0"}) == 2
    assert get("gatewayd_backend_request_duration_seconds_bucket", {**route, "le": "+Inf"}) == 2


@pytest_twisted.ensureDeferred
async def test_metrics_listen_takes_metrics_off_the_main_port(tmp_path: Any) -> None:
    gw = await start_gateway(str(tmp_path / "state"), server={"metrics_listen": "tcp:0:interface=127.0.0.1"})
    service = MetricsService(reactor, gw.gateway.config.server.metrics_listen, gw.gateway.metrics)
    try:
        await service.startService()
        main = gw.port.getHost().port
        assert (await http1(main, "GET", "/metrics")).status == 404
        assert (await http1(main, "GET", "/api/v1/public/gateway-keys")).status == 200
        answer = await http1(service.port.getHost().port, "GET", "/metrics")
        assert answer.status == 200
        assert value(parse(answer.body), "gatewayd_push_streams_open") == 0
    finally:
        await service.stopService()
        await gw.stop()
