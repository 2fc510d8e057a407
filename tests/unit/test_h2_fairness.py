"""A socket read holding hundreds of requests is handled over several reactor turns."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import pytest
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from gatewayd.config import ServerConfig
from gatewayd.health import HealthService
from gatewayd.http2.limits import TurnBudget
from gatewayd.rpc.methods import MethodTable
from gatewayd.transport.cors import CorsPolicy
from gatewayd.transport.listener import GatewayFactory
from gatewayd.transport.server import build_factory

STREAMS = 300


def _factory(clock: Clock) -> GatewayFactory:
    methods = MethodTable()
    for method in HealthService([""]).methods():
        methods.add(method)
    factory, _ = build_factory(methods, clock, ServerConfig(max_concurrent_streams=STREAMS + 10), cors=CorsPolicy())
    return factory


class _Client:
    """A client connection to an in-memory server connection, with STREAMS checks ready to send."""

    def __init__(self, factory: GatewayFactory) -> None:
        self.server = factory.build_h2()
        self.transport = StringTransport()
        self.server.makeConnection(self.transport)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        headers = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/grpc.health.v1.Health/Check"),
                   (b":authority", b"x"), (b"content-type", b"application/grpc"), (b"te", b"trailers")]
        for _ in range(STREAMS):
            sid = self.h2.get_next_available_stream_id()
            self.h2.send_headers(sid, headers)
            self.h2.send_data(sid, b"\x00\x00\x00\x00\x00", end_stream=True)
        self.requests = self.h2.data_to_send()
        self.answered()

    def answered(self) -> int:
        """Responses completed since the last call."""
        events = self.h2.receive_data(self.transport.value())
        self.transport.clear()
        return sum(1 for e in events if isinstance(e, h2.events.StreamEnded))

    @property
    def reading(self) -> str:
        return str(self.transport.producerState)


def test_requests_beyond_the_budget_wait_a_turn_with_reading_paused_if_more_arrives() -> None:
    clock = Clock()
    factory = _factory(clock)
    client = _Client(factory)
    per_turn = factory.limits.streams_per_turn
    assert per_turn < STREAMS
    half = len(client.requests) // 2
    client.server.dataReceived(client.requests[:half])
    done = client.answered()
    assert done == per_turn
    # Waiting streams alone pause nothing (a client waiting for its answers sends no more);
    # bytes that arrive while they wait stop the reading until they are handled.
    assert client.reading == "producing"
    client.server.dataReceived(client.requests[half:])
    assert client.answered() == 0
    assert client.reading == "paused"
    # The rest follows on later reactor turns (a Clock runs them all in one advance).
    clock.advance(0)
    assert done + client.answered() == STREAMS
    assert client.reading == "producing"


def test_connections_share_one_budget_per_turn() -> None:
    clock = Clock()
    factory = _factory(clock)
    clients = [_Client(factory), _Client(factory)]
    for client in clients:
        client.server.dataReceived(client.requests)
    first_turn = sum(client.answered() for client in clients)
    assert first_turn == factory.limits.streams_per_turn
    clock.advance(0)
    assert first_turn + sum(client.answered() for client in clients) == 2 * STREAMS


def _due_now(clock: Clock) -> int:
    return sum(1 for call in clock.getDelayedCalls() if call.getTime() <= clock.seconds())


def _turn(clock: Clock) -> None:
    """One reactor turn: the delayed calls due when it starts (``Clock.advance`` also runs those they add)."""
    due = [call for call in clock.calls if call.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
    for call in due:
        call.called = 1
        call.func(*call.args, **call.kw)


def test_waiting_connections_cost_one_delayed_call_per_turn_and_resume_in_order() -> None:
    clock = Clock()
    factory = _factory(clock)
    per_turn = factory.limits.streams_per_turn
    clients = [_Client(factory) for _ in range(5)]
    for client in clients:
        client.server.dataReceived(client.requests)
    assert [client.answered() for client in clients] == [per_turn, 0, 0, 0, 0]
    assert factory.turn_budget.waiting == 5
    turns = []
    while _due_now(clock):
        # One delayed call renews the budget and resumes the waiting connections: none of their own.
        assert _due_now(clock) == 1
        _turn(clock)
        turns.append([client.answered() for client in clients])
    busy = [turn for turn in turns if sum(turn)]
    assert all(sum(turn) == per_turn for turn in busy[:-1])
    assert sum(map(sum, turns)) == 5 * STREAMS - per_turn
    assert [client.reading for client in clients] == ["producing"] * 5
    assert factory.turn_budget.waiting == 0
    # In turn: the connections waiting are resumed in the order they came (one that spends the
    # budget again waits behind the others), so each gets its first turn before any gets a second.
    first = [next(i for i, turn in enumerate(turns) if turn[k]) for k in range(1, 5)]
    assert first == [1, 2, 3, 4]


def test_a_connection_lost_while_waiting_handles_nothing_more() -> None:
    clock = Clock()
    factory = _factory(clock)
    client = _Client(factory)
    client.server.dataReceived(client.requests)
    assert client.answered() == factory.limits.streams_per_turn
    client.server.connectionLost(None)
    clock.advance(0)
    assert client.answered() == 0
    assert factory.turn_budget.waiting == 0


def test_a_resumed_connection_that_raises_does_not_strand_the_others() -> None:
    clock = Clock()
    budget = TurnBudget(clock, 1)
    ran: list[str] = []

    def boom() -> None:
        ran.append("boom")
        raise RuntimeError("a bug")

    assert budget.take()
    budget.wait(boom)
    budget.wait(lambda: ran.append("next"))
    with pytest.raises(RuntimeError):
        _turn(clock)
    _turn(clock)
    assert ran == ["boom", "next"]
    assert budget.waiting == 0
