"""Hooks that attach a gateway's ``GatewayMetrics`` to its parts; ``Gateway.__init__`` calls them.

- ``time_backend_client``: timed backend methods (``get_session``, ``call_route``,
  ``post_json``), before the session cache and pipeline take references to them;
- ``time_store_methods``: timed ``reserve``/``consume`` (Redis stores only: the memory
  stores are synchronous dict work, nothing worth a histogram);
- ``attach``: the RPC observer (calls, end-to-end latency) and a scrape-time collector
  over the hub, dispatcher, push consumer and listener.

The pipeline's stage observer is passed to ``Pipeline(on_stage=...)``, and ``/metrics``
is put in front of the web resource with ``wrap_with_metrics`` (unless
``server.metrics_listen`` names a separate endpoint).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gatewayd.observability.collector import GatewayCollector
from gatewayd.observability.metrics import GatewayMetrics

if TYPE_CHECKING:
    from gatewayd.service import Gateway

BACKEND_OPERATIONS = {"get_session": "session", "call_route": "route", "post_json": "public"}


def time_backend_client(backend: Any, metrics: GatewayMetrics) -> None:
    """Time the backend client's request methods on this instance (the class is untouched)."""
    for method, operation in BACKEND_OPERATIONS.items():
        original = getattr(backend, method, None)
        if original is None or hasattr(original, "__wrapped__"):
            continue
        setattr(backend, method, metrics.timed_backend(operation, original))


def attach(gateway: Gateway, metrics: GatewayMetrics) -> None:
    """Hook the parts that exist only once the gateway is built: calls and the scrape-time collector."""
    gateway.rpc.observers.append(metrics.observe_call)
    metrics.registry.register(GatewayCollector(gateway))


def time_store_methods(stores: Any, metrics: GatewayMetrics) -> None:
    """Time ``stores.replay.reserve`` and ``stores.rate.consume`` on these instances."""
    for store_name, attribute, method in (("replay", "replay", "reserve"), ("rate", "rate", "consume")):
        store = getattr(stores, attribute, None)
        original = getattr(store, method, None)
        if original is None or hasattr(original, "__wrapped__"):
            continue
        setattr(store, method, metrics.timed_store(store_name, method, original))
