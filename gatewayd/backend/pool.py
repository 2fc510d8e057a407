"""A bounded pool of keep-alive HTTP/1.1 connections to the backend, with a bounded wait queue.

Promises:

- At most ``max_connections`` connections are open or opening at any time. A
  request takes an idle connection, or waits in a FIFO queue of at most
  ``max_waiting`` requests for one to come free (or to be opened); it never
  opens a throwaway connection beyond the limit. A full queue refuses at
  once with ``BackendUnavailable``.
- Every request has one deadline, ``timeout_s``, covering the wait, the
  connect and the exchange; past it the request fails with
  ``BackendUnavailable("backend timed out")`` (its connection, if it had one,
  is closed). The deadline fires one reactor turn late: timers run before the
  reactor reads its sockets, so on a saturated reactor an answer already
  waiting in a socket would otherwise lose to its own timeout. Every request
  has the same timeout, so the order requests arrive in is the order their
  deadlines fall in: the pool keeps one queue of them and one timer, for the
  oldest unsettled one, instead of a timer per request.
- Cancelling a request's Deferred leaves the queue or closes its connection;
  the Deferred fails with ``CancelledError``, never ``BackendUnavailable``.
- A request whose reused connection died before one byte of the answer came
  (the backend closed an idle connection as we wrote) is retried once on
  another connection when ``retryable`` (idempotent requests without a body).
- A failed connect fails the oldest waiting request only when no connection
  is open (nothing else could serve it); otherwise waiters keep waiting for
  the open ones, within their deadline.
- ``observer(operation, seconds, failure)``, when given, hears of every
  request once it is settled (answered, failed, timed out or cancelled),
  before the caller's callbacks run.
- A request is written when the reactor turn that made it ends, with the
  turn's other requests (``BackendConnection``): a backend on the same core
  serves them in one wake-up.
- ``stats`` tells the limit, the open, in-use and opening connections, the
  waiting requests and how many were refused (``/metrics``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, gatherResults
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure

from gatewayd.backend.answers import BackendAnswer, BackendUnavailable
from gatewayd.backend.connection import AnswerHeads, BackendConnection
from gatewayd.transport.turn_writes import TurnWrites

log = Logger()

RequestObserver = Callable[[str, float, "Failure | None"], None]
"""``observer(operation, seconds, failure)``: one settled request; ``failure`` is None for an answer."""


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of a ``ConnectionPool``."""

    max_connections: int
    open: int
    in_use: int
    connecting: int
    waiting: int
    max_waiting: int
    refused: int  # requests refused at once, the queue being full (since start)


class _ConnectionFactory(Factory):
    noisy = False  # no "Starting factory" log line per connection

    def __init__(self, pool: ConnectionPool, max_body_bytes: int, turn: TurnWrites) -> None:
        self.pool = pool
        self.max_body_bytes = max_body_bytes
        self.heads = AnswerHeads()  # shared by the pool's connections
        self.turn = turn

    def buildProtocol(self, addr: Any) -> BackendConnection:
        return BackendConnection(self.pool, self.max_body_bytes, self.heads, self.turn)


