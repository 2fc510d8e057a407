"""The backend connection pool and its HTTP/1.1 connections, on a Clock with in-memory transports.

Each connect hands the pool a ``StringTransport``; the tests play the backend
by reading what was written and feeding answer bytes to the connection.
Real sockets and the reference backend: tests/integration/test_backend_http1.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from gatewayd.backend.answers import BackendAnswer, BackendUnavailable
from gatewayd.backend.connection import BackendConnection
from gatewayd.backend.pool import ConnectionPool

GET = b"GET /x HTTP/1.1\r\nHost: b\r\n\r\n"
POST = b"POST /x HTTP/1.1\r\nHost: b\r\nContent-Length: 2\r\n\r\n{}"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@implementer(IStreamClientEndpoint)
class Wire:
    """A client endpoint whose connections are in-memory; ``refuse`` makes connects fail."""

    def __init__(self, connect_at_once: bool = True) -> None:
        self.connections: list[tuple[BackendConnection, StringTransport]] = []
        self.pending: list[tuple[BackendConnection, StringTransport, Deferred[Any]]] = []
        self.connect_at_once = connect_at_once
        self.refuse = False
        self.attempts = 0
        self.clock: Clock | None = None  # the pool's, for ``written``

    def connect(self, factory: Any) -> Deferred[Any]:
        self.attempts += 1
        if self.refuse:
            return fail(ConnectionRefusedError())
        protocol = factory.buildProtocol(None)
        transport = StringTransport()
        d: Deferred[Any] = Deferred()
        self.pending.append((protocol, transport, d))
        if self.connect_at_once:
            self.complete()
        return d

    def complete(self) -> None:
        """Finish every connect in progress."""
        pending, self.pending = self.pending, []
        for protocol, transport, d in pending:
            protocol.makeConnection(transport)
            self.connections.append((protocol, transport))
            d.callback(protocol)

    def fail_pending(self) -> None:
        pending, self.pending = self.pending, []
        for _, _, d in pending:
            d.errback(ConnectionRefusedError())

    def written(self, index: int) -> bytes:
        """What the pool wrote on connection ``index`` so far (then forgotten), once the turn is over."""
        if self.clock is not None:
            self.clock.advance(0)  # requests are written at the end of the reactor turn
        transport = self.connections[index][1]
        data = transport.value()
        transport.clear()
        return data

    def answer(self, index: int, data: bytes) -> None:
        """The backend answers on connection ``index``: in a later turn than the request's."""
        if self.clock is not None:
            self.clock.advance(0)
        self.connections[index][0].dataReceived(data)

    def lose(self, index: int, reason: Exception | None = None) -> None:
        self.connections[index][0].connectionLost(Failure(reason or ConnectionDone()))

    def aborted(self, index: int) -> bool:
        transport = self.connections[index][1]
        return bool(transport.disconnecting or getattr(transport, "disconnected", False))


class Rig:
    def __init__(self, max_connections: int = 2, max_waiting: int = 10, timeout_s: float = 5.0,
                 max_body_bytes: int = 1000, connect_at_once: bool = True) -> None:
        self.clock = Clock()
        self.wire = Wire(connect_at_once)
        self.wire.clock = self.clock
        self.pool = ConnectionPool(self.clock, self.wire, max_connections=max_connections,
                                   max_waiting=max_waiting, timeout_s=timeout_s, max_body_bytes=max_body_bytes)

    def request(self, data: bytes = GET, retryable: bool = False) -> Deferred[BackendAnswer]:
        return self.pool.request(data, retryable)


_OUTCOMES: dict[int, tuple[Deferred[Any], list[Any]]] = {}


def outcome(d: Deferred[Any]) -> Any:
    """The result or Failure of a Deferred (taken from it once); ``None`` while it has not fired."""
    if id(d) not in _OUTCOMES:
        box: list[Any] = []
        d.addBoth(box.append)  # consumes it: a Failure read here is handled
        _OUTCOMES[id(d)] = (d, box)  # the Deferred is kept so its id is not reused
    box = _OUTCOMES[id(d)][1]
    return box[0] if box else None


