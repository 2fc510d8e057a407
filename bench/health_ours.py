"""Our server with only grpc.health.v1.Health: ``python bench/health_ours.py PORT [MAX_STREAMS]``."""

from __future__ import annotations

import sys

from twisted.internet import endpoints, reactor

from gatewayd.config import ServerConfig
from gatewayd.health import HealthService
from gatewayd.rpc.methods import MethodTable
from gatewayd.transport.server import build_factory


def main() -> None:
    port = int(sys.argv[1])
    streams = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    table = MethodTable()
    for method in HealthService(["", "gateway.v1.Gateway"]).methods():
        table.add(method)
    config = ServerConfig(max_concurrent_streams=streams)
    factory, _app = build_factory(table, reactor, config, None, None)
    endpoints.TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(factory)
    reactor.run()


if __name__ == "__main__":
    main()
