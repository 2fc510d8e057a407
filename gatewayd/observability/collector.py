"""Metrics read from the gateway's own counters at scrape time (nothing added to hot paths).

Open streams (``len(hub)``), push events in and delivered (``dispatcher.events_in``,
``hub.delivered``), the push consumer's state and counters, open connections
(``factory.connections``, ``factory.h2_connections``) and RPCs in flight
(``rpc.active``). Whatever is missing on the gateway (a part not built yet) is
simply left out of the scrape.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, StateSetMetricFamily
from prometheus_client.registry import Collector

from gatewayd.backend.push_consumer import State

PUSH_CONSUMER_STATES: tuple[State, ...] = ("idle", "connecting", "connected", "backoff", "stopped")


def _at(obj: Any, path: tuple[str, ...]) -> Any:
    """``obj.a.b...`` along ``path``, or None where an attribute is missing or None."""
    for name in path:
        obj = getattr(obj, name, None)
        if obj is None:
            return None
    return obj


def _len(obj: Any, *path: str) -> int | None:
    found = _at(obj, path)
    return None if found is None else len(found)


def _number(obj: Any, *path: str) -> float | None:
    found = _at(obj, path)
    return None if found is None else float(found)


class GatewayCollector(Collector):
    """A prometheus collector over one ``Gateway``'s live objects."""

    def __init__(self, gateway: Any) -> None:
        self._gateway = gateway

    def describe(self) -> list[Any]:
        # Nothing to pre-register: the names here are unique to this collector, and
        # describing would make the registry call collect() before the gateway is complete.
        return []

    def collect(self) -> Iterator[Any]:
        g = self._gateway
        families = [
            (GaugeMetricFamily, "gatewayd_push_streams_open", "Open SubscribeEvents streams.", _len(g, "hub")),
            (GaugeMetricFamily, "gatewayd_connections_open", "Open client connections (HTTP/1.1 and HTTP/2).",
             _len(g, "factory", "connections")),
            (GaugeMetricFamily, "gatewayd_http2_connections_open", "Open HTTP/2 client connections.",
             _len(g, "factory", "h2_connections")),
            (GaugeMetricFamily, "gatewayd_rpc_calls_in_flight",
             "RPCs started and not yet finished (streams included).", _len(g, "rpc", "active")),
            (CounterMetricFamily, "gatewayd_push_events_in", "Client events received from the backend's push stream.",
             _number(g, "dispatcher", "events_in")),
            (CounterMetricFamily, "gatewayd_push_events_delivered",
             "Client events written to streams (one per matching stream).", _number(g, "hub", "delivered")),
            (CounterMetricFamily, "gatewayd_push_invalidations", "Session invalidations received from the backend.",
             _number(g, "dispatcher", "invalidations")),
            (CounterMetricFamily, "gatewayd_push_consumer_events_received",
             "Messages read from the backend's push stream.", _number(g, "push", "events_received")),
            (CounterMetricFamily, "gatewayd_push_consumer_malformed_messages",
             "Push stream messages that did not decode.", _number(g, "push", "malformed_messages")),
            (CounterMetricFamily, "gatewayd_push_consumer_unknown_events",
             "Push events of a kind this gateway does not know.", _number(g, "push", "unknown_events")),
        ]
        # A part the gateway does not have (yet) is left out rather than reported as 0.
        for family, name, doc, value in families:
            if value is not None:
                yield family(name, doc, value=value)
        push = getattr(g, "push", None)
        state = getattr(push, "state", None)
        if state is not None:
            yield StateSetMetricFamily(
                "gatewayd_push_consumer_state",
                "The push consumer's state (1 for the current one).",
                value={s: s == state for s in PUSH_CONSUMER_STATES},
            )
