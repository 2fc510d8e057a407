"""Observability of gatewayd: Prometheus metrics per gateway and JSON-lines logs.

- ``GatewayMetrics`` and the hooks in ``instrument``: what ``Gateway.__init__`` wires.
- ``MetricsService``: ``/metrics`` on a separate endpoint (``server.metrics_listen``).
- ``gatewayd.observability.logs``: a twisted.logger observer writing one JSON object
  per line, with payloads, keys and signatures left out.
"""

from gatewayd.observability.metrics import GatewayMetrics
from gatewayd.observability.resource import MetricsResource, MetricsRoot, MetricsService, wrap_with_metrics

__all__ = [
    "GatewayMetrics", "MetricsResource", "MetricsRoot", "MetricsService", "wrap_with_metrics",
]
