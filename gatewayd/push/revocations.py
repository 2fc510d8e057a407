"""Invalidations that a SubscribeEvents call still being verified must learn about.

A subscription is verified (session lookup, signature, Redis replay and budget
round trips) before the hub registers it, and ``Hub.end`` only reaches
registered streams. An invalidation that arrives in between would be missed, so
(PROTOCOL.md section 8, "Revocation is final"):

- every subscription takes a ``Ticket`` before its session lookup starts: the
  invalidation sequence number at that moment;
- every invalidation gets the next sequence number and, while any ticket is
  outstanding, is remembered as a tombstone per device session or per user;
- registration asks ``revoked_since(ticket, ...)``: an invalidation of that
  session or user after the ticket refuses the stream.

Memory is bounded twice: a tombstone is forgotten as soon as every ticket
outstanding is younger than it (with no subscription being verified nothing is
kept at all), and at most ``max_tombstones`` are kept. A ticket older than a
tombstone dropped for that bound can no longer be answered for certain:
``revoked_since`` then says ``UNKNOWN`` and the caller fails closed.

When the push stream was down, invalidations may have been missed without any
tombstone at all. ``mark_recheck`` (run when the stream is back, see
``resync.py``) makes every ticket taken before it answer ``RECHECK``: the
subscription may register, but its session must be looked up again.
"""

from __future__ import annotations

import enum
from collections import OrderedDict


class Verdict(enum.Enum):
    """What ``revoked_since`` knows about a ticket's session."""

    CLEAR = "clear"
    REVOKED = "revoked"
    UNKNOWN = "unknown"  # a tombstone it might need was dropped to keep the bound
    RECHECK = "recheck"  # verified before the push stream came back: invalidations may have been missed


# Read once: on Python 3.11 an enum member read from its class is slow (``revoked_since`` runs per open).
_CLEAR, _REVOKED, _UNKNOWN, _RECHECK = Verdict.CLEAR, Verdict.REVOKED, Verdict.UNKNOWN, Verdict.RECHECK


class Ticket:
    """Taken when a subscription's verification starts; given back with ``Revocations.release``."""

    __slots__ = ("since",)

    def __init__(self, since: int) -> None:
        self.since = since


class Revocations:
    """Sequence-numbered tombstones of recent invalidations, kept only while someone may need them."""

    def __init__(self, max_tombstones: int = 100_000) -> None:
        if max_tombstones < 1:
            raise ValueError("max_tombstones must be at least 1")
        self._max = max_tombstones
        self._seq = 0
        # ("s", device_session_id) or ("u", user_id) -> sequence number; kept in sequence order.
        self._tombstones: OrderedDict[tuple[str, str], int] = OrderedDict()
        # Outstanding tickets in the order taken, hence by non-decreasing ``since``.
        self._tickets: dict[Ticket, None] = {}
        # Tickets older than this may have lost a tombstone to the bound.
        self._floor = 0
        # Tickets older than this were taken before the push stream last came back.
        self._recheck_floor = 0

    def __len__(self) -> int:
        """How many tombstones are kept right now."""
        return len(self._tombstones)

    @property
    def outstanding(self) -> int:
        """How many tickets were taken and not yet released."""
        return len(self._tickets)

    def take(self) -> Ticket:
        """A ticket for a subscription whose verification starts now."""
        ticket = Ticket(self._seq)
        self._tickets[ticket] = None
        return ticket

    def release(self, ticket: Ticket) -> None:
        """The subscription is registered or gone; forget what only it needed (idempotent)."""
        if self._tickets.pop(ticket, False) is not False:
            self._prune()

    def record(self, user_id: str, device_session_id: str) -> None:
        """An invalidation arrived: of one device session, or (empty session id) all of a user's."""
        self._seq += 1
        if not self._tickets:
            return  # nobody is being verified: registered streams are ended by the hub itself
        key = ("s", device_session_id) if device_session_id else ("u", user_id)
        self._tombstones[key] = self._seq
        self._tombstones.move_to_end(key)
        if len(self._tombstones) > self._max:
            _, dropped = self._tombstones.popitem(last=False)
            self._floor = dropped

    def mark_recheck(self) -> None:
        """Invalidations may have been missed until now: tickets taken before say ``RECHECK``."""
        self._seq += 1
        self._recheck_floor = self._seq

    def revoked_since(self, ticket: Ticket, user_id: str, device_session_id: str) -> Verdict:
        """Whether ``device_session_id`` (of ``user_id``) was invalidated after ``ticket`` was taken."""
        since = ticket.since
        tombstones = self._tombstones
        if tombstones:  # (none at all, the common case: nobody was invalidated while verifying)
            for key in (("s", device_session_id), ("u", user_id)):
                seq = tombstones.get(key)
                if seq is not None and seq > since:
                    return _REVOKED
        if since < self._floor:
            return _UNKNOWN
        return _RECHECK if since < self._recheck_floor else _CLEAR

    def _prune(self) -> None:
        if not self._tickets:
            self._tombstones.clear()
            return
        oldest = next(iter(self._tickets)).since
        tombstones = self._tombstones
        # Tombstones are in sequence order: drop from the front what every outstanding ticket predates.
        while tombstones:
            key, seq = next(iter(tombstones.items()))
            if seq > oldest:
                break
            del tombstones[key]
