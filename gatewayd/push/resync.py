"""After the push stream (re)opens: forget cached sessions, re-check the session of every open stream.

The backend keeps no replay: a SessionInvalidation sent while the gateway's
SubscribePush call was down (backend restart, network cut, gateway start-up)
is never received. So the streams it should have ended stay open, and the
session cache may still hold the session as active. PROTOCOL.md section 8
("Revocation is final") does not allow either, so each time the push consumer
knows the backend has its call (``PushConsumer.on_subscribed``), the gateway:

1. drops its whole session cache (answers still in flight are not cached);
2. asks the backend again (``GET /api/v1/internal/sessions/{id}``, through
   the cache, so calls that arrive meanwhile share the lookups) for the
   session of every open SubscribeEvents stream, at most ``concurrency``
   lookups at a time;
3. ends, like an invalidation, the streams whose session is unknown, not
   active or no longer the stream's user (FAILED_PRECONDITION), and with
   UNAVAILABLE those whose session could not be looked up (fail closed: the
   client reconnects and is verified from scratch).

Subscriptions still being verified when the stream came back are covered
too: ``Revocations.mark_recheck`` makes the hub hand each of them, once
registered, to ``recheck`` (their session answer may predate a missed
invalidation).

Invalidations received during the re-check are handled as usual, and since
the push call is open, none is missed from then on. A new re-check (the
stream dropped again) supersedes one still under way: the older one starts no
more lookups.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet import defer
from twisted.logger import Logger

from gatewayd.backend.sessions import SessionCache
from gatewayd.observability.stats import ResyncStats
from gatewayd.push.hub import Hub, Subscription
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError

DEFAULT_CONCURRENCY = 16
UNVERIFIED = RpcError(Code.UNAVAILABLE, "session could not be re-verified; retry")

log = Logger()


class SessionResync:
    """Run (``__call__``) by the push consumer's ``on_subscribed``.

    ``revoke(user_id, device_session_id)`` ends streams as an invalidation
    does and returns how many streams it ended. Counters (since start, in
    ``/metrics`` through ``stats``): ``runs``, ``checked`` (lookups answered),
    ``revoked`` (sessions gone or not active), ``unverified`` (lookups failed),
    ``errors`` (a re-check raised: logged, its streams ended UNAVAILABLE, the
    queue goes on), ``streams_ended`` (by any of the last three).
    """

    def __init__(
        self,
        hub: Hub,
        sessions: SessionCache,
        revoke: Callable[[str, str], int],
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self._hub = hub
        self._sessions = sessions
        self._revoke = revoke
        self._concurrency = concurrency
        self._queue: deque[tuple[str, str]] = deque()
        self._queued: set[tuple[str, str]] = set()
        self._workers = 0
        self._idle: list[defer.Deferred[None]] = []
        self.runs = 0
        self.checked = 0
        self.revoked = 0
        self.unverified = 0
        self.errors = 0
        self.streams_ended = 0
        hub.on_recheck = self.recheck

    @property
    def pending(self) -> int:
        """Sessions queued or being looked up."""
        return len(self._queue) + self._workers

    @property
    def stats(self) -> ResyncStats:
        """The counters and ``pending`` now (for ``/metrics``)."""
        return ResyncStats(runs=self.runs, sessions_checked=self.checked, sessions_revoked=self.revoked,
                           lookup_errors=self.unverified, errors=self.errors, streams_ended=self.streams_ended,
                           pending=self.pending)

    def __call__(self) -> None:
        """The push stream is (back) up: forget cached sessions and re-check every open stream's."""
        self.runs += 1
        self._hub.revocations.mark_recheck()
        self._sessions.clear()
        # A re-check under way is superseded: its remaining lookups would use what was just cleared.
        self._queue.clear()
        self._queued.clear()
        opened = self._hub.open_sessions()
        log.info("push stream subscribed: session cache cleared, re-checking {n} open sessions", n=len(opened))
        for user_id, device_session_id in opened:
            self._enqueue(user_id, device_session_id)

    def recheck(self, sub: Subscription) -> None:
        """Look ``sub``'s session up again (it was verified before the push stream came back)."""
        self._enqueue(sub.user_id, sub.device_session_id)

    def when_idle(self) -> defer.Deferred[None]:
        """Fire once nothing is queued or being looked up (at once if so)."""
        if not self.pending:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._idle.append(d)
        return d

    def _enqueue(self, user_id: str, device_session_id: str) -> None:
        key = (user_id, device_session_id)
        if key in self._queued:
            return
        self._queued.add(key)
        self._queue.append(key)
        if self._workers < self._concurrency:
            self._workers += 1
            defer.Deferred.fromCoroutine(self._work())

    async def _work(self) -> None:
        try:
            while self._queue:
                key = self._queue.popleft()
                self._queued.discard(key)
                try:
                    await self._check(*key)
                except Exception:
                    # A bug, not an answer. Fail closed for this session; the rest of the queue must
                    # still be checked (a dead worker would leave it, and ``pending``, stuck).
                    self.errors += 1
                    log.failure("push resync: re-checking a session failed; ending its streams UNAVAILABLE",
                                device_session_id=key[1])
                    self.streams_ended += self._hub.end(*key, UNVERIFIED)
        finally:
            self._workers -= 1
            if not self.pending:
                idle, self._idle = self._idle, []
                for d in idle:
                    d.callback(None)

    async def _check(self, user_id: str, device_session_id: str) -> None:
        try:
            session = await self._sessions.get(device_session_id)
        except Exception as e:
            self.unverified += 1
            log.warn("push resync: session lookup failed ({error}); ending its streams UNAVAILABLE",
                     error=str(e) or type(e).__name__)
            self.streams_ended += self._hub.end(user_id, device_session_id, UNVERIFIED)
            return
        self.checked += 1
        if session is None or not session.active or session.user_id != user_id:
            self.revoked += 1
            log.info("push resync: a session was invalidated while the push stream was down; ending its streams",
                     device_session_id=device_session_id)
            self.streams_ended += self._revoke(user_id, device_session_id)


__all__ = ["DEFAULT_CONCURRENCY", "UNVERIFIED", "SessionResync"]
