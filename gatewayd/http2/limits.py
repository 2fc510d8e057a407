"""The HTTP/2 server's limits and the budgets and meters that enforce them (all on an injected clock)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from twisted.internet.interfaces import IDelayedCall, IReactorTime


@dataclass(frozen=True, slots=True)
class H2Limits:
    """Connection limits, with defaults; built from ``ServerConfig``."""

    max_concurrent_streams: int = 100
    max_header_list_bytes: int = 16 * 1024
    idle_timeout_s: float = 300.0
    keepalive_interval_s: float = 0.0
    keepalive_timeout_s: float = 20.0
    # A stream whose queued response bytes make no progress this long is reset; a socket, aborted (0 = off).
    send_timeout_s: float = 30.0
    initial_window_size: int = 1024 * 1024
    # GOAWAY(ENHANCE_YOUR_CALM) once half of about this many recent streams were reset unanswered.
    rapid_reset_window: int = 200
    # SETTINGS and PING frames: a token bucket per connection.
    control_frame_burst: int = 200
    control_frame_rate: float = 20.0
    shutdown_ping_timeout_s: float = 2.0
    # New streams all connections together start per reactor turn; the rest wait a turn.
    streams_per_turn: int = 128


class TurnBudget:
    """How many new streams all connections may still start in this reactor turn.

    One socket read can hold hundreds of requests (a reconnect storm, a client
    pipelining subscriptions), and a turn can see many such reads. Handled in
    one go they would keep the reactor from everything else, timers and the
    answers of the backend included, for seconds. Streams past the budget wait
    for a later turn (reading from their connection is paused if more bytes
    arrive meanwhile).

    Connections that ran out wait in line (``wait``): each turn the renewed budget
    resumes them in the order they came, until it runs out again, from one delayed
    call for all of them. (A delayed call per waiting connection, re-armed every
    turn it finds the budget spent, costs each of hundreds of waiting connections a
    timer-heap push and pop per turn: most of an open in a storm over many connections.)
    """

    __slots__ = ("_clock", "_per_turn", "_reset_call", "_waiting", "left")

    def __init__(self, clock: IReactorTime, per_turn: int) -> None:
        self._clock = clock
        self._per_turn = per_turn
        self.left = per_turn
        self._reset_call: IDelayedCall | None = None
        self._waiting: deque[Callable[[], None]] = deque()

    def take(self) -> bool:
        if self._reset_call is None:
            self._reset_call = self._clock.callLater(0, self._reset)
        if self.left <= 0:
            return False
        self.left -= 1
        return True

    def wait(self, resume: Callable[[], None]) -> None:
        """Call ``resume`` in a later turn, once the renewed budget reaches it (first come, first resumed)."""
        self._waiting.append(resume)
        if self._reset_call is None:
            self._reset_call = self._clock.callLater(0, self._reset)

    @property
    def waiting(self) -> int:
        """How many connections wait for a later turn."""
        return len(self._waiting)

    def _reset(self) -> None:
        self._reset_call = None
        self.left = self._per_turn
        waiting = self._waiting
        # A resumed connection that spends the budget again waits again (at the back), and its
        # take() has armed the next turn's reset; one that takes nothing lets the next one go.
        try:
            while waiting and self.left > 0:
                waiting.popleft()()
        finally:  # (also when a resumed connection raised: the others still get their turn)
            if waiting and self._reset_call is None:
                self._reset_call = self._clock.callLater(0, self._reset)


class TokenBucket:
    """A token bucket on the reactor clock, for control-frame floods."""

    __slots__ = ("_burst", "_clock", "_rate", "_stamp", "_tokens")

    def __init__(self, clock: IReactorTime, rate: float, burst: int) -> None:
        self._clock, self._rate, self._burst = clock, rate, float(burst)
        self._tokens = float(burst)
        self._stamp = clock.seconds()

    def take(self) -> bool:
        now = self._clock.seconds()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class RapidResetMeter:
    """Rapid reset (CVE-2023-44487): streams opened, and those reset before they were answered.

    ``tripped()`` once at least half of roughly the last ``window`` streams were
    reset unanswered (and at least ``window // 2`` of them): the counts are halved
    each time ``2 * window`` streams have opened, so old behaviour fades.
    """

    __slots__ = ("_opened", "_premature", "_window")

    def __init__(self, window: int) -> None:
        self._window = window
        self._opened = 0
        self._premature = 0

    def opened(self) -> None:
        self._opened += 1
        if self._opened >= 2 * self._window:
            self._opened //= 2
            self._premature //= 2

    def reset_unanswered(self) -> bool:
        """Count one premature reset; ``True`` when the connection is now abusive."""
        self._premature += 1
        return self._premature >= self._window // 2 and self._premature * 2 >= self._opened
