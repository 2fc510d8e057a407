"""Wiring: every part built from ``Config`` in one place, started and stopped in order.

Start: keys → stores → backend client and session cache → pipeline, hub,
dispatcher → method table → listener → push consumer.
Stop (PROTOCOL.md section 7, DESIGN.md lessons): stop accepting → close the
hub (streams end UNAVAILABLE) → GOAWAY every HTTP/2 connection and let
in-flight calls finish within ``server.drain_timeout_s`` → abort what is left
→ stop the push consumer → close the backend pool and the stores.
"""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.web.resource import IResource

from gatewayd.backend.push_consumer import PushConsumer
from gatewayd.backend.rest import BackendClient
from gatewayd.backend.sessions import SessionCache
from gatewayd.config import Config
from gatewayd.health import NOT_SERVING, HealthService
from gatewayd.observability import GatewayMetrics, MetricsService, wrap_with_metrics
from gatewayd.observability.instrument import attach, time_backend_client, time_store_methods
from gatewayd.pipeline.pipeline import Pipeline, gateway_methods
from gatewayd.pipeline.signer import EventSigner, ResponseSigner
from gatewayd.push.dispatcher import Dispatcher
from gatewayd.push.hub import Hub
from gatewayd.push.subscribe import SubscribeEvents
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.methods import MethodTable
from gatewayd.signing import GatewayKey, KeyFileError, Keyring, load_public_key
from gatewayd.static import with_app
from gatewayd.stores.base import build_stores
from gatewayd.transport.cors import CorsPolicy
from gatewayd.transport.server import build_factory

log = Logger()

GATEWAY_SERVICE = "gateway.v1.Gateway"


class StartupError(Exception):
    """The gateway cannot start as configured; the message says why."""


def load_keyring(config: Config) -> Keyring:
    """The signing key and published keys; dev mode creates its key in the state folder."""
    if config.dev.enabled and not config.keys.signing_key:
        key = GatewayKey.load_or_create(Path(config.dev.state_dir) / "gateway.key")
    elif not config.keys.signing_key:
        raise StartupError("keys.signing_key is not set: production mode needs a gateway signing key file")
    else:
        try:
            key = GatewayKey.load(Path(config.keys.signing_key))
        except KeyFileError as e:
            raise StartupError(str(e)) from None
    try:
        extra = tuple(load_public_key(Path(p)) for p in config.keys.published)
    except KeyFileError as e:
        raise StartupError(str(e)) from None
    return Keyring.of(key, extra)


class Gateway:
    """Every part of one gateway instance, built from config (nothing listens yet)."""

    def __init__(self, config: Config, reactor: Any, web_resource: IResource | None = None) -> None:
        self.config = config
        self.reactor = reactor
        self.keyring = load_keyring(config)
        key = self.keyring.signer
        self.metrics = GatewayMetrics()
        self.stores = build_stores(config.stores, reactor)
        if config.stores.kind != "memory":
            time_store_methods(self.stores, self.metrics)
        backend = config.backend
        self.backend = BackendClient(reactor, backend.base_url, backend.timeout_s, backend.max_connections)
        time_backend_client(self.backend, self.metrics)
        self.sessions = SessionCache(
            self.backend.get_session, reactor, backend.session_cache_ttl_s, backend.session_cache_size
        )
        self.response_signer = ResponseSigner(key, reactor)
        self.event_signer = EventSigner(key, reactor)
        self.pipeline = Pipeline(
            clock=reactor,
            sessions=self.sessions,
            stores=self.stores,
            backend=self.backend,
            routes=config.routes,
            signer=self.response_signer,
            freshness_window_s=config.security.freshness_window_s,
            limits=config.limits,
            on_stage=self.metrics.observe_stage,
        )
        self.hub = Hub(
            reactor,
            fanout_batch=config.server.fanout_batch,
            max_tombstones=config.server.revocation_tombstones,
        )
        self.subscribe = SubscribeEvents(self.pipeline, self.hub, self.event_signer, reactor)
        self.dispatcher = Dispatcher(
            self.hub, self.event_signer, self.sessions.invalidate, self.sessions.invalidate_user
        )
        self.health = HealthService(["", GATEWAY_SERVICE])
        self.methods = MethodTable()
        for method in [*self.health.methods(), *gateway_methods(self.pipeline, self.subscribe)]:
            self.methods.add(method)
        self.cors = CorsPolicy(config.server.cors_origins, dev=config.dev.enabled)
        if web_resource is None:
            web_resource = with_app(self._public_resource(), config)
            if not config.server.metrics_listen:
                web_resource = wrap_with_metrics(web_resource, self.metrics)
        self.web_resource = web_resource
        self.factory, self.rpc = build_factory(self.methods, reactor, config.server, self.web_resource, self.cors)
        gateway_id = backend.gateway_id or f"{socket.gethostname()}-{os.getpid()}"
        self.push = PushConsumer.from_endpoint_string(
            reactor,
            backend.push_endpoint,
            gateway_id,
            self.dispatcher,
            backoff_initial_s=backend.push_backoff_initial_s,
            backoff_max_s=backend.push_backoff_max_s,
        )
        attach(self, self.metrics)

    def _public_resource(self) -> IResource:
        from gatewayd.public.app import PublicApp

        return PublicApp(
            backend=self.backend,
            rate=self.stores.rate,
            keyring=self.keyring,
            clock=self.reactor,
            config=self.config.public,
            cors=self.cors,
            trusted_proxies=self.config.server.trusted_proxies,
            readiness=self.readiness(),
        ).resource()

    def readiness(self) -> dict[str, Any]:
        """Named dependency checks for ``/readyz``: each a callable returning bool or a Deferred."""

        def backend_ready() -> defer.Deferred[bool]:
            d = self.backend.get_session("readyz-probe")
            return d.addCallbacks(lambda _: True, lambda _: False)

        return {
            "backend": backend_ready,
            "stores": self.stores.ping,
            "push": lambda: self.push.connected,
        }


