"""``grpc.health.v1.Health``: Check and Watch over every protocol."""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet import defer

from gatewayd._proto.grpc.health.v1 import health_pb2
from gatewayd.rpc.call import Call, ServerStream
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.methods import Method

ServingStatus = health_pb2.HealthCheckResponse.ServingStatus
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN


class HealthService:
    """Serving status per service name (``""`` is the whole server).

    ``set`` notifies every ``Watch`` of that service whose last sent status differs.
    """

    def __init__(self, services: Iterable[str] = ("",)) -> None:
        self._status: dict[str, int] = {name: SERVING for name in services}
        self._watchers: dict[str, dict[ServerStream, defer.Deferred[None]]] = {}

    def set(self, service: str, status: int) -> None:
        if self._status.get(service) == status:
            return
        self._status[service] = status
        for stream in list(self._watchers.get(service, ())):
            stream.send(health_pb2.HealthCheckResponse(status=status))  # type: ignore[arg-type]

    def set_all(self, status: int) -> None:
        for service in list(self._status):
            self.set(service, status)

    def check(
        self, call: Call, request: health_pb2.HealthCheckRequest
    ) -> defer.Deferred[health_pb2.HealthCheckResponse]:
        status = self._status.get(request.service)
        if status is None:
            return defer.fail(RpcError(Code.NOT_FOUND, f"unknown service {request.service!r}"))
        return defer.succeed(health_pb2.HealthCheckResponse(status=status))  # type: ignore[arg-type]

    def watch(self, call: Call, request: health_pb2.HealthCheckRequest, stream: ServerStream) -> defer.Deferred[None]:
        service = request.service
        status = self._status.get(service, SERVICE_UNKNOWN)
        stream.send(health_pb2.HealthCheckResponse(status=status))  # type: ignore[arg-type]
        watchers = self._watchers.setdefault(service, {})

        def unwatch(_: object) -> None:
            watchers.pop(stream, None)
            if not watchers:
                self._watchers.pop(service, None)

        # Fires only when the client cancels, the deadline passes, or shutdown ends it.
        done: defer.Deferred[None] = defer.Deferred(canceller=unwatch)
        watchers[stream] = done
        return done

    def close_watches(self, error: RpcError) -> None:
        """End every Watch with ``error`` (graceful shutdown)."""
        for service in list(self._watchers):
            for done in list(self._watchers.pop(service).values()):
                done.errback(error)

    def watcher_count(self) -> int:
        return sum(len(w) for w in self._watchers.values())

    def methods(self) -> list[Method]:
        request, response = health_pb2.HealthCheckRequest, health_pb2.HealthCheckResponse
        return [
            Method("/grpc.health.v1.Health/Check", request, response, unary=self.check),
            Method("/grpc.health.v1.Health/Watch", request, response, stream=self.watch),
        ]
