"""The typed stats the parts of a gateway expose for ``/metrics`` (read at scrape time).

Each part keeps its counts anyway; a ``stats`` property returns a snapshot of
them as one of these records, so the collector reads typed fields instead of
walking attribute names. Nothing here imports the parts (they import this).
"""

from __future__ import annotations

from collections.abc import Sized
from dataclasses import dataclass
from typing import Protocol, TypeVar

T_co = TypeVar("T_co", covariant=True)


class StatsSource(Protocol[T_co]):
    """Anything with a ``stats`` snapshot."""

    @property
    def stats(self) -> T_co: ...


@dataclass(frozen=True, slots=True)
class HubStats:
    """The push hub: open SubscribeEvents streams, events written to streams so far, streams ended by
    an invalidation, subscriptions refused at registration (invalidated while being verified), streams
    ended because handing them an event raised."""

    streams_open: int
    events_delivered: int
    streams_revoked: int
    subscriptions_refused: int
    send_errors: int = 0


@dataclass(frozen=True, slots=True)
class DispatcherStats:
    """Push events received from the backend: client events, session invalidations."""

    events_in: int
    invalidations: int


@dataclass(frozen=True, slots=True)
class ConnectionStats:
    """Client connections of the listener: all of them, and those speaking HTTP/2."""

    open: int
    http2_open: int


@dataclass(frozen=True, slots=True)
class PushConsumerStats:
    """The push consumer: its state, what it read from the backend's push stream, and how often the
    gateway's handler of an event (or of a new subscription) raised."""

    state: str
    events_received: int
    malformed_messages: int
    unknown_events: int
    handler_errors: int


@dataclass(frozen=True, slots=True)
class ResyncStats:
    """Session re-checks after the push stream (re)opens: runs, lookups answered and failed,
    sessions found invalidated, unexpected errors, streams those ended, sessions still queued or
    being looked up."""

    runs: int
    sessions_checked: int
    sessions_revoked: int
    lookup_errors: int
    errors: int
    streams_ended: int
    pending: int


@dataclass(frozen=True, slots=True)
class AccessLogStats:
    """The access log's own sink (``[access_log] target``): records dropped (the target did not keep
    up, or their write failed), failed writes, characters waiting to be written."""

    records_dropped: int
    write_errors: int
    pending_bytes: int


@dataclass(frozen=True, slots=True)
class StatsSources:
    """What ``GatewayCollector`` reads; a part left ``None`` is left out of the scrape."""

    hub: StatsSource[HubStats] | None = None
    dispatcher: StatsSource[DispatcherStats] | None = None
    connections: StatsSource[ConnectionStats] | None = None
    push: StatsSource[PushConsumerStats] | None = None
    resync: StatsSource[ResyncStats] | None = None
    backend_pool: StatsSource[PoolStatsLike] | None = None
    access_log: StatsSource[AccessLogStats] | None = None
    calls_in_flight: Sized | None = None


class PoolStatsLike(Protocol):
    """``gatewayd.backend.pool.PoolStats`` (typed here without importing the backend)."""

    @property
    def max_connections(self) -> int: ...
    @property
    def open(self) -> int: ...
    @property
    def in_use(self) -> int: ...
    @property
    def connecting(self) -> int: ...
    @property
    def waiting(self) -> int: ...
    @property
    def max_waiting(self) -> int: ...
    @property
    def refused(self) -> int: ...
