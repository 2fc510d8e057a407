"""The Connect reference: ``connectrpc`` (ASGI) served by Hypercorn: ``python bench/health_connectrpc.py PORT``.

``grpc.health.v1.Health/Check`` from the stubs ``protoc-gen-connectrpc`` generates
(``bench/connect_gen``, google.protobuf messages), one Hypercorn process on the
asyncio event loop, HTTP/1.1 keep-alive and h2c, no access log.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from hypercorn.asyncio import serve
from hypercorn.config import Config

from bench.connect_gen.health_connect import Health, HealthASGIApplication
from gatewayd._proto.grpc.health.v1 import health_pb2

SERVING = health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


class HealthService(Health):
    """Check answers SERVING; Watch stays the generated UNIMPLEMENTED."""

    async def check(self, request: health_pb2.HealthCheckRequest, ctx: object) -> health_pb2.HealthCheckResponse:
        return SERVING


async def main() -> None:
    config = Config()
    config.bind = [f"127.0.0.1:{int(sys.argv[1])}"]
    config.accesslog = None
    config.errorlog = "-"
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await serve(HealthASGIApplication(HealthService()), config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]


if __name__ == "__main__":
    asyncio.run(main())
