"""Run a method table on a real loopback port inside the test's reactor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, endpoints
from twisted.internet import reactor as default_reactor
from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import IResource

from gatewayd.config import ServerConfig
from gatewayd.rpc.methods import Method, MethodTable
from gatewayd.rpc.server import RpcApplication
from gatewayd.testing.loopback import OnLoopback
from gatewayd.transport.cors import CorsPolicy
from gatewayd.transport.listener import GatewayFactory
from gatewayd.transport.server import build_factory


@dataclass
class RunningServer(OnLoopback):
    """A listening server: its port, factory (connections) and RPC application (active calls)."""

    port: int
    listening: IListeningPort
    factory: GatewayFactory
    app: RpcApplication

    @defer.inlineCallbacks
    def stop(self) -> Any:
        """Stop listening and close every connection."""
        yield self.listening.stopListening()
        for protocol in list(self.factory.connections):
            transport: Any = protocol.transport
            if transport is not None:
                transport.abortConnection()


@defer.inlineCallbacks
def serve(methods: list[Method] | MethodTable, config: ServerConfig | None = None,
          web_resource: IResource | None = None, cors: CorsPolicy | None = None, reactor: Any = None) -> Any:
    """Listen on a free loopback port; fires with a ``RunningServer``."""
    reactor = reactor or default_reactor
    if isinstance(methods, MethodTable):
        table = methods
    else:
        table = MethodTable()
        for method in methods:
            table.add(method)
    factory, app = build_factory(table, reactor, config or ServerConfig(), web_resource, cors)
    endpoint = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    listening = yield endpoint.listen(factory)
    return RunningServer(listening.getHost().port, listening, factory, app)
