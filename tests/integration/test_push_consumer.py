"""PushConsumer against an independent SubscribePush server (grpc.aio, tests/peers/push_server.py)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.logger import capturedLogs

from gatewayd._proto.push.v1 import push_pb2
from gatewayd.backend.push_consumer import PushConsumer
from gatewayd.rpc.client import H2ClientConnection
from gatewayd.testing.wait import until

PEER = os.path.join(os.path.dirname(__file__), "..", "peers", "push_server.py")
TIMEOUT = 10.0


def bounded(d: defer.Deferred[Any], timeout: float = TIMEOUT) -> defer.Deferred[Any]:
    return d.addTimeout(timeout, reactor)


class PeerProcess(protocol.ProcessProtocol):
    """The peer as a child process: commands as JSON lines in, report lines out."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._waiters: list[tuple[str, int, defer.Deferred[None]]] = []
        self._buffer = b""
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.port = 0

    @classmethod
    async def spawn(cls, port: int = 0) -> PeerProcess:
        peer = cls()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        reactor.spawnProcess(peer, sys.executable, [sys.executable, PEER, "--port", str(port)], env=env)
        await peer.wait_line("ready", 1, timeout=30)
        peer.port = int(peer.lines[0].split()[1])
        return peer

    def outReceived(self, data: bytes) -> None:
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        self.lines.extend(line.decode() for line in lines)
        for waiter in list(self._waiters):
            if self.count(waiter[0]) >= waiter[1]:
                self._waiters.remove(waiter)
                waiter[2].callback(None)

    def errReceived(self, data: bytes) -> None:
        sys.stderr.write(data.decode("utf-8", "replace"))

    def count(self, prefix: str) -> int:
        return sum(1 for line in self.lines if line.split(" ")[0] == prefix)

    def wait_line(self, prefix: str, count: int, timeout: float = TIMEOUT) -> defer.Deferred[None]:
        """Fire once ``count`` report lines starting with ``prefix`` were seen."""
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((prefix, count, d))
        self.outReceived(b"")
        return bounded(d, timeout)

    def send(self, **command: Any) -> None:
        self.transport.write((json.dumps(command) + "\n").encode())

    def processEnded(self, reason: Any) -> None:
        self.ended.callback(None)

    async def kill(self) -> None:
        if not self.ended.called:
            self.transport.signalProcess("KILL")
        await bounded(self.ended)


class EventSink:
    """Collects delivered events; lets a test await a count."""

    def __init__(self) -> None:
        self.events: list[push_pb2.PushEvent] = []
        self._waiters: list[tuple[int, defer.Deferred[None]]] = []

    def __call__(self, event: push_pb2.PushEvent) -> None:
        self.events.append(event)
        for waiter in list(self._waiters):
            if len(self.events) >= waiter[0]:
                self._waiters.remove(waiter)
                waiter[1].callback(None)

    def wait(self, count: int) -> defer.Deferred[None]:
        if len(self.events) >= count:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiters.append((count, d))
        return bounded(d)


def client_event(event_id: str, user: str = "u1") -> dict[str, Any]:
    return {"client_event": {"user_id": user, "event_type": "user.note.created", "event_id": event_id,
                             "payload_bytes": json.dumps({"n": event_id}), "timestamp_ms": 1700000000000}}


def consumer_calls(consumer: PushConsumer, connection: H2ClientConnection | None) -> list[Any]:
    """Delayed calls on the reactor that belong to the consumer or its connection."""
    owners = [consumer] if connection is None else [consumer, connection]
    return [call for call in reactor.getDelayedCalls()
            if any(getattr(call.func, "__self__", None) is owner for owner in owners)]


@pytest.fixture
def peers() -> Any:
    started: list[PeerProcess] = []

    async def spawn(port: int = 0) -> PeerProcess:
        peer = await PeerProcess.spawn(port)
        started.append(peer)
        return peer

    yield spawn
    for peer in started:
        if not peer.ended.called:
            peer.transport.signalProcess("KILL")
    pytest_twisted.blockon(defer.gatherResults([p.ended for p in started]))


