"""Hub fan-out in bounded slices on a Clock: per-turn bound, order per stream, revocation mid fan-out.

``TurnClock.turn()`` runs what is due now, as one reactor iteration does: calls scheduled
while it runs wait for the next turn (``Clock.advance(0)`` would run them at once). A slice is
what the hub sends in one turn. Streams are picked by what they received, not by position:
the hub's order of streams within one fan-out is its own.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from gatewayd._proto.gateway.v1.gateway_pb2 import GatewayEvent
from gatewayd.push.hub import Hub, Subscription
from gatewayd.rpc.call import Encoded
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError

USER = "usr_1"


class TurnClock(Clock):
    """A Clock whose ``turn`` runs only the calls due before it started."""

    def turn(self) -> None:
        due = [call for call in self.calls if call.getTime() <= self.seconds()]
        for call in due:
            self.calls.remove(call)
        for call in due:
            call.called = 1
            call.func(*call.args, **call.kw)


class Stream:
    """A ServerStream that records what it was sent; ``on_send`` lets a test react inside a send."""

    def __init__(self, log: list[tuple[Stream, str]], exchange: Any = None) -> None:
        self.exchange = exchange  # what ServerCall calls its transport's stream (connection_of reads its conn)
        self.received: list[str] = []
        self.log = log
        self.on_send: Any = None
        self.closed = False

    def send(self, message: Any) -> None:
        assert isinstance(message, Encoded)
        self.received.append(message.message.event_id)
        self.log.append((self, message.message.event_id))
        if self.on_send is not None:
            self.on_send(self)


def event(event_id: str) -> Encoded:
    return Encoded(GatewayEvent(event_type="user.note.created", event_id=event_id))


class Rig:
    def __init__(self, streams: int, batch: int, sessions: int = 1) -> None:
        self.clock = TurnClock()
        self.hub = Hub(self.clock, fanout_batch=batch)
        self.log: list[tuple[Stream, str]] = []
        self.streams: list[Stream] = []
        self.subs: list[Subscription] = []
        for i in range(streams):
            stream = Stream(self.log)
            self.streams.append(stream)
            self.subs.append(self.hub.register(USER, f"ds_{i % sessions}", stream))

    def turn(self) -> int:
        """Run one reactor turn; how many sends it made."""
        before = len(self.log)
        self.clock.turn()
        return len(self.log) - before

    def drain(self) -> list[int]:
        """Turns until nothing is scheduled; the sends of each."""
        sends = []
        while self.clock.getDelayedCalls():
            sends.append(self.turn())
            assert len(sends) < 10_000
        return sends


def test_one_event_goes_out_in_slices_the_first_at_once() -> None:
    rig = Rig(streams=10, batch=3)
    assert rig.hub.publish(USER, "", event("e1")) == 10
    # The first slice goes out inside publish: those streams do not wait for a turn.
    assert len(rig.log) == 3
    assert rig.hub.pending_sends == 7
    # Slices are two turns apart: the turn between is the connections' writes of the slice before.
    assert rig.drain() == [0, 3, 0, 3, 0, 1]
    assert all(s.received == ["e1"] for s in rig.streams)
    assert rig.hub.delivered == 10 and rig.hub.pending_sends == 0


def test_no_turn_sends_more_than_the_batch_and_every_stream_gets_every_event_in_order() -> None:
    rig = Rig(streams=25, batch=4)
    ids = [f"e{n}" for n in range(6)]
    sends_per_turn = []
    for n, event_id in enumerate(ids):
        before = len(rig.log)
        rig.hub.publish(USER, "", event(event_id))
        sends_per_turn.append(len(rig.log) - before)
        if n % 2:  # a publish in the same turn as the previous one, and a publish after a turn
            sends_per_turn.append(rig.turn())
        # At every moment each stream has received a prefix of the events, in publish order.
        for stream in rig.streams:
            assert stream.received == ids[: len(stream.received)]
    sends_per_turn += rig.drain()
    assert max(sends_per_turn) <= 4
    assert sum(sends_per_turn) == 25 * len(ids)
    for stream in rig.streams:
        assert stream.received == ids
    # A later event waits behind an earlier fan-out: publish sent nothing while one was under way.
    assert sends_per_turn[1] == 0


def test_a_stream_revoked_mid_fanout_gets_nothing_more() -> None:
    rig = Rig(streams=12, batch=4, sessions=2)  # ds_0: even streams, ds_1: odd streams
    outcomes: list[Any] = []
    for sub in rig.subs:
        sub.done.addBoth(outcomes.append)
    rig.hub.publish(USER, "", event("e1"))
    rig.hub.publish(USER, "", event("e2"))
    rig.turn()
    revoked = [s for s, sub in zip(rig.streams, rig.subs, strict=True) if sub.device_session_id == "ds_1"]
    kept = [s for s in rig.streams if s not in revoked]
    received_at_revocation = {id(s): list(s.received) for s in revoked}
    assert any(len(r) < 2 for r in received_at_revocation.values())  # the fan-out really was mid-way

    assert rig.hub.revoke(USER, "ds_1") == 6
    rig.hub.publish(USER, "", event("e3"))
    rig.drain()

    for stream in revoked:
        assert stream.received == received_at_revocation[id(stream)]
    for stream in kept:
        assert stream.received == ["e1", "e2", "e3"]
    errors = [o.value for o in outcomes if o is not None]
    assert len(errors) == 6 and all(isinstance(e, RpcError) and e.code == Code.FAILED_PRECONDITION
                                    for e in errors)
    assert len(rig.hub) == 6


def test_a_stream_that_ends_itself_inside_a_send_is_skipped_afterwards() -> None:
    # As a stream whose buffer overflows does: the send cancels the handler, which unregisters.
    # The first stream sent to ends the last one of the slice still to come.
    rig = Rig(streams=6, batch=2)
    victims: list[Stream] = []

    def end_a_later_one(stream: Stream) -> None:
        if not victims:
            victim, sub = next((s, sub) for s, sub in zip(rig.streams, rig.subs, strict=True) if not s.received)
            victims.append(victim)
            rig.hub.unregister(sub)

    for stream in rig.streams:
        stream.on_send = end_a_later_one
    rig.hub.publish(USER, "", event("e1"))
    rig.hub.publish(USER, "", event("e2"))
    rig.drain()
    (victim,) = victims
    assert victim.received == []
    assert all(s.received == ["e1", "e2"] for s in rig.streams if s is not victim)
    assert rig.hub.delivered == 10


def test_a_publish_from_inside_a_send_queues_behind_and_sends_nothing_twice() -> None:
    rig = Rig(streams=5, batch=10)
    published = []

    def publish_once(_: Stream) -> None:
        if not published:
            published.append(rig.hub.publish(USER, "", event("e2")))

    for stream in rig.streams:
        stream.on_send = publish_once
    rig.hub.publish(USER, "", event("e1"))
    rig.drain()
    assert published == [5]
    for stream in rig.streams:
        assert stream.received == ["e1", "e2"]


def test_close_mid_fanout_sends_nothing_more_and_leaves_no_timer() -> None:
    rig = Rig(streams=10, batch=3)
    rig.hub.publish(USER, "", event("e1"))
    assert rig.hub.close(RpcError(Code.UNAVAILABLE, "bye")) == 10
    assert rig.clock.getDelayedCalls() == []
    assert len(rig.log) == 3 and rig.hub.pending_sends == 0
    with pytest.raises(RpcError) as info:
        rig.hub.register(USER, "ds_0", Stream(rig.log))
    assert info.value.code == Code.UNAVAILABLE


def test_publish_to_one_session_reaches_only_it() -> None:
    rig = Rig(streams=6, batch=100, sessions=3)
    assert rig.hub.publish(USER, "ds_1", event("e1")) == 2
    assert [len(s.received) for s in rig.streams] == [0, 1, 0, 0, 1, 0]
    assert rig.hub.publish("usr_other", "", event("e2")) == 0
    assert rig.clock.getDelayedCalls() == []


class Exchange:
    def __init__(self, conn: object) -> None:
        self.conn = conn


def runs_of_connections(log: list[tuple[Stream, str]]) -> list[object]:
    """The connections in the order sends reached them, one entry per unbroken run."""
    order = [stream.exchange.conn for stream, _ in log]
    return [conn for i, conn in enumerate(order) if i == 0 or order[i - 1] is not conn]


def test_a_fanout_visits_each_connections_streams_together() -> None:
    rig = Rig(streams=0, batch=4)
    conns = [object() for _ in range(3)]
    streams = []
    for i in range(12):  # opened interleaved: connection 0, 1, 2, 0, 1, 2... over two sessions
        stream = Stream(rig.log, Exchange(conns[i % 3]))
        streams.append(stream)
        rig.hub.register(USER, f"ds_{i % 2}", stream)
    rig.hub.publish(USER, "", event("e1"))
    rig.drain()
    assert sorted(map(id, runs_of_connections(rig.log))) == sorted(map(id, conns))
    rig.log.clear()
    rig.hub.publish(USER, "ds_1", event("e2"))
    rig.drain()
    assert len(rig.log) == 6 and len(runs_of_connections(rig.log)) == 3
    assert all(s.received == ["e1", "e2"] if i % 2 else s.received == ["e1"] for i, s in enumerate(streams))


class Wrapper:
    """A ServerStream around another, as heartbeat.BeatingStream is."""

    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.closed = False

    def send(self, message: Any) -> None:
        self.stream.send(message)


def test_a_wrapped_stream_is_grouped_by_the_connection_of_the_stream_it_wraps() -> None:
    rig = Rig(streams=0, batch=100)
    conns = [object() for _ in range(2)]
    for i in range(6):
        rig.hub.register(USER, "ds_0", Wrapper(Stream(rig.log, Exchange(conns[i % 2]))))
    rig.hub.publish(USER, "", event("e1"))
    assert len(rig.log) == 6 and len(runs_of_connections(rig.log)) == 2


def test_streams_registered_or_gone_between_events_are_counted_from_the_next_event() -> None:
    rig = Rig(streams=4, batch=100)
    rig.hub.publish(USER, "", event("e1"))
    late = Stream(rig.log)
    rig.hub.register(USER, "ds_0", late)
    rig.hub.unregister(rig.subs[0])
    assert rig.hub.publish(USER, "", event("e2")) == 4
    rig.drain()
    assert rig.streams[0].received == ["e1"]
    assert [s.received for s in rig.streams[1:]] == [["e1", "e2"]] * 3
    assert late.received == ["e2"]
    for sub in rig.subs[1:]:
        rig.hub.unregister(sub)
    assert len(rig.hub) == 1 and rig.hub.open_sessions() == [(USER, "ds_0")]


def test_batch_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Hub(Clock(), fanout_batch=0)


def test_cancelling_a_subscriptions_done_unregisters_it_and_nothing_more_is_sent() -> None:
    from twisted.internet.defer import CancelledError

    rig = Rig(streams=3, batch=100)
    gone = rig.subs[1]
    outcomes: list[Any] = []
    gone.done.addBoth(outcomes.append)
    gone.done.cancel()  # the call ended (client gone, deadline, overflow)
    assert outcomes[0].check(CancelledError)
    assert not gone.live and len(rig.hub) == 2
    rig.hub.publish(USER, "", event("e1"))
    rig.drain()
    assert [s.received for s in rig.streams] == [["e1"], [], ["e1"]]
    gone.done.cancel()  # once ended, cancelling again changes nothing
    assert len(rig.hub) == 2


def test_a_subscription_made_outside_the_hub_has_no_canceller() -> None:
    from twisted.internet.defer import CancelledError

    sub = Subscription(USER, "ds_0", Stream([]))
    outcomes: list[Any] = []
    sub.done.addBoth(outcomes.append)
    sub.done.cancel()
    assert outcomes[0].check(CancelledError) and sub.live
