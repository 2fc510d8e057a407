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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet import defer, endpoints
from twisted.logger import Logger, globalLogPublisher
from twisted.web.resource import IResource

from gatewayd import gc_policy
from gatewayd.backend.push_consumer import PushConsumer
from gatewayd.backend.rest import BackendClient
from gatewayd.backend.sessions import SessionCache
from gatewayd.backend.tls import BackendTLS, push_connector
from gatewayd.backlog import with_backlog
from gatewayd.config import Config, ConfigError
from gatewayd.health import NOT_SERVING, HealthService
from gatewayd.heartbeat import Heartbeats
from gatewayd.observability import GatewayMetrics, MetricsService, wrap_with_metrics
from gatewayd.observability.access import AccessLog
from gatewayd.observability.instrument import attach
from gatewayd.observability.level import LevelGate
from gatewayd.observability.propagation import ClientTraceBackend
from gatewayd.pipeline.pipeline import Pipeline, gateway_methods
from gatewayd.pipeline.signer import EventSigner, ResponseSigner
from gatewayd.push.dispatcher import Dispatcher
from gatewayd.push.hub import Hub
from gatewayd.push.resync import SessionResync
from gatewayd.push.subscribe import SubscribeEvents
from gatewayd.reflection import ReflectionService
from gatewayd.reload import Reloader, ServerTLS, tls_options
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.methods import Method, MethodTable
from gatewayd.signing import GatewayKey, KeyFileError, Keyring, load_public_key
from gatewayd.static import with_app
from gatewayd.stores.base import build_stores
from gatewayd.transport.cors import CorsPolicy
from gatewayd.transport.server import build_factory

if TYPE_CHECKING:
    from gatewayd.observability.tracing import TracedBackend, Tracing

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


def load_backend_tls(config: Config) -> BackendTLS | None:
    """The ``backend.tls_*`` files, when an https base URL or a ``tls:`` push endpoint needs them."""
    backend = config.backend
    if not (backend.base_url.startswith("https:") or backend.push_endpoint.startswith("tls:")):
        return None
    try:
        return BackendTLS.from_config(backend)
    except ConfigError as e:
        raise StartupError(str(e)) from None


def build_tracing(config: Config) -> Tracing | None:
    """The gateway's tracing when ``[tracing]`` enables it (OpenTelemetry is imported only then)."""
    if not config.tracing.enabled:
        return None
    from gatewayd.observability.tracing import Tracing

    return Tracing(config.tracing)