def unavailable(d: Deferred[Any]) -> str:
    result = outcome(d)
    assert isinstance(result, Failure), result
    assert result.check(BackendUnavailable), result
    return str(result.value)


# --- the pool: bounded connections, bounded waiting ------------------------------------------------


def test_requests_beyond_the_pool_wait_for_a_connection_instead_of_opening_one() -> None:
    rig = Rig(max_connections=2)
    calls = [rig.request(GET) for _ in range(5)]
    assert len(rig.wire.connections) == 2
    stats = rig.pool.stats
    assert (stats.open, stats.in_use, stats.connecting, stats.waiting) == (2, 2, 0, 3)
    assert rig.wire.written(0) == GET and rig.wire.written(1) == GET
    rig.wire.answer(0, OK)
    assert outcome(calls[0]) == BackendAnswer(200, b"ok")
    assert rig.wire.written(0) == GET  # the next waiter went out on the freed connection at once
    for index in (1, 0, 1, 0):
        rig.wire.answer(index, OK)
    assert [outcome(c) for c in calls] == [BackendAnswer(200, b"ok")] * 5
    assert len(rig.wire.connections) == 2 and rig.wire.attempts == 2
    stats = rig.pool.stats
    assert (stats.open, stats.in_use, stats.waiting, stats.max_connections) == (2, 0, 0, 2)


def test_the_wait_queue_is_bounded() -> None:
    rig = Rig(max_connections=1, max_waiting=2)
    calls = [rig.request() for _ in range(4)]
    assert [outcome(c) for c in calls[:3]] == [None] * 3
    assert "queue is full" in unavailable(calls[3])
    assert rig.pool.stats.waiting == 2


def test_no_more_connects_than_waiting_requests() -> None:
    rig = Rig(max_connections=8, connect_at_once=False)
    rig.request()
    rig.request()
    assert rig.wire.attempts == 2 and rig.pool.stats.connecting == 2
    rig.wire.complete()
    assert rig.pool.stats.in_use == 2 and rig.pool.stats.connecting == 0


def test_a_request_times_out_on_the_clock_and_its_connection_is_dropped() -> None:
    rig = Rig(max_connections=1, timeout_s=2.0)
    first = rig.request()
    rig.clock.advance(1.0)
    second = rig.request()  # waits for the one connection; its deadline is t=3
    rig.clock.advance(1.0)
    assert "timed out" in unavailable(first)
    assert rig.wire.aborted(0), "a timed-out exchange's connection is never reused"
    # The second request got a new connection (the first one was dropped) and keeps its own deadline.
    assert rig.wire.attempts == 2 and rig.wire.written(1) == GET
    rig.clock.advance(0.9)
    assert outcome(second) is None
    rig.clock.advance(0.1)
    assert "timed out" in unavailable(second)
    assert rig.pool.stats.waiting == 0 and rig.pool.stats.open == 0
    assert not rig.clock.getDelayedCalls()


def test_a_request_waiting_in_the_queue_times_out() -> None:
    rig = Rig(max_connections=1, timeout_s=2.0)
    rig.request()
    rig.clock.advance(1.5)
    waiting = rig.request()
    assert rig.pool.stats.waiting == 1
    rig.wire.answer(0, b"HTTP/1.1 200 OK\r\nContent-Len")  # the first one is slow
    rig.clock.advance(2.0)
    rig.clock.advance(0)
    assert "timed out" in unavailable(waiting)


