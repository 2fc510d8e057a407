"""The push hub: open SubscribeEvents streams indexed by user and device session.

Events are encoded and signed once by the caller and the same ``Encoded``
object is handed to every matching stream (each codec frames it once).
Streams end here with a status: revocation FAILED_PRECONDITION, shutdown
UNAVAILABLE. A stream whose client cannot keep up is ended by the stream
itself (RESOURCE_EXHAUSTED), which cancels its subscription.
"""

from __future__ import annotations

from twisted.internet import defer

from gatewayd.rpc.call import Encoded, ServerStream
from gatewayd.rpc.errors import RpcError


class Subscription:
    """One registered stream. ``done`` fires (or fails) when the stream must end."""

    __slots__ = ("device_session_id", "done", "stream", "user_id")

    def __init__(self, user_id: str, device_session_id: str, stream: ServerStream) -> None:
        self.user_id = user_id
        self.device_session_id = device_session_id
        self.stream = stream
        self.done: defer.Deferred[None] = defer.Deferred()


class Hub:
    """Streams by user, then by device session; publish, revoke, close."""

    def __init__(self) -> None:
        self._users: dict[str, dict[str, set[Subscription]]] = {}
        self._session_user: dict[str, str] = {}
        self._count = 0
        self.closed = False
        self.delivered = 0

    def __len__(self) -> int:
        return self._count

    def register(self, user_id: str, device_session_id: str, stream: ServerStream) -> Subscription:
        """Add a stream; raises the shutdown error once the hub is closed."""
        sub = Subscription(user_id, device_session_id, stream)
        sessions = self._users.setdefault(user_id, {})
        sessions.setdefault(device_session_id, set()).add(sub)
        self._session_user[device_session_id] = user_id
        self._count += 1
        return sub

    def unregister(self, sub: Subscription) -> None:
        """Forget a stream (idempotent)."""
        sessions = self._users.get(sub.user_id)
        if sessions is None:
            return
        subs = sessions.get(sub.device_session_id)
        if subs is None or sub not in subs:
            return
        subs.discard(sub)
        self._count -= 1
        if not subs:
            del sessions[sub.device_session_id]
            self._session_user.pop(sub.device_session_id, None)
            if not sessions:
                del self._users[sub.user_id]

    def _matching(self, user_id: str, device_session_id: str) -> list[Subscription]:
        sessions = self._users.get(user_id)
        if not sessions:
            return []
        if device_session_id:
            return list(sessions.get(device_session_id, ()))
        return [sub for subs in sessions.values() for sub in subs]

    def publish(self, user_id: str, device_session_id: str, event: Encoded) -> int:
        """Send ``event`` to the user's streams (one session's, or all when empty); returns how many."""
        subs = self._matching(user_id, device_session_id)
        for sub in subs:
            sub.stream.send(event)
        self.delivered += len(subs)
        return len(subs)

    def end(self, user_id: str, device_session_id: str, error: RpcError) -> int:
        """End the matching streams with ``error``; returns how many."""
        subs = self._matching(user_id, device_session_id)
        for sub in subs:
            self.unregister(sub)
            if not sub.done.called:
                sub.done.errback(error)
        return len(subs)

    def end_session(self, device_session_id: str, error: RpcError) -> int:
        """End one device session's streams when only its id is known."""
        user_id = self._session_user.get(device_session_id)
        return 0 if user_id is None else self.end(user_id, device_session_id, error)

    def close(self, error: RpcError) -> int:
        """End every stream with ``error`` and refuse new ones; returns how many ended."""
        self.closed = True
        ended = 0
        for user_id in list(self._users):
            ended += self.end(user_id, "", error)
        return ended
