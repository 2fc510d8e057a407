"""Wiring a gateway's ``GatewayMetrics`` to the parts that exist only once it is built.

Every other observer is passed to its part at construction (``Gateway.__init__``):
``Pipeline(on_stage=metrics.observe_stage)``, ``BackendClient(observer=metrics.observe_backend)``,
``build_stores(observer=metrics.observe_store)``. ``attach`` adds the RPC observer (calls,
end-to-end latency) to the method table's application and registers the scrape-time
collector over the parts' typed ``stats``. ``/metrics`` is put in front of the web
resource with ``wrap_with_metrics`` (unless ``server.metrics_listen`` names a separate endpoint).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gatewayd.observability.collector import GatewayCollector
from gatewayd.observability.metrics import GatewayMetrics
from gatewayd.observability.stats import StatsSources

if TYPE_CHECKING:
    from gatewayd.service import Gateway


def attach(gateway: Gateway, metrics: GatewayMetrics) -> None:
    """The RPC observer, and the scrape-time collector over the gateway's parts."""
    gateway.rpc.observers.append(metrics.observe_call)
    sources = StatsSources(
        hub=gateway.hub,
        dispatcher=gateway.dispatcher,
        connections=gateway.factory,
        push=gateway.push,
        resync=gateway.resync,
        backend_pool=gateway.backend,
        access_log=gateway.access_log,
        calls_in_flight=gateway.rpc.active,
    )
    metrics.registry.register(GatewayCollector(sources))