def test_one_timer_serves_every_request_and_settled_ones_are_not_kept() -> None:
    """All requests share one timeout, so one timer (for the oldest unsettled request) is enough."""
    rig = Rig(max_connections=2, timeout_s=2.0)
    calls = [rig.request() for _ in range(5)]
    rig.clock.advance(0)  # the turn ends: the two requests on connections are written
    assert len(rig.clock.getDelayedCalls()) == 1
    rig.wire.answer(0, OK)
    rig.wire.answer(1, OK)
    assert [outcome(c) for c in calls[:2]] == [BackendAnswer(200, b"ok")] * 2
    rig.clock.advance(1.0)
    late = rig.request()  # deadline t=3; the queue no longer holds the two settled ones
    assert len(rig.pool._deadlines) == 4 and len(rig.clock.getDelayedCalls()) == 1
    rig.clock.advance(1.0)  # t=2: the three still waiting expire, ``late`` keeps its deadline
    assert all("timed out" in unavailable(c) for c in calls[2:])
    assert outcome(late) is None and len(rig.clock.getDelayedCalls()) == 1
    rig.clock.advance(1.0)
    assert "timed out" in unavailable(late)
    assert not rig.clock.getDelayedCalls() and not rig.pool._deadlines


def test_the_observer_hears_every_settled_request_before_its_caller() -> None:
    heard: list[tuple[str, float, str | None]] = []
    clock = Clock()
    wire = Wire()
    pool = ConnectionPool(clock, wire, max_connections=1, max_waiting=5, timeout_s=2.0, max_body_bytes=100,
                          observer=lambda op, s, f: heard.append((op, s, None if f is None else f.type.__name__)),
                          timer=clock.seconds)
    answered = pool.request(GET, operation="route")
    answered.addCallback(lambda answer: heard.append(("caller", 0.0, None)) or answer)
    cancelled = pool.request(GET, operation="session")
    timed_out = pool.request(GET, operation="session")
    clock.advance(0.5)
    wire.answer(0, OK)
    cancelled.cancel()
    assert outcome(cancelled).check(CancelledError)
    clock.advance(2.0)
    assert "timed out" in unavailable(timed_out)
    assert heard == [("route", 0.5, None), ("caller", 0.0, None), ("session", 0.5, "CancelledError"),
                     ("session", 2.5, "BackendUnavailable")]


def test_cancelling_a_waiting_request_leaves_the_queue() -> None:
    rig = Rig(max_connections=1)
    first, second = rig.request(), rig.request()
    second.cancel()
    assert outcome(second).check(CancelledError)
    assert rig.pool.stats.waiting == 0
    rig.wire.answer(0, OK)
    assert outcome(first) == BackendAnswer(200, b"ok")
    assert rig.wire.written(0) == GET, "only the first request was written"
    assert rig.pool.stats.in_use == 0


def test_cancelling_an_exchange_closes_its_connection() -> None:
    rig = Rig()
    call = rig.request()
    call.cancel()
    assert outcome(call).check(CancelledError)
    assert rig.wire.aborted(0) and rig.pool.stats.open == 0
    rig.clock.advance(10)  # no timeout fires later into a settled Deferred
    assert not rig.clock.getDelayedCalls()


def test_a_refused_connect_fails_the_oldest_waiter_when_nothing_is_open() -> None:
    rig = Rig(max_connections=2)
    rig.wire.refuse = True
    a, b = rig.request(), rig.request()
    assert "ConnectionRefusedError" in unavailable(a)
    assert "ConnectionRefusedError" in unavailable(b)
    assert rig.pool.stats.waiting == 0 and rig.pool.stats.connecting == 0


def test_a_refused_connect_leaves_waiters_to_the_open_connections() -> None:
    rig = Rig(max_connections=2, connect_at_once=True)
    first = rig.request()
    rig.wire.written(0)
    rig.wire.connect_at_once = False
    second = rig.request()
    rig.wire.fail_pending()
    assert outcome(second) is None and rig.pool.stats.waiting == 1
    rig.wire.answer(0, OK)
    assert outcome(first) == BackendAnswer(200, b"ok")
    assert rig.wire.written(0) == GET  # the waiter went out on the open connection
    rig.wire.answer(0, OK)
    assert outcome(second) == BackendAnswer(200, b"ok")


def test_a_lost_idle_connection_is_not_reused() -> None:
    rig = Rig()
    rig.request()
    rig.wire.answer(0, OK)
    rig.wire.lose(0)
    assert rig.pool.stats.open == 0
    rig.request()
    assert len(rig.wire.connections) == 2 and rig.wire.written(1) == GET


