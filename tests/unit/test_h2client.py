"""H2ClientConnection against an in-memory h2 server, and the push consumer's backoff on a Clock."""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from h2.errors import ErrorCodes
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gatewayd._proto.push.v1 import push_pb2
from gatewayd.backend.push_consumer import Backoff, PushConsumer
from gatewayd.rpc.client import ConnectionClosedError, GoAwayError, H2ClientConnection
from gatewayd.rpc.codes import Code
from gatewayd.rpc.framing import encode_frame, encode_grpc_message

PATH = "/push.v1.Push/SubscribePush"


class Pair:
    """Our client wired to an h2 server connection through a StringTransport."""

    def __init__(self, max_message_bytes: int = 1024 * 1024) -> None:
        self.clock = Clock()
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", 8082))
        self.client = H2ClientConnection(reactor=self.clock, max_message_bytes=max_message_bytes)
        self.client.makeConnection(self.transport)
        self.server = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=False, header_encoding=None)
        )
        self.server.initiate_connection()
        self.events: list[h2.events.Event] = []
        self.messages: list[bytes] = []
        self.pump()

    def pump(self) -> None:
        while True:
            upstream = self.transport.value()
            self.transport.clear()
            if upstream:
                self.events += self.server.receive_data(upstream)
            downstream = self.server.data_to_send()
            if downstream:
                self.client.dataReceived(downstream)
            if not upstream and not downstream:
                return

    def call(self, metadata: list[tuple[str, str]] | None = None) -> defer.Deferred[tuple[int, str]]:
        d = self.client.server_streaming(PATH, b"\x0a\x02gw", metadata or [], self.messages.append)
        self.pump()
        return d

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def respond_headers(self, stream_id: int = 1, end_stream: bool = False, **extra: str) -> None:
        headers = [(b":status", extra.pop("status", "200").encode()), (b"content-type", b"application/grpc")]
        headers += [(k.replace("_", "-").encode(), v.encode()) for k, v in extra.items()]
        self.server.send_headers(stream_id, headers, end_stream=end_stream)
        self.pump()

    def trailers(self, status: int, message: str = "", stream_id: int = 1) -> None:
        trailers = [(b"grpc-status", str(status).encode())]
        if message:
            trailers.append((b"grpc-message", encode_grpc_message(message).encode()))
        self.server.send_headers(stream_id, trailers, end_stream=True)
        self.pump()


