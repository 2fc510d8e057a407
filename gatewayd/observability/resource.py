"""``/metrics`` as twisted.web resources: on the main port (wrapping the public surface) or its own.

``MetricsRoot`` serves exactly ``GET /metrics`` (and HEAD) itself and hands every
other request, path untouched, to the resource it wraps (a klein app is a leaf
resource that routes on the whole path, so the wrapped tree must see the path as
if nobody had looked at it). ``MetricsService`` listens on a separate endpoint
string (``server.metrics_listen``) and serves only ``/metrics`` there.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet import defer, endpoints
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource, getChildForRequest
from twisted.web.server import Request, Site

from gatewayd.observability.metrics import GatewayMetrics

METRICS_SEGMENT = b"metrics"


class MetricsResource(Resource):
    """The registry's exposition (text format, or OpenMetrics when the scraper asks for it)."""

    isLeaf = True

    def __init__(self, metrics: GatewayMetrics) -> None:
        super().__init__()
        self._metrics = metrics

    def render_GET(self, request: Request) -> bytes:
        accept = request.getHeader(b"accept")
        body, content_type = self._metrics.exposition(accept.decode("latin-1") if accept else None)
        request.setHeader(b"content-type", content_type.encode("latin-1"))
        request.setHeader(b"cache-control", b"no-store")
        return body

    def render_HEAD(self, request: Request) -> bytes:
        return self.render_GET(request)


class MetricsRoot(Resource):
    """A root that answers ``/metrics`` and delegates everything else to ``inner``."""

    def __init__(self, inner: IResource, metrics: IResource) -> None:
        super().__init__()
        self.inner = inner
        self.metrics = metrics

    def getChildWithDefault(self, path: bytes, request: Any) -> Any:
        if path == METRICS_SEGMENT and not request.postpath:
            return self.metrics
        # Undo the step twisted.web just took, then let the wrapped tree walk the whole path.
        request.prepath.pop()
        request.postpath.insert(0, path)
        return getChildForRequest(self.inner, request)

    def render(self, request: Any) -> Any:
        return self.inner.render(request)


def wrap_with_metrics(inner: IResource, metrics: GatewayMetrics) -> MetricsRoot:
    """``inner`` with ``/metrics`` in front of it."""
    return MetricsRoot(inner, MetricsResource(metrics))


class _MetricsOnly(Resource):
    def getChild(self, path: bytes, request: Any) -> Any:
        return notFound()


def metrics_site(metrics: GatewayMetrics) -> Site:
    """A site serving only ``/metrics`` (404 elsewhere), for a separate metrics port."""
    root = _MetricsOnly()
    root.putChild(METRICS_SEGMENT, MetricsResource(metrics))
    site = Site(root)
    site.noisy = False
    site.displayTracebacks = False
    return site


class MetricsService(Service):
    """Listens on ``endpoint`` (an endpoint string; empty: does nothing) and serves ``/metrics``."""

    def __init__(self, reactor: Any, endpoint: str, metrics: GatewayMetrics) -> None:
        self.reactor = reactor
        self.endpoint = endpoint
        self.metrics = metrics
        self.port: Any = None

    def startService(self) -> defer.Deferred[None]:
        Service.startService(self)
        if not self.endpoint:
            return defer.succeed(None)
        d = endpoints.serverFromString(self.reactor, self.endpoint).listen(metrics_site(self.metrics))

        def listening(port: Any) -> None:
            self.port = port

        return d.addCallback(listening)

    def stopService(self) -> defer.Deferred[None]:
        Service.stopService(self)
        port, self.port = self.port, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)


__all__ = ["MetricsResource", "MetricsRoot", "MetricsService", "metrics_site", "wrap_with_metrics"]
