"""Metrics read from the gateway's parts at scrape time (nothing added to hot paths).

Open streams and push events (the hub and dispatcher), the push consumer's
state and counters, open connections, RPCs in flight and the backend
connection pool, each through the part's typed ``stats``
(``gatewayd.observability.stats``). A part the gateway does not have is left
out of the scrape rather than reported as 0.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, StateSetMetricFamily
from prometheus_client.registry import Collector

from gatewayd.observability.stats import (
    AccessLogStats,
    ConnectionStats,
    DispatcherStats,
    HubStats,
    PoolStatsLike,
    PushConsumerStats,
    ResyncStats,
    StatsSource,
    StatsSources,
)

PUSH_CONSUMER_STATES: tuple[str, ...] = ("idle", "connecting", "connected", "backoff", "stopped")

S = TypeVar("S")
Family = tuple[type[GaugeMetricFamily] | type[CounterMetricFamily], str, str, Callable[[S], float]]

_G, _C = GaugeMetricFamily, CounterMetricFamily

HUB: Sequence[Family[HubStats]] = (
    (_G, "gatewayd_push_streams_open", "Open SubscribeEvents streams.", lambda s: s.streams_open),
    (_C, "gatewayd_push_events_delivered", "Client events written to streams (one per matching stream).",
     lambda s: s.events_delivered),
    (_C, "gatewayd_push_streams_revoked",
     "Streams ended FAILED_PRECONDITION by a session invalidation (received, or found by a resync).",
     lambda s: s.streams_revoked),
    (_C, "gatewayd_push_subscriptions_refused",
     "SubscribeEvents calls refused at registration: their session was invalidated while they were verified.",
     lambda s: s.subscriptions_refused),
    (_C, "gatewayd_push_send_errors",
     "Streams ended INTERNAL because handing them an event raised (a bug; the fan-out went on to the others).",
     lambda s: s.send_errors),
)
DISPATCHER: Sequence[Family[DispatcherStats]] = (
    (_C, "gatewayd_push_events_in", "Client events received from the backend's push stream.",
     lambda s: s.events_in),
    (_C, "gatewayd_push_invalidations", "Session invalidations received from the backend.",
     lambda s: s.invalidations),
)
CONNECTIONS: Sequence[Family[ConnectionStats]] = (
    (_G, "gatewayd_connections_open", "Open client connections (HTTP/1.1 and HTTP/2).", lambda s: s.open),
    (_G, "gatewayd_http2_connections_open", "Open HTTP/2 client connections.", lambda s: s.http2_open),
)
PUSH: Sequence[Family[PushConsumerStats]] = (
    (_C, "gatewayd_push_consumer_events_received", "Messages read from the backend's push stream.",
     lambda s: s.events_received),
    (_C, "gatewayd_push_consumer_malformed_messages", "Push stream messages that did not decode.",
     lambda s: s.malformed_messages),
    (_C, "gatewayd_push_consumer_unknown_events", "Push events of a kind this gateway does not know.",
     lambda s: s.unknown_events),
    (_C, "gatewayd_push_consumer_handler_errors",
     "Push events (or new subscriptions) whose handling raised: logged, and the stream went on.",
     lambda s: s.handler_errors),
)
RESYNC: Sequence[Family[ResyncStats]] = (
    (_C, "gatewayd_push_resyncs", "Session re-checks started because the push stream (re)subscribed.",
     lambda s: s.runs),
    (_C, "gatewayd_push_resync_sessions_checked", "Session lookups a resync had answered.",
     lambda s: s.sessions_checked),
    (_C, "gatewayd_push_resync_sessions_revoked", "Sessions a resync found gone, not active or moved.",
     lambda s: s.sessions_revoked),
    (_C, "gatewayd_push_resync_lookup_errors", "Session lookups of a resync that failed (streams ended UNAVAILABLE).",
     lambda s: s.lookup_errors),
    (_C, "gatewayd_push_resync_errors", "Sessions whose re-check raised (a bug: logged; streams ended UNAVAILABLE).",
     lambda s: s.errors),
    (_C, "gatewayd_push_resync_streams_ended", "Streams a resync ended (FAILED_PRECONDITION or UNAVAILABLE).",
     lambda s: s.streams_ended),
    (_G, "gatewayd_push_resync_pending", "Sessions a resync has still to look up (queued or in flight).",
     lambda s: s.pending),
)
BACKEND_POOL: Sequence[Family[PoolStatsLike]] = (
    (_G, "gatewayd_backend_pool_connections_max", "The backend pool's connection limit.",
     lambda s: s.max_connections),
    (_G, "gatewayd_backend_pool_connections_open", "Backend connections open (idle or in use).", lambda s: s.open),
    (_G, "gatewayd_backend_pool_connections_in_use", "Backend connections carrying a request.", lambda s: s.in_use),
    (_G, "gatewayd_backend_pool_connections_opening", "Backend connections being opened.", lambda s: s.connecting),
    (_G, "gatewayd_backend_pool_waiting", "Backend requests waiting for a pooled connection.", lambda s: s.waiting),
    (_G, "gatewayd_backend_pool_waiting_max", "The limit of requests waiting for a connection.",
     lambda s: s.max_waiting),
    (_C, "gatewayd_backend_pool_refused", "Backend requests refused at once because the wait queue was full.",
     lambda s: s.refused),
)

ACCESS_LOG: Sequence[Family[AccessLogStats]] = (
    (_C, "gatewayd_access_log_records_dropped",
     "Access log records never written by its target (access_log.target): the target did not keep up "
     "(access_log.max_pending_bytes), or their write failed.", lambda s: s.records_dropped),
    (_C, "gatewayd_access_log_write_errors", "Failed writes (or reopens) of the access log's target.",
     lambda s: s.write_errors),
    (_G, "gatewayd_access_log_pending_bytes", "Access log bytes waiting to be written to its target.",
     lambda s: s.pending_bytes),
)


def _families(source: StatsSource[S] | None, table: Sequence[Family[S]]) -> Iterator[Any]:
    if source is None:
        return
    stats = source.stats
    for family, name, documentation, read in table:
        yield family(name, documentation, value=read(stats))


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
        yield from _families(s.hub, HUB)
        yield from _families(s.dispatcher, DISPATCHER)
        yield from _families(s.connections, CONNECTIONS)
        if s.calls_in_flight is not None:
            yield GaugeMetricFamily("gatewayd_rpc_calls_in_flight",
                                    "RPCs started and not yet finished (streams included).",
                                    value=len(s.calls_in_flight))
        yield from _families(s.push, PUSH)
        yield from _families(s.resync, RESYNC)
        if s.push is not None:
            state = s.push.stats.state
            yield StateSetMetricFamily(
                "gatewayd_push_consumer_state", "The push consumer's state (1 for the current one).",
                value={name: name == state for name in PUSH_CONSUMER_STATES},
            )
        yield from _families(s.backend_pool, BACKEND_POOL)
        yield from _families(s.access_log, ACCESS_LOG)