def make_consumer(port: int, sink: EventSink, **options: Any) -> PushConsumer:
    return PushConsumer.from_endpoint_string(
        reactor, f"tcp:host=127.0.0.1:port={port}", "gw-test", sink,
        backoff_initial_s=0.05, backoff_max_s=0.2, **options,
    )


@pytest_twisted.ensureDeferred
async def test_delivers_in_order_reconnects_after_stream_end_and_server_restart(peers: Any) -> None:
    peer = await peers()
    sink = EventSink()
    states: list[str] = []
    consumer = make_consumer(peer.port, sink, on_state=states.append)
    consumer.start()
    await peer.wait_line("subscribed", 1)
    await bounded(consumer.when_connected())
    assert peer.lines[-1] == "subscribed gw-test"

    # Events arrive in order, both kinds, fields intact.
    peer.send(cmd="event", **client_event("e1"))
    invalidation = {"user_id": "u1", "device_session_id": "s1", "reason": "revoked"}
    peer.send(cmd="event", session_invalidation=invalidation)
    peer.send(cmd="event", **client_event("e3"))
    await sink.wait(3)
    first, second, third = sink.events
    assert first.WhichOneof("kind") == "client_event"
    assert first.client_event.event_id == "e1"
    assert json.loads(first.client_event.payload_bytes) == {"n": "e1"}
    assert first.client_event.timestamp_ms == 1700000000000
    assert second.session_invalidation.device_session_id == "s1"
    assert second.session_invalidation.reason == "revoked"
    assert third.client_event.event_id == "e3"

    # The server ends the stream: the consumer dials again and delivery resumes.
    peer.send(cmd="end", code="UNAVAILABLE", message="rotating")
    await peer.wait_line("subscribed", 2)
    await bounded(consumer.when_connected())
    peer.send(cmd="event", **client_event("e4"))
    await sink.wait(4)
    assert sink.events[3].client_event.event_id == "e4"
    assert "backoff" in states

    # The server dies and comes back on the same port.
    await peer.kill()
    await bounded(consumer.when_state("backoff", "connecting"))
    assert not consumer.connected
    restarted = await peers(peer.port)
    await restarted.wait_line("subscribed", 1)
    await bounded(consumer.when_connected())
    restarted.send(cmd="event", **client_event("e5"))
    await sink.wait(5)
    assert [e.WhichOneof("kind") for e in sink.events] == ["client_event", "session_invalidation"] + [
        "client_event"] * 3
    assert sink.events[4].client_event.event_id == "e5"

    # stop() frees everything: the call is cancelled, the connection closed, nothing scheduled.
    connection = consumer.connection
    assert connection is not None
    await bounded(consumer.stop())
    assert consumer.state == "stopped"
    assert connection.closed
    assert connection.open_calls == 0
    assert not consumer.pending_delayed_call
    assert consumer_calls(consumer, connection) == []
    await restarted.wait_line("unsubscribed", 1)


@pytest_twisted.ensureDeferred
async def test_malformed_message_is_skipped_and_the_call_goes_on(peers: Any) -> None:
    peer = await peers()
    sink = EventSink()
    consumer = make_consumer(peer.port, sink)
    consumer.start()
    await peer.wait_line("subscribed", 1)
    peer.send(cmd="raw", hex="ffff")  # not a PushEvent: a truncated varint tag
    peer.send(cmd="event", **client_event("after"))
    await sink.wait(1)
    assert consumer.malformed_messages == 1
    assert [e.client_event.event_id for e in sink.events] == ["after"]
    assert peer.count("subscribed") == 1  # same call, no reconnect
    assert consumer.connection is not None
    rtt = await bounded(consumer.connection.ping())  # grpc-core answers our PING
    assert 0.0 <= rtt < TIMEOUT
    await bounded(consumer.stop())
    await peer.wait_line("unsubscribed", 1)


