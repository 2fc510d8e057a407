"""Put a DevBackend on its ports: HTTP (twisted.web) and push (push.v1.Push on the gateway gRPC server)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import serverFromString
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger

from gatewayd.backlog import DEFAULT_BACKLOG, with_backlog
from gatewayd.devbackend.push import push_methods
from gatewayd.devbackend.service import DevBackend, make_http_site
from gatewayd.devbackend.tls import with_tls

_log = Logger()


@dataclass
class PushServer:
    """The listening push port and the factory holding its connections."""

    port: Any  # IListeningPort (Any: mypy cannot call methods declared on a zope Interface)
    factory: Any  # gatewayd.transport.listener.GatewayFactory

    @property
    def port_number(self) -> int:
        return int(self.port.getHost().port)

    @inlineCallbacks
    def stop(self) -> Any:
        """Stop listening and drop every connection.

        SubscribePush calls never end on their own, so there is nothing to
        drain: the gateways' push consumers see the connection go and redial.
        """
        yield self.port.stopListening()
        for protocol in list(self.factory.connections):
            if protocol.transport is not None:
                protocol.transport.abortConnection()


@inlineCallbacks
def serve_push(reactor: Any, endpoint: str, backend: DevBackend, backlog: int = DEFAULT_BACKLOG,
               tls: CertificateOptions | None = None) -> Any:
    """Listen on ``endpoint`` (an endpoint string) serving ``push_methods(backend.bus)`` over
    gRPC (HTTP/2; the gateway's own server, so gRPC-Web and Connect work too), behind TLS with
    ``tls`` (ALPN h2 picks HTTP/2, as on the gateway's port).

    Fires with a ``PushServer``. Raises ``NotImplementedError`` if the gateway's
    transport (``gatewayd.transport.server``) is not installed.
    """
    try:
        # Imported lazily: the HTTP-only uses of the dev backend do not need the gRPC stack.
        from twisted.web.pages import notFound

        from gatewayd.config import ServerConfig
        from gatewayd.rpc.methods import MethodTable
        from gatewayd.transport.server import build_factory
    except ImportError as e:
        raise NotImplementedError(f"the dev backend cannot serve push.v1.Push: {e}") from None
    table = MethodTable()
    for method in push_methods(backend.bus):
        table.add(method)
    # Server defaults; the idle timeout only applies to connections without an open call.
    factory, _app = build_factory(table, reactor, ServerConfig(), notFound())
    port = yield serverFromString(reactor, with_backlog(endpoint, backlog)).listen(with_tls(factory, tls))
    return PushServer(port, factory)


class DevBackendService(Service):
    """Runs a ``DevBackend`` on an HTTP endpoint and a push (gRPC) endpoint.

    ``http_port`` (an ``IListeningPort``) and ``push_server`` are set once started.
    Both listen with ``backlog`` (unless their endpoint strings name one): the
    gateway opens up to ``backend.max_connections`` connections at once. With ``tls``
    (``gatewayd.devbackend.tls.server_tls_options``) both speak TLS.
    """

    def __init__(self, reactor: Any, backend: DevBackend, http_endpoint: str, push_endpoint: str,
                 backlog: int = DEFAULT_BACKLOG, tls: CertificateOptions | None = None) -> None:
        self.reactor = reactor
        self.tls = tls
        self.backlog = backlog
        self.backend = backend
        self.http_endpoint = http_endpoint
        self.push_endpoint = push_endpoint
        self.http_port: Any = None
        self.push_server: PushServer | None = None

    @inlineCallbacks
    def startService(self) -> Any:
        Service.startService(self)
        self.http_port = yield serverFromString(self.reactor, with_backlog(self.http_endpoint, self.backlog)).listen(
            with_tls(make_http_site(self.backend), self.tls)
        )
        self.push_server = yield serve_push(self.reactor, self.push_endpoint, self.backend, self.backlog, self.tls)
        _log.info(
            "dev backend: HTTP on {http}, push on {push}",
            http=self.http_port.getHost(),
            push=self.push_server.port.getHost() if self.push_server else None,
        )

    @inlineCallbacks
    def stopService(self) -> Any:
        Service.stopService(self)
        if self.push_server is not None:
            yield self.push_server.stop()
            self.push_server = None
        if self.http_port is not None:
            yield self.http_port.stopListening()
            self.http_port = None