def test_bytes_on_an_idle_connection_close_it() -> None:
    rig = Rig()
    rig.request()
    rig.wire.answer(0, OK)
    rig.wire.answer(0, b"HTTP/1.1 200 OK\r\n")
    assert rig.wire.aborted(0)
    rig.request()
    assert len(rig.wire.connections) == 2


def test_close_closes_idle_connections_and_the_pool_stays_usable() -> None:
    rig = Rig()
    rig.request()
    rig.wire.answer(0, OK)
    closed = rig.pool.close()
    assert not closed.called and rig.wire.connections[0][1].disconnecting
    rig.wire.lose(0)
    assert closed.called
    call = rig.request()
    rig.wire.answer(1, OK)
    assert outcome(call) == BackendAnswer(200, b"ok")


# --- retrying once on a reused connection ------------------------------------------------------------


def test_a_retryable_request_goes_again_when_a_reused_connection_died_silently() -> None:
    rig = Rig()
    rig.request(retryable=True)
    rig.wire.answer(0, OK)
    rig.wire.written(0)
    call = rig.request(retryable=True)
    assert rig.wire.written(0) == GET
    rig.wire.lose(0)  # the backend closed it as we wrote: not one byte of an answer
    assert outcome(call) is None
    assert rig.wire.written(1) == GET
    rig.wire.answer(1, OK)
    assert outcome(call) == BackendAnswer(200, b"ok")


@pytest.mark.parametrize("case", ["not retryable", "fresh connection", "answer begun", "second loss"])
def test_requests_are_not_retried_otherwise(case: str) -> None:
    rig = Rig()
    if case != "fresh connection":
        rig.request()
        rig.wire.answer(0, OK)
    call = rig.request(POST if case == "not retryable" else GET, retryable=case != "not retryable")
    if case == "answer begun":
        rig.wire.answer(0, b"HTTP/1.1 200 OK\r\n")
    rig.wire.lose(0)
    if case == "second loss":
        rig.wire.lose(1)
        assert rig.wire.attempts == 2
    assert "closed the connection" in unavailable(call)
    if case != "second loss":
        assert rig.wire.attempts == 1


# --- answers, as httptools parses them ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("pieces", "status", "body"),
    [
        ([OK], 200, b"ok"),
        ([b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\n", b"do", b"wn"], 503, b"down"),
        ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", b"2\r\nde\r\n0\r\n\r\n"],
         200, b"abcde"),
        ([b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx"], 201, b"x"),
        ([b"HTTP/1.1 204 No Content\r\n\r\n"], 204, b""),
        ([b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"], 404, b""),
    ],
)
def test_answers_in_any_framing_and_pieces_keep_the_connection(pieces: list[bytes], status: int,
                                                                body: bytes) -> None:
    rig = Rig()
    call = rig.request()
    for piece in pieces:
        rig.wire.answer(0, piece)
    assert outcome(call) == BackendAnswer(status, body)
    assert not rig.wire.aborted(0) and rig.pool.stats.open == 1


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    ],
)
def test_an_answer_without_keep_alive_closes_the_connection(answer: bytes) -> None:
    rig = Rig()
    call = rig.request()
    rig.wire.answer(0, answer)
    assert outcome(call) == BackendAnswer(200, b"ok")
    assert rig.wire.aborted(0) and rig.pool.stats.open == 0


def test_a_body_delimited_by_the_connections_end_is_complete_when_it_ends() -> None:
    rig = Rig()
    call = rig.request()
    rig.wire.answer(0, b"HTTP/1.1 200 OK\r\n\r\npart one, ")
    rig.wire.answer(0, b"part two")
    assert outcome(call) is None
    rig.wire.lose(0)
    assert outcome(call) == BackendAnswer(200, b"part one, part two")


@pytest.mark.parametrize(
    ("pieces", "message"),
    [
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"], "closed the connection"),
        ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"], "closed the connection"),
        ([b"HTTP/1.1 200 OK\r\nContent-Le"], "closed the connection"),
        ([], "closed the connection"),
    ],
)
def test_a_connection_lost_mid_answer_is_unavailable(pieces: list[bytes], message: str) -> None:
    rig = Rig()
    call = rig.request()
    for piece in pieces:
        rig.wire.answer(0, piece)
    rig.wire.lose(0, ConnectionLost())
    assert message in unavailable(call)
    assert rig.pool.stats.open == 0


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"garbage\r\n\r\n", "not valid HTTP"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", "too large"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n" + b"x" * 1000 + b"\r\n1\r\nx\r\n",
         "too large"),
        (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n", "upgrade"),
    ],
)
def test_a_malformed_or_oversized_answer_is_unavailable_and_closes(answer: bytes, message: str) -> None:
    rig = Rig(max_body_bytes=1000)
    call = rig.request()
    rig.wire.answer(0, answer)
    if message == "too large" and b"5000" in answer:
        rig.wire.answer(0, b"x" * 1001)
    assert message in unavailable(call)
    assert rig.wire.aborted(0) and rig.pool.stats.open == 0


