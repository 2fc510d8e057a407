"""The push hub: open SubscribeEvents streams indexed by user and device session.

Events are encoded and signed once by the caller and the same ``Encoded``
object is handed to every matching stream (each codec frames it once).
Streams end here with a status: revocation FAILED_PRECONDITION, shutdown
UNAVAILABLE. A stream whose client cannot keep up is ended by the stream
itself (RESOURCE_EXHAUSTED), which cancels its subscription.

Promises:

- **Fan-out in bounded slices.** ``publish`` hands the event to at most
  ``fanout_batch`` streams in the current reactor turn (at once, so the first
  streams get it without delay) and to the rest in later turns, the same
  number per slice, so one event to 10,000 streams never holds the reactor.
  Slices are two turns apart: in the turn after a slice its connections write
  what it queued (``ServerConnectionCore.flush_soon``) and the reactor hands
  those bytes to the kernel, before the next slice takes its turn.
  Events go out in the order they were published: on every stream, event N+1
  is never sent before event N.
- **A connection's streams together.** A fan-out visits the streams grouped by
  the connection they are written through, so each connection's share of a
  slice is written with one socket send (and, with few streams per
  connection, in one slice). Over HTTP/2 that share is handed over at once
  (``fanout.send_together``: the frames appended to the connection's buffer
  in one go); a stream that cannot take it that way gets ``stream.send``.
- **Revocation is final.** A stream ended by ``revoke`` (or by any other
  cause) is sent nothing more, even from a fan-out already under way; and a
  subscription whose session or user was revoked while it was being verified
  is refused at ``register`` (see ``revocations.py``). One verified before the
  push stream last came back is registered and handed to ``on_recheck``
  (``resync.py`` looks its session up again).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from gatewayd.http2.stream import H2Stream
from gatewayd.observability.stats import HubStats
from gatewayd.push.fanout import send_together
from gatewayd.push.revocations import Revocations, Ticket, Verdict
from gatewayd.rpc.call import Encoded, ServerStream
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from gatewayd.rpc.server import ServerCall

log = Logger()

DEFAULT_FANOUT_BATCH = 500
DEFAULT_MAX_TOMBSTONES = 100_000

REVOKED = RpcError(Code.FAILED_PRECONDITION, "session invalidated")
SHUTTING_DOWN = RpcError(Code.UNAVAILABLE, "gateway is shutting down")
SEND_FAILED = RpcError(Code.INTERNAL, "internal error")
# Too many invalidations arrived while this subscription was verified to tell whether one was its own.
UNCERTAIN = RpcError(Code.UNAVAILABLE, "session state changed during the call; retry")

# Read once: on Python 3.11 an enum member read from its class costs more than the rest of a check
# (four reads were most of ``register``).
_CLEAR, _REVOKED, _UNKNOWN, _RECHECK = Verdict.CLEAR, Verdict.REVOKED, Verdict.UNKNOWN, Verdict.RECHECK


def connection_of(stream: ServerStream) -> object:
    """What ``stream`` is written through: its exchange's connection when it has one
    (an HTTP/2 stream's ``conn``), else the stream itself (HTTP/1.1: one call per connection).
    A wrapper that holds the call as ``stream`` (``heartbeat.BeatingStream``) is looked through."""
    if type(stream) is ServerCall:  # the usual case, without getattr's misses (each one an exception inside)
        exchange = stream.exchange
        return exchange.conn if type(exchange) is H2Stream else stream
    inner = getattr(stream, "stream", stream)
    connection = getattr(getattr(inner, "exchange", None), "conn", None)
    return stream if connection is None else connection


class Subscription:
    """One registered stream. ``done`` fires (or fails) when the stream must end.

    ``live`` turns False when the hub forgets the stream; a fan-out under way
    checks it before each send. ``connection`` groups the streams of one
    connection in a fan-out (``connection_of``). Cancelling ``done`` (the call
    ended: client gone, deadline, overflow) unregisters a subscription made by
    ``Hub.register``; whatever else ends it has unregistered it already.
    """

    __slots__ = ("connection", "device_session_id", "done", "hub", "live", "stream", "user_id")

    def __init__(self, user_id: str, device_session_id: str, stream: ServerStream, hub: Hub | None = None) -> None:
        self.user_id = user_id
        self.device_session_id = device_session_id
        self.stream = stream
        self.connection = connection_of(stream)
        self.live = True
        self.hub = hub
        # (A canceller, not an unregistering callback: one bound method per stream instead of
        # a callback's four tuples, fewer objects for every GC pass to walk.)
        self.done: defer.Deferred[None] = defer.Deferred(self._cancelled if hub is not None else None)

    def _cancelled(self, _: defer.Deferred[None]) -> None:
        if self.hub is not None:
            self.hub.unregister(self)


class _Fanout:
    """One event on its way to the streams that matched when it was published."""

    __slots__ = ("event", "next", "subs")

    def __init__(self, event: Encoded, subs: list[Subscription]) -> None:
        self.event = event
        self.subs = subs
        self.next = 0


class Hub:
    """Streams by user, then by device session; publish, revoke, close.

    ``clock`` (an ``IReactorTime``) schedules the later slices of a fan-out;
    without one the reactor is used.
    """

    def __init__(
        self,
        clock: Any = None,
        *,
        fanout_batch: int = DEFAULT_FANOUT_BATCH,
        max_tombstones: int = DEFAULT_MAX_TOMBSTONES,
    ) -> None:
        if fanout_batch < 1:
            raise ValueError("fanout_batch must be at least 1")
        if clock is None:
            from twisted.internet import reactor as clock
        self._clock = clock
        self._batch = fanout_batch
        self._users: dict[str, dict[str, set[Subscription]]] = {}
        # The same streams by user, then by connection (insertion-ordered), and each user's
        # streams in that order as one list, kept until the user's streams change (a fan-out
        # holds on to the list it got: it is replaced, never changed).
        self._by_connection: dict[str, dict[object, dict[Subscription, None]]] = {}
        self._in_order: dict[str, list[Subscription]] = {}
        self._session_user: dict[str, str] = {}
        self._count = 0
        self._fanouts: deque[_Fanout] = deque()
        self._next_slice: Any = None
        self._sending = False
        self.revocations = Revocations(max_tombstones)
        # Called with each subscription registered whose verification predates Revocations.mark_recheck.
        self.on_recheck: Callable[[Subscription], None] | None = None
        self.closed = False
        self.delivered = 0
        self.streams_revoked = 0
        self.subscriptions_refused = 0
        self.send_errors = 0

    def __len__(self) -> int:
        return self._count

    @property
    def stats(self) -> HubStats:
        """Open streams, events delivered, streams revoked, subscriptions refused and streams ended by a
        failed send so far (for ``/metrics``)."""
        return HubStats(streams_open=self._count, events_delivered=self.delivered,
                        streams_revoked=self.streams_revoked, subscriptions_refused=self.subscriptions_refused,
                        send_errors=self.send_errors)

    @property
    def pending_sends(self) -> int:
        """Sends still queued by fan-outs under way (at most one per stream and event)."""
        return sum(len(f.subs) - f.next for f in self._fanouts)

    # --- registration ------------------------------------------------------------------

    def register(
        self, user_id: str, device_session_id: str, stream: ServerStream, ticket: Ticket | None = None
    ) -> Subscription:
        """Add a stream.

        Raises UNAVAILABLE once the hub is closed, FAILED_PRECONDITION when the
        session or its user was invalidated after ``ticket`` was taken (and
        UNAVAILABLE when that can no longer be told: fail closed). A ticket taken
        before the push stream last came back registers, then goes to ``on_recheck``.
        """
        if self.closed:
            raise SHUTTING_DOWN
        verdict = _CLEAR
        if ticket is not None:
            verdict = self.revocations.revoked_since(ticket, user_id, device_session_id)
            if verdict is _REVOKED:
                self.subscriptions_refused += 1
                raise REVOKED
            if verdict is _UNKNOWN:
                self.subscriptions_refused += 1
                raise UNCERTAIN
        sub = Subscription(user_id, device_session_id, stream, self)
        # (get, then create on a miss: setdefault would build an empty dict or set on every call.)
        sessions = self._users.get(user_id)
        if sessions is None:
            sessions = self._users[user_id] = {}
        subs = sessions.get(device_session_id)
        if subs is None:
            subs = sessions[device_session_id] = set()
        subs.add(sub)
        connections = self._by_connection.get(user_id)
        if connections is None:
            connections = self._by_connection[user_id] = {}
        group = connections.get(sub.connection)
        if group is None:
            group = connections[sub.connection] = {}
        group[sub] = None
        if self._in_order:
            self._in_order.pop(user_id, None)
        self._session_user[device_session_id] = user_id
        self._count += 1
        if verdict is _RECHECK and self.on_recheck is not None:
            self.on_recheck(sub)
        return sub

    def unregister(self, sub: Subscription) -> None:
        """Forget a stream (idempotent); nothing more is sent to it."""
        sub.live = False
        sessions = self._users.get(sub.user_id)
        if sessions is None:
            return
        subs = sessions.get(sub.device_session_id)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        self._count -= 1
        self._in_order.pop(sub.user_id, None)
        connections = self._by_connection[sub.user_id]
        group = connections[sub.connection]
        del group[sub]
        if not group:
            del connections[sub.connection]
            if not connections:
                del self._by_connection[sub.user_id]
        if not subs:
            del sessions[sub.device_session_id]
            self._session_user.pop(sub.device_session_id, None)
            if not sessions:
                del self._users[sub.user_id]

    def open_sessions(self) -> list[tuple[str, str]]:
        """Every (user_id, device_session_id) with at least one registered stream."""
        return [(user_id, session) for user_id, sessions in self._users.items() for session in sessions]

    def _matching(self, user_id: str, device_session_id: str) -> list[Subscription]:
        """The streams of the user (of one session when given), each connection's together;
        not to be changed (the user's list is shared until the user's streams change)."""
        if device_session_id:
            sessions = self._users.get(user_id)
            subs = sessions.get(device_session_id, ()) if sessions else ()
            return sorted(subs, key=lambda sub: id(sub.connection))
        in_order = self._in_order.get(user_id)
        if in_order is None:
            connections = self._by_connection.get(user_id)
            if not connections:
                return []
            in_order = self._in_order[user_id] = [sub for group in connections.values() for sub in group]
        return in_order

    # --- fan-out -----------------------------------------------------------------------

    def publish(self, user_id: str, device_session_id: str, event: Encoded) -> int:
        """Send ``event`` to the user's streams (one session's, or all when empty); returns how many matched.

        The first slice is sent now unless earlier fan-outs are still under way
        (then it waits its turn behind them); the rest follow in later turns.
        """
        subs = self._matching(user_id, device_session_id)
        if not subs:
            return 0
        self._fanouts.append(_Fanout(event, subs))
        if self._next_slice is None and not self._sending:
            self._send_slice()
        return len(subs)

    def _send_slice(self) -> None:
        """Send up to ``fanout_batch`` queued events-to-streams, oldest fan-out first."""
        self._next_slice = None
        self._sending = True  # a publish from inside a send only queues (no nested slice)
        budget = self._batch
        fanouts = self._fanouts
        sent = 0
        try:
            while fanouts and budget > 0:
                fanout = fanouts[0]
                event, subs, start = fanout.event, fanout.subs, fanout.next
                stop = min(len(subs), start + budget)
                # Advanced before sending: whatever a send triggers sees this slice as taken.
                fanout.next = stop
                budget -= stop - start
                if stop == len(subs):
                    fanouts.popleft()
                i = start
                while i < stop:
                    # Each connection's streams are next to each other (``_matching``): together first.
                    connection = subs[i].connection
                    j = i + 1
                    while j < stop and subs[j].connection is connection:
                        j += 1
                    run = subs[i:j]
                    i = j
                    if len(run) > 1:
                        try:
                            together, run = send_together(run, event)
                        except Exception:  # a bug: each stream on its own below, as without it
                            log.failure("a fan-out to the streams of one connection failed; sending one by one")
                            together = 0
                        sent += together
                    for sub in run:
                        if sub.live:
                            try:  # free in CPython 3.11 unless it raises
                                sub.stream.send(event)
                            except Exception:
                                self._send_failed(sub)
                                continue
                            sent += 1
        finally:
            self._sending = False
            self.delivered += sent
        if fanouts and not self.closed:
            self._next_slice = self._clock.callLater(0, self._after_writes)

    def _send_failed(self, sub: Subscription) -> None:
        """A stream's send raised (a bug: ``ServerStream.send`` never raises): log and count it,
        end that stream INTERNAL, and let the fan-out go on to the others."""
        log.failure("a SubscribeEvents stream failed to take an event; ending it")
        self.send_errors += 1
        self.unregister(sub)
        if not sub.done.called:
            sub.done.errback(SEND_FAILED)

    def _after_writes(self) -> None:
        # The turn after a slice: its connections' flushes run now, and the reactor hands
        # their bytes to the kernel after this turn's delayed calls. A slice run now would
        # hold those bytes back for as long as it takes; the next one waits a turn instead.
        self._next_slice = self._clock.callLater(0, self._send_slice)

    # --- ending streams ----------------------------------------------------------------

    def revoke(self, user_id: str, device_session_id: str) -> int:
        """An invalidation: of one device session (``user_id`` may be empty) or of all of a user's.

        Ends the matching registered streams with FAILED_PRECONDITION, and makes
        ``register`` refuse the subscriptions of that session or user still
        being verified. Returns how many streams ended.
        """
        self.revocations.record(user_id, device_session_id)
        if not user_id:
            # The hub indexes by user; an invalidation naming only a session is found by its session.
            user_id = self._session_user.get(device_session_id, "")
            if not user_id:
                return 0
        ended = self.end(user_id, device_session_id, REVOKED)
        self.streams_revoked += ended
        return ended

    def end(self, user_id: str, device_session_id: str, error: RpcError) -> int:
        """End the matching streams with ``error``; returns how many."""
        subs = self._matching(user_id, device_session_id)
        for sub in subs:
            self.unregister(sub)
            if not sub.done.called:
                sub.done.errback(error)
        return len(subs)

    def close(self, error: RpcError) -> int:
        """End every stream with ``error`` and refuse new ones; returns how many ended."""
        self.closed = True
        self._fanouts.clear()
        if self._next_slice is not None:
            if self._next_slice.active():
                self._next_slice.cancel()
            self._next_slice = None
        ended = 0
        for user_id in list(self._users):
            ended += self.end(user_id, "", error)
        return ended
