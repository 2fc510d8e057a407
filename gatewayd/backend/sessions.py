"""A short-lived, bounded cache of backend session lookups, with single flight and invalidation.

Promises:

- ``get(id)`` answers from the cache while an entry is younger than its TTL;
  otherwise it starts one lookup per id, and every concurrent caller shares it.
  ``get(id, call)`` hands ``call`` to the lookup it starts (``lookup(id, call)``),
  so the backend request continues the trace of the call that caused it.
- A caller cancelling its own Deferred only stops waiting; the shared lookup
  goes on for the other callers (and its answer is still cached).
- Negative answers (unknown session, ``None``) are cached too, but only for
  ``negative_ttl_s`` (default: one second, or ``ttl_s`` if shorter). That keeps
  a client hammering with a wrong or expired id from reaching the backend at
  every call, while a wrong "unknown" cannot outlive a second. A session id
  only exists once the backend has issued it, so a cached "unknown" for a
  real id can only come from someone guessing it beforehand.
- Revoked sessions are cached like active ones (the pipeline refuses them).
- Lookup failures (``BackendUnavailable``) are passed to every waiter and
  never cached.
- ``invalidate``/``invalidate_user`` drop entries at once, and an answer of a
  lookup that was in flight when the invalidation arrived is handed to its
  waiters but never cached: the next ``get`` asks the backend again.
- At most ``max_entries`` entries are kept; the oldest inserted go first
  (with a TTL of seconds, insertion order is close enough to LRU and costs
  nothing on a hit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.python.failure import Failure

from gatewayd.backend.rest import Session

if TYPE_CHECKING:
    from gatewayd.rpc.call import Call

SessionLookup = Callable[..., "Deferred[Session | None]"]
"""``lookup(device_session_id)``, or ``lookup(device_session_id, call)`` for a lookup a call caused."""


class Clock(Protocol):
    """The part of ``IReactorTime`` used here (a reactor or ``task.Clock``), typed for mypy."""

    def seconds(self) -> float: ...


class _Flight:
    """One lookup in progress and the callers waiting for it."""

    __slots__ = ("stale", "waiters")

    def __init__(self) -> None:
        self.waiters: list[Deferred[Session | None]] = []
        self.stale = False


class SessionCache:
    """Sessions by device_session_id, fetched through ``lookup`` and kept for ``ttl_s`` seconds."""

    def __init__(
        self,
        lookup: SessionLookup,
        clock: Clock,
        ttl_s: float,
        max_entries: int,
        negative_ttl_s: float | None = None,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._lookup = lookup
        self._clock = clock
        self._ttl_s = ttl_s
        self._negative_ttl_s = min(ttl_s, 1.0) if negative_ttl_s is None else negative_ttl_s
        self._max_entries = max_entries
        # device_session_id -> (expires_at, session or None); dict order = insertion order.
        self._entries: dict[str, tuple[float, Session | None]] = {}
        self._by_user: dict[str, set[str]] = {}
        self._inflight: dict[str, _Flight] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, device_session_id: str, call: Call | None = None) -> Deferred[Session | None]:
        """The session (``None`` when unknown); errbacks what the lookup errbacks."""
        entry = self._entries.get(device_session_id)
        if entry is not None:
            if entry[0] > self._clock.seconds():
                return succeed(entry[1])
            self._remove(device_session_id)
        flight = self._inflight.get(device_session_id)
        start = flight is None
        if flight is None:
            flight = self._inflight[device_session_id] = _Flight()
        waiters = flight.waiters

        def stop_waiting(d: Deferred[Session | None]) -> None:
            # Only this caller stops waiting; the shared lookup carries on.
            if d in waiters:
                waiters.remove(d)

        waiter: Deferred[Session | None] = Deferred(stop_waiting)
        waiters.append(waiter)
        if start:
            # Started only once the first waiter is registered: a lookup may answer synchronously.
            self._start(device_session_id, flight, call)
        return waiter

    def fresh_entry(self, device_session_id: str) -> tuple[float, Session | None] | None:
        """``(expires_at, session)`` while the cached answer is younger than its TTL (what ``get``
        would answer at once, without its Deferred), else ``None``: ``get`` looks it up."""
        entry = self._entries.get(device_session_id)
        if entry is not None and entry[0] > self._clock.seconds():
            return entry
        return None

    def invalidate(self, device_session_id: str) -> None:
        """Forget one session now, including an answer still on its way."""
        self._remove(device_session_id)
        flight = self._inflight.pop(device_session_id, None)
        if flight is not None:
            flight.stale = True

    def invalidate_user(self, user_id: str) -> None:
        """Forget every session of ``user_id`` now, including answers still on their way."""
        for device_session_id in list(self._by_user.get(user_id, ())):
            self._remove(device_session_id)
        # Which user an in-flight lookup belongs to is unknown until it answers, so none
        # of the answers in flight may be cached. Lookups in flight are few and this is rare.
        for flight in self._inflight.values():
            flight.stale = True
        self._inflight.clear()

    def clear(self) -> None:
        """Forget everything (e.g. after the push stream reconnects and events may have been missed)."""
        self._entries.clear()
        self._by_user.clear()
        for flight in self._inflight.values():
            flight.stale = True
        self._inflight.clear()

    # --- internals ------------------------------------------------------------------

    def _start(self, device_session_id: str, flight: _Flight, call: Call | None) -> None:
        if call is None:
            d: Deferred[Any] = maybeDeferred(self._lookup, device_session_id)
        else:
            d = maybeDeferred(self._lookup, device_session_id, call)
        d.addCallbacks(
            self._answered,
            self._failed,
            callbackArgs=(device_session_id, flight),
            errbackArgs=(device_session_id, flight),
        )

    def _finish(self, device_session_id: str, flight: _Flight) -> list[Deferred[Session | None]]:
        if self._inflight.get(device_session_id) is flight:
            del self._inflight[device_session_id]
        waiters = list(flight.waiters)
        flight.waiters.clear()
        return waiters

    def _answered(self, session: Session | None, device_session_id: str, flight: _Flight) -> None:
        waiters = self._finish(device_session_id, flight)
        if not flight.stale:
            self._store(device_session_id, session)
        for waiter in waiters:
            waiter.callback(session)

    def _failed(self, failure: Failure, device_session_id: str, flight: _Flight) -> None:
        waiters = self._finish(device_session_id, flight)
        for waiter in waiters:
            waiter.errback(failure)

    def _store(self, device_session_id: str, session: Session | None) -> None:
        ttl = self._ttl_s if session is not None else self._negative_ttl_s
        if ttl <= 0:
            return
        self._remove(device_session_id)
        while len(self._entries) >= self._max_entries:
            self._remove(next(iter(self._entries)))
        self._entries[device_session_id] = (self._clock.seconds() + ttl, session)
        if session is not None:
            self._by_user.setdefault(session.user_id, set()).add(device_session_id)

    def _remove(self, device_session_id: str) -> None:
        entry = self._entries.pop(device_session_id, None)
        if entry is None or entry[1] is None:
            return
        user_id = entry[1].user_id
        ids = self._by_user.get(user_id)
        if ids is not None:
            ids.discard(device_session_id)
            if not ids:
                del self._by_user[user_id]
