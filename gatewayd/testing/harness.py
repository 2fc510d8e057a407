"""A test server with scripted methods, raw clients against it, and their cleanup.

``Harness`` serves ``TestMethods`` (Health, an echo, a slow unary the test finishes by
hand, a streamer and a failing method) on a loopback port, opens ``RawH2Client`` and
``RawHttp1`` connections to it, and ``close()`` leaves no connection behind on either side.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol

from gatewayd._proto.gateway.v1 import gateway_pb2
from gatewayd._proto.grpc.health.v1 import health_pb2
from gatewayd.config import ServerConfig
from gatewayd.health import HealthService
from gatewayd.rpc.call import Call, ServerStream
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.framing import encode_frame
from gatewayd.rpc.methods import Method
from gatewayd.testing.raw_h2 import RawH2Client
from gatewayd.testing.raw_http1 import Http1Response, RawHttp1, send_http1
from gatewayd.testing.server import RunningServer, serve
from gatewayd.testing.wait import until
from gatewayd.transport.cors import CorsPolicy

CHECK = "/grpc.health.v1.Health/Check"
ECHO = "/test.v1.Test/Echo"
SLOW = "/test.v1.Test/Slow"
STREAM = "/test.v1.Test/Stream"
FAIL = "/test.v1.Test/Fail"
ORIGIN = "http://example.test"  # the browser origin tests send


class TestMethods:
    """Echo, a slow unary the test finishes by hand, a streamer, and a failing method."""

    __test__ = False

    def __init__(self) -> None:
        self.slow: list[defer.Deferred[gateway_pb2.ExecuteCommandResponse]] = []
        self.cancelled: list[str] = []

    def echo(self, call: Call, request: gateway_pb2.ExecuteCommandRequest) -> defer.Deferred[Any]:
        return defer.succeed(gateway_pb2.ExecuteCommandResponse(payload_bytes=request.payload_bytes))

    def slow_call(self, call: Call, request: gateway_pb2.ExecuteCommandRequest) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred(lambda _: self.cancelled.append(call.method))
        self.slow.append(d)
        return d

    def stream(self, call: Call, request: gateway_pb2.ExecuteCommandRequest, out: ServerStream) -> defer.Deferred[None]:
        spec = json.loads(request.payload_bytes or b"{}")
        for i in range(spec.get("count", 3)):
            out.send(gateway_pb2.GatewayEvent(event_id=str(i), payload_bytes=b"x" * spec.get("size", 10)))
        if spec.get("hold"):
            return defer.Deferred(lambda _: self.cancelled.append(call.method))
        return defer.succeed(None)

    def fail(self, call: Call, request: gateway_pb2.ExecuteCommandRequest) -> defer.Deferred[Any]:
        return defer.fail(RpcError(Code.FAILED_PRECONDITION, request.payload_bytes.decode("utf-8")))

    def methods(self) -> list[Method]:
        req, resp, event = (gateway_pb2.ExecuteCommandRequest, gateway_pb2.ExecuteCommandResponse,
                            gateway_pb2.GatewayEvent)
        return [
            *HealthService(["", "gateway.v1.Gateway"]).methods(),
            Method(ECHO, req, resp, unary=self.echo),
            Method(SLOW, req, resp, unary=self.slow_call),
            Method(STREAM, req, event, stream=self.stream),
            Method(FAIL, req, resp, unary=self.fail),
        ]


def echo_request(payload: bytes) -> bytes:
    """An ``ECHO`` request carrying ``payload``, serialized."""
    return gateway_pb2.ExecuteCommandRequest(payload_bytes=payload).SerializeToString()


def check_request(service: str = "") -> bytes:
    """A Health ``CHECK`` request for ``service``, serialized."""
    return health_pb2.HealthCheckRequest(service=service).SerializeToString()


class Harness:
    """A server for one test, its raw clients, and their cleanup."""

    def __init__(self, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.methods = TestMethods()
        self.server: RunningServer | None = None
        self.clients: list[Protocol] = []

    async def serve(self, config: ServerConfig | None = None, cors: CorsPolicy | None = None) -> RunningServer:
        self.server = await serve(self.methods.methods(), config=config, cors=cors, reactor=self.reactor)
        return self.server

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.port

    async def h2(self, **kwargs: Any) -> RawH2Client:
        """A new raw HTTP/2 connection to the server (``RawH2Client`` keyword arguments)."""
        client = RawH2Client(reactor=self.reactor, **kwargs)
        await connectProtocol(TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port), client)
        self.clients.append(client)
        return client

    async def http1(self, raw: bytes) -> Http1Response:
        """Send ``raw`` on a new connection; parse what came back before the server closed."""
        client = RawHttp1(self.reactor)
        await connectProtocol(TCP4ClientEndpoint(self.reactor, "127.0.0.1", self.port), client)
        self.clients.append(client)
        return await send_http1(client, raw)

    async def assert_healthy(self) -> None:
        """A normal Health Check on a new connection succeeds: the process stays healthy."""
        client = await self.h2()
        response = await client.call(CHECK, encode_frame(check_request()))
        assert response.grpc_status() == 0, response
        [(_, payload)] = response.messages()
        assert health_pb2.HealthCheckResponse.FromString(payload).status == health_pb2.HealthCheckResponse.SERVING
        client.transport.loseConnection()  # type: ignore[union-attr]

    async def close(self) -> None:
        """Abort the clients, stop the server, wait until every connection is gone on both sides."""
        for client in self.clients:
            if client.transport is not None and not getattr(client, "closed", True):
                client.transport.abortConnection()  # type: ignore[attr-defined]
        if self.server is not None:
            await self.server.stop()
        for client in self.clients:
            await client.wait(lambda c=client: c.closed, "client close")  # type: ignore[attr-defined]
        # Connections the server still holds learn of the loss in the next reactor turns.
        server = self.server
        if server is not None:
            await until(lambda: not server.factory.connections, "server connections to close",
                        reactor=self.reactor)
        for d in self.methods.slow:
            if not d.called:
                d.cancel()


__all__ = ["CHECK", "ECHO", "FAIL", "ORIGIN", "SLOW", "STREAM", "Harness", "TestMethods", "check_request",
           "echo_request"]
