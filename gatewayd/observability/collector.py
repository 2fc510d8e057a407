"""Metrics read from the gateway's parts at scrape time (nothing added to hot paths).

Open streams and push events (the hub and dispatcher), the push consumer's
state and counters, open connections, RPCs in flight and the backend
connection pool, each through the part's typed ``stats``
(``gatewayd.observability.stats``). A part the gateway does not have is left
out of the scrape rather than reported as 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, StateSetMetricFamily
from prometheus_client.registry import Collector

from gatewayd.observability.stats import StatsSources

PUSH_CONSUMER_STATES: tuple[str, ...] = ("idle", "connecting", "connected", "backoff", "stopped")


class GatewayCollector(Collector):
    """A prometheus collector over one gateway's ``StatsSources``."""

    def __init__(self, sources: StatsSources) -> None:
        self._sources = sources

    def describe(self) -> list[Any]:
        # Nothing to pre-register: the names here are unique to this collector, and
        # describing would make the registry call collect() before the gateway is complete.
        return []

    def collect(self) -> Iterator[Any]:
        s = self._sources
        gauge, counter = GaugeMetricFamily, CounterMetricFamily
        if s.hub is not None:
            hub = s.hub.stats
            yield gauge("gatewayd_push_streams_open", "Open SubscribeEvents streams.", value=hub.streams_open)
            yield counter("gatewayd_push_events_delivered",
                          "Client events written to streams (one per matching stream).", value=hub.events_delivered)
        if s.dispatcher is not None:
            dispatcher = s.dispatcher.stats
            yield counter("gatewayd_push_events_in", "Client events received from the backend's push stream.",
                          value=dispatcher.events_in)
            yield counter("gatewayd_push_invalidations", "Session invalidations received from the backend.",
                          value=dispatcher.invalidations)
        if s.connections is not None:
            connections = s.connections.stats
            yield gauge("gatewayd_connections_open", "Open client connections (HTTP/1.1 and HTTP/2).",
                        value=connections.open)
            yield gauge("gatewayd_http2_connections_open", "Open HTTP/2 client connections.",
                        value=connections.http2_open)
        if s.calls_in_flight is not None:
            yield gauge("gatewayd_rpc_calls_in_flight", "RPCs started and not yet finished (streams included).",
                        value=len(s.calls_in_flight))
        if s.push is not None:
            push = s.push.stats
            yield counter("gatewayd_push_consumer_events_received", "Messages read from the backend's push stream.",
                          value=push.events_received)
            yield counter("gatewayd_push_consumer_malformed_messages", "Push stream messages that did not decode.",
                          value=push.malformed_messages)
            yield counter("gatewayd_push_consumer_unknown_events",
                          "Push events of a kind this gateway does not know.", value=push.unknown_events)
            yield StateSetMetricFamily(
                "gatewayd_push_consumer_state", "The push consumer's state (1 for the current one).",
                value={state: state == push.state for state in PUSH_CONSUMER_STATES},
            )
        if s.backend_pool is not None:
            pool = s.backend_pool.stats
            yield gauge("gatewayd_backend_pool_connections_max", "The backend pool's connection limit.",
                        value=pool.max_connections)
            yield gauge("gatewayd_backend_pool_connections_open", "Backend connections open (idle or in use).",
                        value=pool.open)
            yield gauge("gatewayd_backend_pool_connections_in_use", "Backend connections carrying a request.",
                        value=pool.in_use)
            yield gauge("gatewayd_backend_pool_connections_opening", "Backend connections being opened.",
                        value=pool.connecting)
            yield gauge("gatewayd_backend_pool_waiting", "Backend requests waiting for a pooled connection.",
                        value=pool.waiting)
            yield gauge("gatewayd_backend_pool_waiting_max", "The limit of requests waiting for a connection.",
                        value=pool.max_waiting)
            yield counter("gatewayd_backend_pool_refused",
                          "Backend requests refused at once because the wait queue was full.", value=pool.refused)