def test_bytes_after_a_complete_answer_deliver_it_but_retire_the_connection() -> None:
    rig = Rig()
    call = rig.request()
    rig.wire.answer(0, OK + b"HTTP/1.1 200 OK\r\n")
    assert outcome(call) == BackendAnswer(200, b"ok")
    assert rig.wire.aborted(0) and rig.pool.stats.open == 0


def test_an_answer_delivered_synchronously_reaches_a_caller_that_reuses_the_connection() -> None:
    """The connection is back in the pool before the caller's callbacks run."""
    rig = Rig(max_connections=1)
    second: list[Deferred[BackendAnswer]] = []
    first = rig.request()
    first.addCallback(lambda answer: second.append(rig.request()) or answer)
    rig.wire.answer(0, OK)
    assert outcome(first) == BackendAnswer(200, b"ok")
    assert rig.wire.written(0) == GET + GET and rig.wire.attempts == 1
    rig.wire.answer(0, OK)
    assert outcome(second[0]) == BackendAnswer(200, b"ok")


def test_requests_of_one_turn_are_written_together_when_it_ends() -> None:
    rig = Rig(max_connections=3)
    calls = [rig.request(GET), rig.request(POST), rig.request(GET)]
    assert [t.value() for _, t in rig.wire.connections] == [b"", b"", b""]
    assert len(rig.clock.getDelayedCalls()) == 2  # the deadline timer and one for the turn's writes
    rig.clock.advance(0)
    assert [rig.wire.written(i) for i in range(3)] == [GET, POST, GET]
    for i in range(3):
        rig.wire.answer(i, OK)
    assert [outcome(c) for c in calls] == [BackendAnswer(200, b"ok")] * 3


def test_a_request_cancelled_before_its_turn_ends_is_never_written() -> None:
    rig = Rig(max_connections=2)
    cancelled, kept = rig.request(), rig.request(POST)
    cancelled.cancel()
    assert outcome(cancelled).check(CancelledError)
    assert rig.wire.written(0) == b"" and rig.wire.aborted(0)
    assert rig.wire.written(1) == POST and outcome(kept) is None


def test_an_answer_before_the_request_went_out_is_refused() -> None:
    rig = Rig(max_connections=1)
    call = rig.request()
    rig.wire.connections[0][0].dataReceived(OK)  # the same turn: nothing has been written yet
    assert unavailable(call) == "backend answered a request it was not sent"
    assert rig.wire.aborted(0) and rig.wire.written(0) == b""