@pytest_twisted.ensureDeferred
async def test_a_handler_that_raises_is_counted_and_the_next_events_still_arrive(peers: Any) -> None:
    peer = await peers()
    sink = EventSink()

    def handler(event: push_pb2.PushEvent) -> None:
        sink(event)
        if event.client_event.event_id == "bad":
            raise ValueError("a bug in the gateway's handling of one event")

    consumer = PushConsumer.from_endpoint_string(
        reactor, f"tcp:host=127.0.0.1:port={peer.port}", "gw-test", handler,
        backoff_initial_s=0.05, backoff_max_s=0.2, on_subscribed=lambda: 1 / 0,
    )
    with capturedLogs() as logged:
        consumer.start()
        await peer.wait_line("subscribed", 1)
        for event_id in ("first", "bad", "after"):
            peer.send(cmd="event", **client_event(event_id))
        await sink.wait(3)
    assert [e.client_event.event_id for e in sink.events] == ["first", "bad", "after"]
    # on_subscribed raised too (once), and the "bad" event's handler: both logged with their tracebacks.
    assert consumer.handler_errors == consumer.stats.handler_errors == 2
    failures = [e["log_format"] for e in logged if "log_failure" in e]
    assert sorted(failures) == ["push event handler failed; the event is dropped", "push on_subscribed handler failed"]
    assert peer.count("subscribed") == 1 and consumer.connected  # same call, no reconnect
    await bounded(consumer.stop())
    await peer.wait_line("unsubscribed", 1)


@pytest_twisted.ensureDeferred
async def test_no_server_backs_off_and_stop_cancels_the_retry(peers: Any) -> None:
    # Find a port with nothing listening: start a peer, note its port, kill it.
    peer = await peers()
    await peer.kill()
    sink = EventSink()
    consumer = make_consumer(peer.port, sink)
    consumer.start()
    await bounded(consumer.when_state("backoff"))
    assert consumer.backoff.attempt >= 1
    assert not consumer.connected
    await bounded(consumer.stop())
    assert consumer.state == "stopped"
    assert not consumer.pending_delayed_call
    assert consumer_calls(consumer, None) == []


@pytest_twisted.ensureDeferred
async def test_stop_while_connecting_abandons_the_dial() -> None:
    # A connect that never completes: stop() must cancel it.
    cancelled: list[bool] = []

    def connect() -> defer.Deferred[H2ClientConnection]:
        return defer.Deferred(lambda d: cancelled.append(True))

    consumer = PushConsumer(reactor, connect, "gw-test", EventSink())
    consumer.start()
    assert consumer.state == "connecting"
    await bounded(consumer.stop())
    assert cancelled == [True]
    assert consumer.state == "stopped"
    assert not consumer.pending_delayed_call


@pytest_twisted.ensureDeferred
async def test_on_subscribed_runs_once_per_call_once_the_server_has_read_it(peers: Any) -> None:
    peer = await peers()
    sink = EventSink()
    seen: list[int] = []  # the peer's "subscribed" count when on_subscribed ran
    consumer = make_consumer(peer.port, sink, on_subscribed=lambda: seen.append(peer.count("subscribed")))
    consumer.start()
    # grpc-core runs handlers on its own threads, so the PING ACK (not the handler's report) is
    # what says the request was read; the peer's own line follows in its own time.
    await until(lambda: seen == [0] or seen == [1], "on_subscribed for the first call")
    await peer.wait_line("subscribed", 1)
    peer.send(cmd="event", **client_event("e1"))
    await sink.wait(1)
    assert len(seen) == 1 and consumer.subscriptions == 1  # events do not run it again

    peer.send(cmd="end", code="UNAVAILABLE", message="rotating")
    await peer.wait_line("subscribed", 2)
    await until(lambda: len(seen) == 2, "on_subscribed for the second call")
    assert consumer.subscriptions == 2
    await bounded(consumer.stop())
    assert consumer_calls(consumer, consumer.connection) == []