def result_of(d: defer.Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def failure_of(d: defer.Deferred[Any]) -> Failure:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out and isinstance(out[0], Failure), f"expected a failure, got {out}"
    return out[0]


# --- requests ---------------------------------------------------------------------------

def test_request_headers_and_single_framed_message_with_end_stream() -> None:
    pair = Pair()
    pair.call([("x-request-id", "r1")])
    [request] = pair.of(h2.events.RequestReceived)
    headers = dict(request.headers)
    assert headers[b":method"] == b"POST"
    assert headers[b":scheme"] == b"http"
    assert headers[b":path"] == PATH.encode()
    assert headers[b":authority"] == b"10.0.0.1:8082"
    assert headers[b"content-type"] == b"application/grpc"
    assert headers[b"te"] == b"trailers"
    assert headers[b"x-request-id"] == b"r1"
    body = b"".join(e.data for e in pair.of(h2.events.DataReceived))
    assert body == encode_frame(b"\x0a\x02gw")
    assert [e.stream_id for e in pair.of(h2.events.StreamEnded)] == [1]


# --- responses --------------------------------------------------------------------------

def test_messages_split_across_frames_are_delivered_in_order_and_status_comes_from_trailers() -> None:
    pair = Pair()
    d = pair.call()
    pair.respond_headers()
    wire = encode_frame(b"one") + encode_frame(b"") + encode_frame(b"three")
    for i in range(0, len(wire), 4):  # cut through headers and payloads
        pair.server.send_data(1, wire[i : i + 4])
        pair.pump()
    assert pair.messages == [b"one", b"", b"three"]
    assert not d.called
    pair.trailers(5, "no such user 100%")
    assert result_of(d) == (Code.NOT_FOUND, "no such user 100%")
    assert pair.client.open_calls == 0


def test_trailers_only_response() -> None:
    pair = Pair()
    d = pair.call()
    pair.respond_headers(end_stream=True, grpc_status="12", grpc_message="unknown%20method")
    assert result_of(d) == (Code.UNIMPLEMENTED, "unknown method")


@pytest.mark.parametrize(
    ("status", "expected"),
    [("503", Code.UNAVAILABLE), ("404", Code.UNIMPLEMENTED), ("401", Code.UNAUTHENTICATED),
     ("500", Code.UNKNOWN)],
)
def test_http_error_without_grpc_status_maps_by_http_status(status: str, expected: Code) -> None:
    pair = Pair()
    d = pair.call()
    pair.respond_headers(status=status, end_stream=True)
    assert result_of(d)[0] == expected


def test_missing_grpc_status_is_internal() -> None:
    pair = Pair()
    d = pair.call()
    pair.respond_headers()
    pair.server.send_data(1, encode_frame(b"x"), end_stream=True)
    pair.pump()
    assert result_of(d)[0] == Code.INTERNAL


def test_stream_ending_inside_a_message_is_internal() -> None:
    pair = Pair()
    d = pair.call()
    pair.respond_headers()
    pair.server.send_data(1, encode_frame(b"whole")[:-2])
    pair.trailers(0)
    code, message = result_of(d)
    assert code == Code.INTERNAL
    assert "inside a message" in message


def test_oversized_message_ends_the_call_and_resets_the_stream() -> None:
    pair = Pair(max_message_bytes=16)
    d = pair.call()
    pair.respond_headers()
    pair.server.send_data(1, encode_frame(b"x" * 17)[:8])  # the length prefix alone is enough
    pair.pump()
    assert result_of(d)[0] == Code.RESOURCE_EXHAUSTED
    assert [e.error_code for e in pair.of(h2.events.StreamReset)] == [ErrorCodes.CANCEL]
    assert pair.messages == []


def test_server_reset_maps_to_a_status() -> None:
    pair = Pair()
    d = pair.call()
    pair.server.reset_stream(1, ErrorCodes.REFUSED_STREAM)
    pair.pump()
    assert result_of(d)[0] == Code.UNAVAILABLE


# --- flow control -----------------------------------------------------------------------

def test_received_data_is_acknowledged_so_the_stream_never_stalls() -> None:
    pair = Pair(max_message_bytes=64 * 1024)
    d = pair.call()
    pair.respond_headers()
    stream_window = pair.server.local_flow_control_window(1)
    payload = b"p" * 60_000
    sent = 0
    # Far more than any window: only acknowledgements let this loop finish.
    for _ in range(80):
        frame = encode_frame(payload)
        while frame:
            window = min(pair.server.local_flow_control_window(1), pair.server.max_outbound_frame_size)
            assert window > 0, "the client stopped acknowledging data"
            pair.server.send_data(1, frame[:window])
            frame = frame[window:]
            pair.pump()
        sent += 1
    assert len(pair.messages) == sent
    assert sent * len(payload) > 4 * stream_window
    pair.trailers(0)
    assert result_of(d) == (0, "")


# --- connection-level -------------------------------------------------------------------

def test_server_ping_is_answered() -> None:
    pair = Pair()
    pair.server.ping(b"12345678")
    pair.pump()
    assert [e.ping_data for e in pair.of(h2.events.PingAckReceived)] == [b"12345678"]


def test_client_ping_measures_round_trip_time() -> None:
    pair = Pair()
    d = pair.client.ping()
    pair.clock.advance(0.25)
    pair.pump()
    assert result_of(d) == pytest.approx(0.25)


def test_goaway_fails_open_calls_and_refuses_new_ones() -> None:
    pair = Pair()
    d = pair.call()
    pair.server.close_connection(error_code=ErrorCodes.NO_ERROR, last_stream_id=0)
    pair.pump()
    failure = failure_of(d)
    assert failure.check(GoAwayError)
    assert failure.value.processed is False
    assert pair.transport.disconnecting
    assert failure_of(pair.client.server_streaming(PATH, b"", [], print)).check(ConnectionClosedError)


def test_connection_loss_fails_calls_and_pings_and_fires_when_closed() -> None:
    pair = Pair()
    d = pair.call()
    ping = pair.client.ping()
    closed = pair.client.when_closed()
    pair.client.connectionLost(Failure(ConnectionLost("reset by peer")))
    assert failure_of(d).check(ConnectionClosedError)
    assert failure_of(ping).check(ConnectionClosedError)
    assert result_of(closed) is None
    assert pair.client.closed


def test_cancelling_the_call_resets_the_stream_with_cancel() -> None:
    pair = Pair()
    d = pair.call()
    d.cancel()
    pair.pump()
    assert failure_of(d).check(defer.CancelledError)
    assert [e.error_code for e in pair.of(h2.events.StreamReset)] == [ErrorCodes.CANCEL]
    assert pair.client.open_calls == 0
    # Data still in flight for the reset stream is ignored, and the connection stays usable.
    pair.client.server_streaming(PATH, b"", [], pair.messages.append)
    pair.pump()
    assert len(pair.of(h2.events.RequestReceived)) == 2


def test_close_sends_goaway_and_drops_the_transport() -> None:
    pair = Pair()
    d = pair.call()
    closed = pair.client.close()
    pair.pump()
    assert pair.of(h2.events.ConnectionTerminated)
    assert pair.transport.disconnecting
    pair.client.connectionLost(Failure(ConnectionLost()))
    assert failure_of(d).check(ConnectionClosedError)
    assert result_of(closed) is None


# --- push consumer backoff (Clock + injected random) -----------------------------------

def test_backoff_doubles_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(0.5, 30.0, random=lambda: 1.0)
    assert [backoff.next_delay() for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    backoff.reset()
    assert backoff.next_delay() == 0.5


def test_backoff_full_jitter_stays_within_zero_and_the_ceiling() -> None:
    draws = iter([0.0, 0.25, 0.999999, 0.5] * 10)
    backoff = Backoff(0.1, 2.0, random=lambda: next(draws))
    for _ in range(40):
        ceiling = backoff.ceiling()
        delay = backoff.next_delay()
        assert 0.0 <= delay <= ceiling <= 2.0


class FakeConnection:
    """Stands in for H2ClientConnection: the test ends calls and delivers messages."""

    def __init__(self) -> None:
        self.call: defer.Deferred[tuple[int, str]] | None = None
        self.on_message: Any = None
        self.request = b""
        self.closed = False
        self.cancelled = False
        self.pings: list[defer.Deferred[float]] = []
        self.aborted = False

    def server_streaming(self, path: str, request: bytes, metadata: Any, on_message: Any) -> Any:
        assert path == PATH
        self.request, self.on_message = request, on_message
        self.call = defer.Deferred(lambda _d: setattr(self, "cancelled", True))
        return self.call

    def close(self) -> defer.Deferred[None]:
        self.closed = True
        return defer.succeed(None)

    def ping(self) -> defer.Deferred[float]:
        self.pings.append(defer.Deferred())
        return self.pings[-1]

    def abort(self) -> None:
        self.aborted = True
        if self.call is not None and not self.call.called:
            self.call.errback(ConnectionClosedError("aborted"))


class Dialer:
    """A connect() whose attempts fail or succeed as the test says."""

    def __init__(self) -> None:
        self.attempts: list[defer.Deferred[Any]] = []

    def __call__(self) -> defer.Deferred[Any]:
        d: defer.Deferred[Any] = defer.Deferred()
        self.attempts.append(d)
        return d


def retry_delay(clock: Clock) -> float:
    [call] = clock.getDelayedCalls()
    return call.getTime() - clock.seconds()


def test_consumer_retries_with_growing_delays_and_stop_cancels_the_timer() -> None:
    clock, dialer = Clock(), Dialer()
    consumer = PushConsumer(clock, dialer, "gw", lambda e: None, 0.5, 4.0, random=lambda: 1.0)
    consumer.start()
    delays = []
    for n in range(6):
        assert consumer.state == "connecting"
        dialer.attempts[n].errback(ConnectionLost("refused"))
        assert consumer.state == "backoff"
        delays.append(retry_delay(clock))
        clock.advance(delays[-1])
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert len(dialer.attempts) == 7
    result_of(consumer.stop())
    assert consumer.state == "stopped"
    assert clock.getDelayedCalls() == []
    assert dialer.attempts[-1].called  # the pending dial was cancelled


def test_consumer_resets_backoff_after_a_call_that_delivered() -> None:
    clock, dialer = Clock(), Dialer()
    events: list[push_pb2.PushEvent] = []
    draws = iter([1.0, 1.0, 1.0, 0.5])
    consumer = PushConsumer(clock, dialer, "gw-7", events.append, 1.0, 60.0, random=lambda: next(draws),
                            healthy_after_s=1000.0)
    consumer.start()
    dialer.attempts[0].errback(ConnectionLost())
    clock.advance(retry_delay(clock))  # 1.0
    dialer.attempts[1].errback(ConnectionLost())
    clock.advance(retry_delay(clock))  # 2.0
    conn = FakeConnection()
    dialer.attempts[2].callback(conn)
    assert consumer.connected
    assert push_pb2.SubscribePushRequest.FromString(conn.request).gateway_id == "gw-7"
    event = push_pb2.PushEvent(session_invalidation=push_pb2.SessionInvalidation(user_id="u"))
    conn.on_message(b"\xff\xff")  # malformed: skipped
    conn.on_message(event.SerializeToString())
    assert events == [event]
    assert consumer.malformed_messages == 1
    assert conn.call is not None
    conn.call.callback((Code.UNAVAILABLE, "bye"))
    assert conn.closed
    assert consumer.state == "backoff"
    assert retry_delay(clock) == 1.0  # reset: initial_s * draw, not 4.0


def test_consumer_keeps_growing_backoff_when_calls_end_at_once_and_resets_after_a_long_call() -> None:
    clock, dialer = Clock(), Dialer()
    consumer = PushConsumer(clock, dialer, "gw", lambda e: None, 1.0, 60.0, random=lambda: 1.0,
                            healthy_after_s=10.0)
    consumer.start()
    delays = []
    for n in range(3):
        conn = FakeConnection()
        dialer.attempts[n].callback(conn)
        assert conn.call is not None
        conn.call.callback((Code.UNAVAILABLE, "go away"))  # ended at once, nothing delivered
        delays.append(retry_delay(clock))
        clock.advance(delays[-1])
    assert delays == [1.0, 2.0, 4.0]
    conn = FakeConnection()
    dialer.attempts[3].callback(conn)
    clock.advance(10.0)
    assert conn.call is not None
    conn.call.errback(ConnectionLost())
    assert retry_delay(clock) == 1.0
    result_of(consumer.stop())
    assert clock.getDelayedCalls() == []


def test_consumer_stop_cancels_the_open_call_and_closes_the_connection() -> None:
    clock, dialer = Clock(), Dialer()
    states: list[str] = []
    consumer = PushConsumer(clock, dialer, "gw", lambda e: None, on_state=states.append)
    connected = consumer.when_connected()
    consumer.start()
    conn = FakeConnection()
    dialer.attempts[0].callback(conn)
    assert result_of(connected) == "connected"
    result_of(consumer.stop())
    assert conn.cancelled
    assert conn.closed
    assert states == ["connecting", "connected", "stopped"]
    assert clock.getDelayedCalls() == []


def test_consumer_keepalive_pings_and_drops_a_connection_whose_ack_is_late() -> None:
    clock, dialer = Clock(), Dialer()
    consumer = PushConsumer(clock, dialer, "gw", lambda e: None, 1.0, 8.0, random=lambda: 1.0,
                            keepalive_interval_s=30.0, keepalive_timeout_s=5.0)
    consumer.start()
    conn = FakeConnection()
    dialer.attempts[0].callback(conn)
    assert len(conn.pings) == 1  # right behind the request: it confirms the subscription
    conn.pings[0].callback(0.01)
    clock.advance(29.9)
    assert len(conn.pings) == 1
    clock.advance(0.1)
    assert len(conn.pings) == 2
    conn.pings[1].callback(0.01)  # answered: the next ping is due one interval later
    clock.advance(30.0)
    assert len(conn.pings) == 3
    clock.advance(4.9)
    assert not conn.aborted
    clock.advance(0.1)  # no ACK within the timeout
    assert conn.aborted
    assert consumer.state == "backoff"
    result_of(consumer.stop())
    assert clock.getDelayedCalls() == []


def test_on_subscribed_runs_once_per_call_at_the_ping_ack_or_the_first_message() -> None:
    clock, dialer = Clock(), Dialer()
    subscribed: list[int] = []
    consumer = PushConsumer(clock, dialer, "gw", lambda e: None, 1.0, 8.0, random=lambda: 1.0,
                            keepalive_timeout_s=5.0, on_subscribed=lambda: subscribed.append(len(subscribed)))
    consumer.start()
    first = FakeConnection()
    dialer.attempts[0].callback(first)
    assert consumer.connected and subscribed == []  # the request is written, not yet known read
    first.pings[0].callback(0.01)
    assert subscribed == [0]
    event = push_pb2.PushEvent(session_invalidation=push_pb2.SessionInvalidation(user_id="u"))
    first.on_message(event.SerializeToString())
    assert subscribed == [0]  # once per call

    # The next call: its first message comes before the PING ACK, and the late ACK changes nothing.
    assert first.call is not None
    first.call.callback((Code.UNAVAILABLE, "bye"))
    clock.advance(retry_delay(clock))
    second = FakeConnection()
    dialer.attempts[1].callback(second)
    second.on_message(event.SerializeToString())
    assert subscribed == [0, 1] and consumer.subscriptions == 2
    second.pings[0].callback(0.01)
    assert subscribed == [0, 1]

    # A call whose PING is never answered (and that sends nothing) is dropped: no on_subscribed.
    assert second.call is not None
    second.call.callback((Code.UNAVAILABLE, "bye"))
    clock.advance(retry_delay(clock))
    third = FakeConnection()
    dialer.attempts[2].callback(third)
    clock.advance(4.9)
    assert not third.aborted
    clock.advance(0.1)
    assert third.aborted and consumer.state == "backoff"
    assert subscribed == [0, 1]
    result_of(consumer.stop())
    assert clock.getDelayedCalls() == []