class _Request:
    """One request through the pool: waiting, then on a connection, then settled (``done``)."""

    __slots__ = ("connection", "data", "deadline", "deferred", "done", "operation", "pool", "retryable", "started")

    def __init__(self, pool: ConnectionPool, data: bytes, retryable: bool, deadline: float, operation: str,
                 started: float) -> None:
        self.pool = pool
        self.data = data
        self.retryable = retryable
        self.deadline = deadline  # reactor seconds
        self.operation = operation
        self.started = started  # the observer's timer
        self.connection: BackendConnection | None = None
        self.done = False
        self.deferred: Deferred[BackendAnswer] = Deferred(self._cancel)

    # --- from the pool ------------------------------------------------------------------------

    def start(self, connection: BackendConnection) -> None:
        self.connection = connection
        connection.send(self.data, self)

    def refuse(self, error: BackendUnavailable) -> None:
        self._settle(Failure(error))

    # --- from the connection (an Exchange) ------------------------------------------------------

    def answered(self, answer: BackendAnswer) -> None:
        self.connection = None
        self._settle(answer)

    def failed(self, error: BackendUnavailable, received_any: bool) -> None:
        connection, self.connection = self.connection, None
        if self.retryable and not received_any and connection is not None and connection.requests_sent > 1:
            self.retryable = False  # once
            self.pool._acquire(self)
            return
        self._settle(Failure(error))

    # --- deadline and cancellation ---------------------------------------------------------------

    def expire(self) -> None:
        if self.done:
            return
        log.warn("backend request timed out after {timeout_s}s", timeout_s=self.pool.timeout_s)
        self._leave()
        self._settle(Failure(BackendUnavailable("backend timed out")))

    def _cancel(self, _: Deferred[BackendAnswer]) -> None:
        if self.done:
            return
        self.done = True
        self.data = b""
        self._leave()
        self.pool._observe(self, Failure(CancelledError()))
        # Deferred fails itself with CancelledError once its canceller returns.

    def _leave(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.abandon()
        else:
            self.pool._forget(self)

    def _settle(self, result: BackendAnswer | Failure) -> None:
        if self.done:
            return
        self.done = True
        self.data = b""  # the request may wait in the deadline queue a while: keep nothing big alive
        if isinstance(result, Failure):
            self.pool._observe(self, result)
            self.deferred.errback(result)
        else:
            self.pool._observe(self, None)
            self.deferred.callback(result)


class ConnectionPool:
    """Keep-alive connections to one backend ``endpoint`` (an ``IStreamClientEndpoint``)."""

    def __init__(
        self,
        reactor: Any,
        endpoint: Any,
        *,
        max_connections: int,
        max_waiting: int,
        timeout_s: float,
        max_body_bytes: int,
        observer: RequestObserver | None = None,
        timer: Callable[[], float] | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._reactor = reactor
        self._endpoint = endpoint
        self._factory = _ConnectionFactory(self, max_body_bytes, TurnWrites.for_clock(reactor))
        self.max_connections = max_connections
        self.max_waiting = max_waiting
        self.timeout_s = timeout_s
        self._open: set[BackendConnection] = set()  # connected, not closing
        self._idle: list[BackendConnection] = []  # a stack: the most recently used goes first
        self._connecting = 0
        self._in_connect_loop = False
        self._waiting: deque[_Request] = deque()
        self._lost: dict[BackendConnection, Deferred[None]] = {}
        self._refused = 0
        self._observer = observer
        self._timer = timer or reactor.seconds  # the observer's clock (time.perf_counter in production)
        # Requests by deadline (= arrival order: one timeout for all), settled ones dropped lazily,
        # and the one timer, due at the oldest deadline in the queue.
        self._deadlines: deque[_Request] = deque()
        self._deadline_timer: Any = None

    @property
    def stats(self) -> PoolStats:
        return PoolStats(
            max_connections=self.max_connections,
            open=len(self._open),
            in_use=len(self._open) - len(self._idle),
            connecting=self._connecting,
            waiting=len(self._waiting),
            max_waiting=self.max_waiting,
            refused=self._refused,
        )

    def request(self, data: bytes, retryable: bool = False, operation: str = "") -> Deferred[BackendAnswer]:
        """Send ``data`` (a complete HTTP/1.1 request) on a pooled connection; fire with the answer.

        ``operation`` names the request for the observer (``session``, ``route``).
        """
        reactor = self._reactor
        started = self._timer() if self._observer is not None else 0.0
        request = _Request(self, data, retryable, reactor.seconds() + self.timeout_s, operation, started)
        deadlines = self._deadlines
        while deadlines and deadlines[0].done:  # answers mostly come in order: this keeps the queue short
            deadlines.popleft()
        deadlines.append(request)
        if self._deadline_timer is None:
            self._deadline_timer = reactor.callLater(self.timeout_s, self._expire_due)
        self._acquire(request)
        return request.deferred

    def close(self) -> Deferred[None]:
        """Close the idle connections; fires once they are gone. The pool stays usable."""
        if all(request.done for request in self._deadlines):
            self._deadlines.clear()
            timer, self._deadline_timer = self._deadline_timer, None
            if timer is not None and timer.active():
                timer.cancel()
        idle, self._idle = self._idle, []
        waits = []
        for connection in idle:
            self._open.discard(connection)
            waits.append(self._lost.setdefault(connection, Deferred()))
            connection.close()
        return gatherResults(waits).addCallback(lambda _: None)

    # --- requests -----------------------------------------------------------------------------------

    def _expire_due(self) -> None:
        """The timer: every unsettled request past its deadline expires one reactor turn later."""
        self._deadline_timer = None
        reactor = self._reactor
        now = reactor.seconds()
        deadlines = self._deadlines
        while deadlines:
            request = deadlines[0]
            if not request.done:
                if request.deadline > now:
                    self._deadline_timer = reactor.callLater(request.deadline - now, self._expire_due)
                    return
                reactor.callLater(0, request.expire)
            deadlines.popleft()

    def _observe(self, request: _Request, failure: Failure | None) -> None:
        if self._observer is not None:
            self._observer(request.operation, self._timer() - request.started, failure)

    def _acquire(self, request: _Request) -> None:
        idle = self._idle
        while idle:
            connection = idle.pop()
            if not connection.closed:
                request.start(connection)
                return
        if len(self._waiting) >= self.max_waiting:
            self._refused += 1
            request.refuse(BackendUnavailable("backend connection queue is full"))
            return
        self._waiting.append(request)
        self._connect_for_waiters()

    def _forget(self, request: _Request) -> None:
        try:
            self._waiting.remove(request)
        except ValueError:
            pass

    def _dispatch(self, connection: BackendConnection) -> None:
        if self._waiting:
            self._waiting.popleft().start(connection)
        else:
            self._idle.append(connection)

    # --- connections --------------------------------------------------------------------------------

    def _connect_for_waiters(self) -> None:
        if self._in_connect_loop:
            return  # a connect that failed synchronously: the loop below goes on by itself
        self._in_connect_loop = True
        try:
            # No more connects than requests waiting for them, and never beyond the limit.
            while self._connecting < len(self._waiting) and len(self._open) + self._connecting < self.max_connections:
                self._connecting += 1
                d: Deferred[Any] = self._endpoint.connect(self._factory)
                d.addCallbacks(self._connected, self._connect_failed)
        finally:
            self._in_connect_loop = False

    def _connected(self, connection: BackendConnection) -> None:
        self._connecting -= 1
        if connection.closed:
            return
        self._open.add(connection)
        self._dispatch(connection)

    def _connect_failed(self, failure: Failure) -> None:
        self._connecting -= 1
        if self._open or not self._waiting:
            return  # the open connections serve the waiters, within their deadlines
        error = BackendUnavailable(f"backend unavailable: {type(failure.value).__name__}")
        self._waiting.popleft().refuse(error)
        self._connect_for_waiters()

    # --- from connections (a ConnectionOwner) --------------------------------------------------------

    def connection_free(self, connection: BackendConnection, reusable: bool) -> None:
        if reusable and connection in self._open:
            self._dispatch(connection)
        else:
            self._drop(connection)

    def connection_lost(self, connection: BackendConnection) -> None:
        self._drop(connection)
        lost = self._lost.pop(connection, None)
        if lost is not None:
            lost.callback(None)

    def _drop(self, connection: BackendConnection) -> None:
        if connection in self._open:
            self._open.discard(connection)
            if connection in self._idle:
                self._idle.remove(connection)
            self._connect_for_waiters()