def test_a_succeeding_endpoint_that_answers_synchronously_is_fine() -> None:
    """An endpoint may fire its Deferred at once (as Wire does): the pool must not recurse or lose track."""
    clock = Clock()

    @implementer(IStreamClientEndpoint)
    class Immediate:
        def connect(self, factory: Any) -> Deferred[Any]:
            protocol = factory.buildProtocol(None)
            protocol.makeConnection(StringTransport())
            return succeed(protocol)

    pool = ConnectionPool(clock, Immediate(), max_connections=3, max_waiting=5, timeout_s=1.0, max_body_bytes=10)
    for _ in range(3):
        pool.request(GET)
    assert (pool.stats.open, pool.stats.in_use, pool.stats.waiting) == (3, 3, 0)


# --- answer heads parsed once (AnswerHeads) -------------------------------------------------------------


class _NoParser:
    """Stands in for httptools' parser where an answer must be decided from a remembered head."""

    def feed_data(self, data: bytes) -> None:
        raise AssertionError("parsed again")


def test_a_head_parsed_once_is_not_parsed_again_and_gives_the_same_answer() -> None:
    rig = Rig(max_connections=1)
    head = b"HTTP/1.1 201 Created\r\nServer: b\r\nContent-Length: 5\r\n\r\n"
    first = rig.request()
    rig.wire.answer(0, head + b"first")
    assert outcome(first) == BackendAnswer(201, b"first")
    assert rig.pool._factory.heads.known == {head: (201, True, 5)}
    connection = rig.wire.connections[0][0]
    parser, connection._parser = connection._parser, _NoParser()
    second = rig.request()
    rig.wire.answer(0, head + b"again")
    assert outcome(second) == BackendAnswer(201, b"again")
    assert not rig.wire.aborted(0) and rig.pool.stats.open == 1
    # Another body length, or a head not seen before: httptools again.
    connection._parser = parser
    for answer, expected in [(head + b"longer", BackendAnswer(201, b"longe")), (OK, BackendAnswer(200, b"ok"))]:
        call = rig.request()
        rig.wire.answer(0, answer)
        assert outcome(call) == expected
        if answer != OK:
            assert rig.wire.aborted(0)  # a byte after the answer: retired, as before
            break


REMEMBERED = [
    OK,
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\n\r\n",
    b"HTTP/1.1 500 Internal Server Error\r\ncontent-length:  3 \r\nX-A: \xe9\r\n\r\nbad",
]
NOT_REMEMBERED = [
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 200 OK\nContent-Length: 6\n\nab\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n\r\nto the end",
    OK + b"HTTP/1.1 200 OK\r\n",
    OK + OK,
    b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000,
    b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok",
    b"garbage\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
]


@pytest.mark.parametrize("answer", REMEMBERED + NOT_REMEMBERED)
def test_an_answer_from_a_remembered_head_is_what_httptools_made_of_it(answer: bytes) -> None:
    """Each answer arrives twice in one read, on fresh connections of one pool: the second time
    (from the remembered head, if it was remembered) the caller sees exactly the same, and the
    connection is kept or retired the same. Only Content-Length answers, alone in their read,
    are remembered."""
    rig = Rig(max_connections=1, max_body_bytes=1000)
    seen = []
    for index in range(2):
        while rig.pool.stats.open:  # the next request takes a fresh connection
            rig.pool._drop(rig.wire.connections[-1][0])
        call = rig.request()
        connection = rig.wire.connections[index][0]
        if index == 1 and answer in REMEMBERED:
            connection._parser = _NoParser()  # decided from the remembered head alone
        rig.wire.answer(index, answer)
        result = outcome(call)
        if isinstance(result, Failure):
            result = ("unavailable", str(result.value))
        seen.append((result, rig.wire.aborted(index), connection._fresh))
    assert seen[0] == seen[1]
    assert bool(rig.pool._factory.heads.known) == (answer in REMEMBERED)


def test_remembered_heads_are_bounded() -> None:
    from gatewayd.backend.connection import MAX_HEADS, AnswerHeads

    heads = AnswerHeads()
    for n in range(MAX_HEADS + 10):
        heads.remember(b"HTTP/1.1 200 OK\r\nX-N: %d\r\n\r\n" % n, 200, True, 0)
    assert len(heads.known) <= MAX_HEADS