class GatewayService(Service):
    """The ``twist gatewayd`` service: listens, runs the push consumer, stops in order."""

    def __init__(self, config: Config, reactor: Any, before_start: Any = None) -> None:
        self.config = config
        self.reactor = reactor
        self.gateway: Gateway | None = None
        self.port: Any = None
        self.before_start = before_start  # dev mode: start the in-process backend first
        self.metrics_service: Any = None
        self._stopping: defer.Deferred[None] | None = None

    def startService(self) -> defer.Deferred[None]:
        """Start; a failure is logged as critical and ends the process with status 1.

        twist ignores the Deferred startService returns, so a failure here would
        otherwise leave a process running that listens on nothing.
        """
        Service.startService(self)
        d: defer.Deferred[None] = self._start()
        d.addErrback(self._start_failed)
        return d

    def _start_failed(self, failure: Any) -> None:
        if failure.check(StartupError):
            log.critical("gatewayd cannot start: {reason}", reason=failure.getErrorMessage())
        else:
            log.failure("gatewayd cannot start", failure)
        self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
        self.reactor.callWhenRunning(self.reactor.stop)

    @defer.inlineCallbacks
    def _start(self) -> Any:
        if self.before_start is not None:
            self.config = yield self.before_start(self.config)
        self.gateway = gateway = Gateway(self.config, self.reactor)
        endpoint = listen_endpoint(self.reactor, self.config)
        self.port = yield endpoint.listen(gateway.factory)
        gateway.push.start()
        if self.config.server.metrics_listen:
            self.metrics_service = MetricsService(self.reactor, self.config.server.metrics_listen, gateway.metrics)
            yield self.metrics_service.startService()
        host = self.port.getHost()
        log.info(
            "gatewayd listening on {host}:{port} (key {key_id}, stores {stores})",
            host=host.host, port=host.port, key_id=gateway.keyring.signer.key_id,
            stores=self.config.stores.kind,
        )

    def stopService(self) -> defer.Deferred[None]:
        Service.stopService(self)
        if self._stopping is None:
            self._stopping = defer.ensureDeferred(self._stop())
        return self._stopping

    async def _stop(self) -> None:
        gateway = self.gateway
        if gateway is None:
            return
        factory = gateway.factory
        factory.accepting = False
        if self.port is not None:
            await self.port.stopListening()
        unavailable = RpcError(Code.UNAVAILABLE, "gateway is shutting down")
        gateway.health.set_all(NOT_SERVING)
        ended = gateway.hub.close(unavailable)
        gateway.health.close_watches(unavailable)
        log.info("shutting down: {ended} event streams ended, draining connections", ended=ended)
        drains = [conn.shutdown() for conn in list(factory.h2_connections)]
        drains += [_http1_drained(p) for p in list(factory.connections) if p.inner is not None
                   and p.inner not in factory.h2_connections]
        if drains:
            timeout = self.config.server.drain_timeout_s
            all_done = defer.DeferredList(drains, consumeErrors=True)
            timer = self.reactor.callLater(timeout, all_done.cancel)
            try:
                await all_done
            except defer.CancelledError:
                pass
            if timer.active():
                timer.cancel()
        for protocol in list(factory.connections):
            transport: Any = protocol.transport
            if transport is not None:
                transport.abortConnection()
        await gateway.push.stop()
        await gateway.backend.close()
        await gateway.stores.close()
        if self.metrics_service is not None:
            # Last: scrapes keep working while connections drain.
            await self.metrics_service.stopService()
        log.info("gatewayd stopped")
        if getattr(self.reactor, "_exitSignal", None) == signal.SIGTERM:
            # twist re-raises the signal that stopped the reactor once it exits; a SIGTERM
            # that drained cleanly is a normal stop, and PROTOCOL.md section 7 says exit 0.
            self.reactor._exitSignal = None


def _http1_drained(protocol: Any) -> defer.Deferred[None]:
    """Close an HTTP/1.1 connection once its current request (if any) is answered."""
    channel = protocol.inner
    d: defer.Deferred[None] = defer.Deferred()
    original = protocol.connectionLost

    def lost(reason: Any = None) -> None:
        original(reason)
        if not d.called:
            d.callback(None)

    protocol.connectionLost = lost
    if not getattr(channel, "_requests", None) and not getattr(channel, "requests", None):
        channel.transport.loseConnection()
    else:
        channel.persistent = False
    return d


def listen_endpoint(reactor: Any, config: Config) -> Any:
    """The listening endpoint; with a certificate configured, TLS offering ALPN h2 and http/1.1."""
    endpoint = endpoints.serverFromString(reactor, config.server.listen)
    if not config.server.tls_certificate:
        return endpoint
    from twisted.internet import ssl
    from twisted.protocols.tls import TLSMemoryBIOFactory

    pem = Path(config.server.tls_certificate).read_bytes() + Path(config.server.tls_private_key).read_bytes()
    cert = ssl.PrivateCertificate.loadPEM(pem)
    options = ssl.CertificateOptions(
        privateKey=cert.privateKey.original.to_cryptography_key(),
        certificate=cert.original.to_cryptography(),
        acceptableProtocols=[b"h2", b"http/1.1"],
    )

    class TLSEndpoint:
        def listen(self, factory: Any) -> Any:
            return endpoint.listen(TLSMemoryBIOFactory(options, False, factory))

    return TLSEndpoint()
