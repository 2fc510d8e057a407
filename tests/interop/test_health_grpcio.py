"""grpcio (the C-core gRPC client) against gatewayd's HTTP/2 server: grpc.health.v1.Health.

The grpcio calls block, so each runs in a thread (``deferToThread``) while the
reactor keeps serving; the thread reports stream messages back through
``callFromThread``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import grpc
import pytest_twisted
from twisted.internet import defer, reactor, threads

from gatewayd._proto.grpc.health.v1 import health_pb2
from gatewayd.health import NOT_SERVING, SERVING
from gatewayd.testing.wait import until
from tests.interop._support import HealthServer

CHECK = "/grpc.health.v1.Health/Check"
WATCH = "/grpc.health.v1.Health/Watch"
Request = health_pb2.HealthCheckRequest
Response = health_pb2.HealthCheckResponse


def _check(target: str, service: str, gzip: bool = False) -> tuple[grpc.StatusCode, int | None, str]:
    """One Check: (code, status or None, details)."""
    compression = grpc.Compression.Gzip if gzip else None
    with grpc.insecure_channel(target, compression=compression) as channel:
        check = channel.unary_unary(
            CHECK, request_serializer=Request.SerializeToString, response_deserializer=Response.FromString
        )
        try:
            response = check(Request(service=service), timeout=10)
        except grpc.RpcError as e:
            return e.code(), None, e.details()
        return grpc.StatusCode.OK, response.status, ""


class _Watcher:
    """Runs a Watch in a thread; ``messages[i]`` fires on the reactor with the i-th message."""

    def __init__(self, target: str, service: str, stop_after: int, timeout: float | None = None) -> None:
        self.target = target
        self.service = service
        self.stop_after = stop_after
        self.timeout = timeout
        self.messages: list[defer.Deferred[int]] = [defer.Deferred() for _ in range(stop_after)]
        self.cancelled = threading.Event()

    def run(self) -> defer.Deferred[tuple[grpc.StatusCode, str, list[int]]]:
        return threads.deferToThread(self._run)

    def _deliver(self, index: int, status: int) -> None:
        self.messages[index].callback(status)

    def _run(self) -> tuple[grpc.StatusCode, str, list[int]]:
        received: list[int] = []
        with grpc.insecure_channel(self.target) as channel:
            watch = channel.unary_stream(
                WATCH, request_serializer=Request.SerializeToString, response_deserializer=Response.FromString
            )
            call = watch(Request(service=self.service), timeout=self.timeout)
            try:
                for response in call:
                    received.append(response.status)
                    reactor.callFromThread(self._deliver, len(received) - 1, response.status)  # type: ignore[attr-defined]
                    if len(received) >= self.stop_after:
                        call.cancel()
                        self.cancelled.set()
            except grpc.RpcError as e:
                return e.code(), e.details() or "", received
            return call.code(), call.details() or "", received


def _in_thread(fn: Callable[..., object], *args: object) -> defer.Deferred[object]:
    return threads.deferToThread(fn, *args)


@pytest_twisted.ensureDeferred
async def test_check_serving_for_each_known_service(health_server: HealthServer) -> None:
    target = health_server.server.target
    results = await defer.gatherResults([_in_thread(_check, target, s) for s in ("", "gateway.v1.Gateway")])
    assert results == [(grpc.StatusCode.OK, SERVING, "")] * 2


@pytest_twisted.ensureDeferred
async def test_check_with_gzip_requests(health_server: HealthServer) -> None:
    result = await _in_thread(_check, health_server.server.target, "gateway.v1.Gateway", True)
    assert result == (grpc.StatusCode.OK, SERVING, "")


@pytest_twisted.ensureDeferred
async def test_check_unknown_service_is_not_found(health_server: HealthServer) -> None:
    name = "no.such.Service/ünï %"  # grpc-message is percent-encoded UTF-8 on the wire
    code, status, details = await _in_thread(_check, health_server.server.target, name)
    assert code is grpc.StatusCode.NOT_FOUND
    assert status is None
    assert details == f"unknown service {name!r}"


@pytest_twisted.ensureDeferred
async def test_check_follows_status_changes(health_server: HealthServer) -> None:
    health_server.health.set("gateway.v1.Gateway", NOT_SERVING)
    _, status, _ = await _in_thread(_check, health_server.server.target, "gateway.v1.Gateway")
    assert status == NOT_SERVING


@pytest_twisted.ensureDeferred
async def test_watch_sees_serving_then_not_serving_and_cancel_frees_the_stream(
    health_server: HealthServer,
) -> None:
    watcher = _Watcher(health_server.server.target, "", stop_after=2)
    done = watcher.run()
    assert await watcher.messages[0] == SERVING
    assert health_server.health.watcher_count() == 1
    # The client holds its first message: now the change must reach it.
    health_server.health.set("", NOT_SERVING)
    assert await watcher.messages[1] == NOT_SERVING
    code, _details, received = await done
    assert received == [SERVING, NOT_SERVING]
    assert code is grpc.StatusCode.CANCELLED
    # The channel is closed with the thread, so this also covers the connection's teardown;
    # tests/interop/test_health_node.py checks the RST_STREAM path on a connection kept open.
    await until(health_server.idle, health_server.state)


@pytest_twisted.ensureDeferred
async def test_watch_deadline_ends_with_deadline_exceeded(health_server: HealthServer) -> None:
    watcher = _Watcher(health_server.server.target, "gateway.v1.Gateway", stop_after=5, timeout=0.3)
    code, _details, received = await watcher.run()
    assert received == [SERVING]
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED
    # grpcio sent grpc-timeout: the server's own timer must end the call and free it.
    await until(health_server.idle, health_server.state)