class Gateway:
    """Every part of one gateway instance, built from config (nothing listens yet)."""

    def __init__(self, config: Config, reactor: Any, web_resource: IResource | None = None) -> None:
        self.config = config
        self.reactor = reactor
        self.keyring = load_keyring(config)
        key = self.keyring.signer
        self.metrics = GatewayMetrics()
        try:
            self.access_log = AccessLog(config.access_log, clock=reactor)  # opens access_log.target, if any
        except ConfigError as e:
            raise StartupError(str(e)) from None
        self.tracing = build_tracing(config)  # None when tracing is off
        self.stores = build_stores(config.stores, reactor, observer=self.metrics.observe_store)
        backend = config.backend
        self.backend_tls = load_backend_tls(config)  # None unless the backend is reached over TLS
        self.backend = BackendClient(reactor, backend.base_url, backend.timeout_s, backend.max_connections,
                                     max_waiting=backend.max_waiting, observer=self.metrics.observe_backend,
                                     tls=None if self.backend_tls is None else self.backend_tls.policy())
        # The pipeline's backend calls carry the calling client's trace context (and, traced, a span each).
        self.backend_calls: ClientTraceBackend | TracedBackend = ClientTraceBackend(self.backend)
        if self.tracing is not None:
            self.tracing.trace_stores(self.stores, config.stores.kind)
            self.backend_calls = self.tracing.backend(self.backend, backend.base_url)
        self.sessions = SessionCache(
            self.backend_calls.get_session, reactor, backend.session_cache_ttl_s, backend.session_cache_size
        )
        self.response_signer = ResponseSigner(key, reactor)
        self.event_signer = EventSigner(key, reactor)
        self.pipeline = Pipeline(
            clock=reactor,
            sessions=self.sessions,
            stores=self.stores,
            backend=self.backend_calls,
            routes=config.routes,
            signer=self.response_signer,
            freshness_window_s=config.security.freshness_window_s,
            limits=config.limits,
            on_stage=self.metrics.observe_stage,
            wrap_stage=None if self.tracing is None else self.tracing.wrap_stage,
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
        # Invalidations sent while the push stream is down are lost: re-check whenever it is (back) up.
        self.resync = SessionResync(self.hub, self.sessions, self.hub.revoke, backend.push_resync_concurrency)
        self.health = HealthService(["", GATEWAY_SERVICE])
        self.methods = MethodTable()
        self.heartbeats = Heartbeats(reactor, config.server.heartbeat_interval_s, self.event_signer)
        subscribe = self.heartbeats.wrap(self.subscribe)
        for method in [*self.health.methods(), *gateway_methods(self.pipeline, subscribe)]:
            self.methods.add(self._traced(method))
        if config.server.reflection:
            for method in ReflectionService(self.methods).methods():
                self.methods.add(self._traced(method))
        self.cors = CorsPolicy(config.server.cors_origins, dev=config.dev.enabled)
        if web_resource is None:
            web_resource = with_app(self._public_resource(), config)
            if not config.server.metrics_listen:
                web_resource = wrap_with_metrics(web_resource, self.metrics)
        self.web_resource = web_resource
        self.factory, self.rpc = build_factory(self.methods, reactor, config.server, self.web_resource, self.cors)
        self.rpc.on_finish = self.access_log.rpc_finished
        if self.tracing is not None:
            self.rpc.observers.append(self.tracing.call_finished)
        gateway_id = backend.gateway_id or f"{socket.gethostname()}-{os.getpid()}"
        try:
            push_connect = push_connector(reactor, backend.push_endpoint, self.backend_tls)
        except ConfigError as e:
            raise StartupError(str(e)) from None
        self.push = PushConsumer(
            reactor,
            push_connect,
            gateway_id,
            self.dispatcher,
            backoff_initial_s=backend.push_backoff_initial_s,
            backoff_max_s=backend.push_backoff_max_s,
            on_subscribed=self.resync,
        )
        attach(self, self.metrics)

    def _traced(self, method: Method) -> Method:
        return method if self.tracing is None else self.tracing.wrap_method(method)

    def _public_resource(self) -> IResource:
        from gatewayd.public.app import PublicApp

        self.public_app = app = PublicApp(
            backend=self.backend,
            rate=self.stores.rate,
            keyring=self.keyring,
            clock=self.reactor,
            config=self.config.public,
            cors=self.cors,
            trusted_proxies=self.config.server.trusted_proxies,
            readiness=self.readiness(),
        )
        return self.access_log.wrap_rest(app.resource(), app.client_ip)

    def reconfigure(self, config: Config, keyring: Keyring) -> None:
        """Apply a reloaded config's keys, budgets, routes, CORS origins, access log, heartbeats (reload.py)."""
        self.config = config
        self.keyring = keyring
        self.response_signer.use_key(keyring.signer)
        self.event_signer.use_key(keyring.signer)
        self.pipeline.reconfigure(config.routes, config.limits)
        self.public_app.reconfigure(keyring, config.public)
        self.cors.use_origins(config.server.cors_origins)
        self.access_log.configure(config.access_log)
        self.heartbeats.interval_s = config.server.heartbeat_interval_s

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

    def __init__(self, config: Config, reactor: Any, before_start: Any = None, config_path: Path | None = None,
                 overrides: Callable[[Config], Config] = lambda c: c) -> None:
        self.config = config
        self.reactor = reactor
        self.gateway: Gateway | None = None
        self.port: Any = None
        self.tls: ServerTLS | None = None
        self.level_gate = LevelGate(config.log.level)
        self.reloader = Reloader(self, config_path, overrides)
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
        self.tls = getattr(endpoint, "tls", None)
        self.port = yield endpoint.listen(gateway.factory)
        # Once the reactor runs: twist begins logging (the observers the gate wraps) only then.
        self.reactor.callWhenRunning(self.level_gate.install, globalLogPublisher)
        self.reactor.callWhenRunning(self.reloader.install, self.reactor)
        gateway.push.start()
        if self.config.server.metrics_listen:
            self.metrics_service = MetricsService(self.reactor, self.config.server.metrics_listen, gateway.metrics)
            yield self.metrics_service.startService()
        # Start-up is done: what it built leaves the cyclic GC's view (gatewayd/gc_policy.py).
        server = self.config.server
        gc_set = gc_policy.apply(gc_policy.GcPolicy(server.gc_thresholds, server.gc_freeze))
        host = self.port.getHost()
        log.info(
            "gatewayd listening on {host}:{port} (key {key_id}, stores {stores}; gc {gc})",
            host=host.host, port=host.port, key_id=gateway.keyring.signer.key_id,
            stores=self.config.stores.kind, gc=gc_set,
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
        if gateway.tracing is not None:
            await gateway.tracing.shutdown()
        self.level_gate.uninstall()
        if self.metrics_service is not None:
            # Last: scrapes keep working while connections drain.
            await self.metrics_service.stopService()
        await _access_log_closed(self.reactor, gateway.access_log)
        log.info("gatewayd stopped")
        if getattr(self.reactor, "_exitSignal", None) == signal.SIGTERM:
            # twist re-raises the signal that stopped the reactor once it exits; a SIGTERM
            # that drained cleanly is a normal stop, and PROTOCOL.md section 7 says exit 0.
            self.reactor._exitSignal = None


ACCESS_LOG_CLOSE_TIMEOUT_S = 5.0


async def _access_log_closed(reactor: Any, access_log: AccessLog) -> None:
    """Write the access log's last records (every call has ended); give up on a target blocked that long."""
    closed = access_log.close()
    timer = reactor.callLater(ACCESS_LOG_CLOSE_TIMEOUT_S, closed.cancel)
    try:
        await closed
    except defer.CancelledError:
        log.warn("shutting down: the access log's target took over {timeout} s, records left unwritten",
                 timeout=ACCESS_LOG_CLOSE_TIMEOUT_S)
    if timer.active():
        timer.cancel()


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
    """The listening endpoint; with a certificate configured, TLS offering ALPN h2 and http/1.1.

    The TLS endpoint's ``tls`` (a ``ServerTLS``) is what a reload swaps the certificate in.
    """
    endpoint = endpoints.serverFromString(reactor, with_backlog(config.server.listen, config.server.listen_backlog))
    if not config.server.tls_certificate:
        return endpoint
    from twisted.protocols.tls import TLSMemoryBIOFactory

    try:
        tls = ServerTLS(tls_options(config))
    except ConfigError as e:
        raise StartupError(str(e)) from None

    class TLSEndpoint:
        def __init__(self) -> None:
            self.tls = tls

        def listen(self, factory: Any) -> Any:
            return endpoint.listen(TLSMemoryBIOFactory(tls, False, factory))

    return TLSEndpoint()
