"""The gateway's push consumer: one long-lived ``push.v1.Push/SubscribePush`` call to the backend.

It holds exactly one call at a time and keeps it alive forever: whenever the
call ends (any status, connection loss, GOAWAY, failed connect) it drops the
connection and dials again after a capped exponential backoff with full
jitter. The backoff starts over after a call that was healthy (it delivered
an event or stayed up ``healthy_after_s``), so a backend restart costs one
short, jittered delay, while a backend that refuses at once is retried ever
more slowly, up to ``backoff_max_s``.

A message that does not decode as a ``PushEvent`` is logged (never its
bytes) and skipped: gRPC framing keeps message boundaries, so one bad
message cannot corrupt the next, and ending the call would lose the events
queued behind it. Events whose ``kind`` this version does not know (a newer
backend) are skipped the same way.

Events sent while no call is open are lost (the backend keeps no replay), so
``on_subscribed`` tells the gateway each time a call is known to have reached
the backend: the gateway then re-checks what it may have missed
(``push/resync.py``).
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Sequence
from typing import Any, Literal

from google.protobuf.message import DecodeError
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from gatewayd._proto.push.v1 import push_pb2
from gatewayd.observability.stats import PushConsumerStats
from gatewayd.rpc.client import DEFAULT_MAX_MESSAGE_BYTES, H2ClientConnection, connect_h2
from gatewayd.rpc.codes import Code

SUBSCRIBE_PUSH_PATH = "/push.v1.Push/SubscribePush"

State = Literal["idle", "connecting", "connected", "backoff", "stopped"]
PushEvent = push_pb2.PushEvent

log = Logger()


class Backoff:
    """Capped exponential backoff with full jitter.

    The n-th delay since the last ``reset`` (n from 0) is
    ``random() * min(maximum_s, initial_s * 2**n)``: never above the cap, and
    spread over the whole interval so many gateways do not dial in step.
    """

    def __init__(self, initial_s: float, maximum_s: float, random: Callable[[], float]) -> None:
        if not 0 < initial_s <= maximum_s:
            raise ValueError("need 0 < initial_s <= maximum_s")
        self.initial_s = initial_s
        self.maximum_s = maximum_s
        self._random = random
        self.attempt = 0

    def ceiling(self) -> float:
        """The upper bound of the next delay."""
        # Cap the exponent: 2**n overflows floats long after the cap is reached.
        return min(self.maximum_s, self.initial_s * 2 ** min(self.attempt, 64))

    def next_delay(self) -> float:
        """The delay before the next attempt; each call raises the ceiling of the next."""
        delay = self._random() * self.ceiling()
        self.attempt += 1
        return delay

    def reset(self) -> None:
        """Start over from ``initial_s`` (after a healthy connection)."""
        self.attempt = 0


class PushConsumer:
    """Keep one SubscribePush call open to the backend and hand every event to ``on_event``.

    ``connect`` is an ``IStreamClientEndpoint`` or a callable returning a
    Deferred ``H2ClientConnection``; each attempt uses a fresh connection.
    ``state`` is one of idle, connecting, connected (the call is open; the
    backend sends nothing until it has an event), backoff and stopped.
    ``on_event`` runs synchronously, in order; an exception in it (or in
    ``on_subscribed``) is logged and counted (``handler_errors``) and does not
    end the call: the next event is handled as usual.

    ``on_subscribed`` runs once per call (the first one included) as soon as
    the backend has certainly read the request: at its first message, or at
    the ACK of a PING written right behind the request (HTTP/2 frames are
    read in order; a server that runs handlers synchronously, as gatewayd's
    does, has subscribed before it writes the ACK). Every event the backend
    publishes from then on reaches ``on_event``. A PING unanswered within
    ``keepalive_timeout_s`` drops the connection, like a failed keepalive.

    With ``keepalive_interval_s`` set, the connection is PINGed that often
    while the call is open, and dropped (then redialed) when an ACK takes
    over ``keepalive_timeout_s``: this finds a backend host that vanished
    without closing its sockets. gRPC servers GOAWAY clients that ping more
    often than their policy allows (grpc-core: every 5 minutes without
    data), so keep it at least that long for them.
    """

    def __init__(
        self,
        reactor: Any,
        connect: Callable[[], Deferred[H2ClientConnection]] | Any,
        gateway_id: str,
        on_event: Callable[[push_pb2.PushEvent], None],
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        random: Callable[[], float] = _random.random,
        *,
        healthy_after_s: float = 5.0,
        metadata: Sequence[tuple[str, str]] = (),
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        authority: str | None = None,
        on_state: Callable[[State], None] | None = None,
        scheme: str = "http",
        keepalive_interval_s: float | None = None,
        keepalive_timeout_s: float = 20.0,
        on_subscribed: Callable[[], None] | None = None,
    ) -> None:
        self._reactor = reactor
        if IStreamClientEndpoint.providedBy(connect):
            endpoint = connect

            def connect() -> Deferred[H2ClientConnection]:
                return connect_h2(endpoint, authority, reactor=reactor, scheme=scheme,
                                  max_message_bytes=max_message_bytes)

        self._connect: Callable[[], Deferred[H2ClientConnection]] = connect
        self._request = push_pb2.SubscribePushRequest(gateway_id=gateway_id).SerializeToString()
        self._gateway_id = gateway_id
        self._on_event = on_event
        self._metadata = list(metadata)
        self._healthy_after_s = healthy_after_s
        self._on_state = on_state
        self._keepalive_interval_s = keepalive_interval_s
        self._keepalive_timeout_s = keepalive_timeout_s
        self._keepalive: Any = None  # IDelayedCall
        self._on_subscribed = on_subscribed
        self._subscribed_call: Deferred[tuple[int, str]] | None = None  # the call on_subscribed ran for
        self._subscribe_ping: Deferred[float] | None = None
        self.backoff = Backoff(backoff_initial_s, backoff_max_s, random)

        self._state: State = "idle"
        self._waiters: list[tuple[frozenset[str], Deferred[State]]] = []
        self._pending_connect: Deferred[H2ClientConnection] | None = None
        self._retry: Any = None  # IDelayedCall
        self._call: Deferred[tuple[int, str]] | None = None
        self._connection: H2ClientConnection | None = None
        self._closing: list[Deferred[None]] = []
        self._call_started = 0.0
        self._delivered_this_call = 0

        self.events_received = 0
        self.subscriptions = 0  # calls the backend is known to have read (on_subscribed runs)
        self.malformed_messages = 0
        self.unknown_events = 0
        self.handler_errors = 0

    @classmethod
    def from_endpoint_string(
        cls,
        reactor: Any,
        description: str,
        gateway_id: str,
        on_event: Callable[[push_pb2.PushEvent], None],
        **options: Any,
    ) -> PushConsumer:
        """A consumer dialing a Twisted endpoint string, e.g. ``tcp:host=127.0.0.1:port=8082``."""
        return cls(reactor, clientFromString(reactor, description), gateway_id, on_event, **options)

    # --- state -----------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self._state

    @property
    def stats(self) -> PushConsumerStats:
        """The state and the push stream's message counts (for ``/metrics``)."""
        return PushConsumerStats(self._state, self.events_received, self.malformed_messages, self.unknown_events,
                                 self.handler_errors)

    @property
    def connected(self) -> bool:
        """True while the SubscribePush call is open (what ``/readyz`` reports)."""
        return self._state == "connected"

    @property
    def connection(self) -> H2ClientConnection | None:
        """The current connection, if any (for diagnostics and tests)."""
        return self._connection

    @property
    def pending_delayed_call(self) -> bool:
        """True while a reconnect is scheduled."""
        return self._retry is not None and self._retry.active()

    def when_state(self, *states: State) -> Deferred[State]:
        """Fire with the state once the consumer is in one of ``states`` (at once if it is)."""
        if self._state in states:
            return defer.succeed(self._state)
        waiter: Deferred[State] = Deferred()
        self._waiters.append((frozenset(states), waiter))
        return waiter

    def when_connected(self) -> Deferred[State]:
        """Fire once the call is open (at once if it is)."""
        return self.when_state("connected")

    def _set_state(self, new: State, reason: str = "", delay: float | None = None) -> None:
        old, self._state = self._state, new
        if delay is None:
            log.info("push consumer {old} -> {new} {reason}", old=old, new=new, reason=reason,
                     gateway_id=self._gateway_id)
        else:
            log.info("push consumer {old} -> {new} for {delay:.3f}s {reason}", old=old, new=new,
                     delay=delay, reason=reason, gateway_id=self._gateway_id)
        ready = [w for w in self._waiters if new in w[0]]
        self._waiters = [w for w in self._waiters if new not in w[0]]
        for _, waiter in ready:
            waiter.callback(new)
        if self._on_state is not None:
            self._on_state(new)

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Begin connecting; a consumer starts once."""
        if self._state != "idle":
            raise RuntimeError(f"push consumer cannot start from state {self._state}")
        self._attempt()

    def stop(self) -> Deferred[None]:
        """Cancel the call and any pending dial or retry; fire once the connection is closed."""
        if self._state == "stopped":
            return defer.succeed(None)
        self._set_state("stopped")
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        self._cancel_keepalive()
        self._cancel_subscribe_ping()
        if self._pending_connect is not None:
            self._pending_connect.cancel()
        if self._call is not None:
            self._call.cancel()  # RST_STREAM CANCEL
        if self._connection is not None:
            self._closing.append(self._connection.close())
            self._connection = None
        closing, self._closing = self._closing, []
        done = defer.gatherResults(closing, consumeErrors=True)
        return done.addCallback(lambda _: None)

    def _attempt(self) -> None:
        self._retry = None
        self._set_state("connecting")
        try:
            pending = self._connect()
        except Exception:
            pending = defer.fail()
        self._pending_connect = pending
        pending.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, connection: H2ClientConnection) -> None:
        self._pending_connect = None
        if self._state == "stopped":
            self._closing.append(connection.close())
            return
        self._connection = connection
        self._call_started = self._reactor.seconds()
        self._delivered_this_call = 0
        call = connection.server_streaming(SUBSCRIBE_PUSH_PATH, self._request, self._metadata, self._message)
        self._call = call
        self._set_state("connected")
        call.addBoth(self._call_ended, connection)
        self._schedule_keepalive()
        if self._call is call:  # the call did not end at once
            self._confirm_subscription(connection, call)

    def _connect_failed(self, failure: Failure) -> None:
        self._pending_connect = None
        if self._state == "stopped":
            return  # cancelled by stop()
        self._schedule_retry(f"connect failed: {failure.getErrorMessage()}")

    def _call_ended(self, result: tuple[int, str] | Failure, connection: H2ClientConnection) -> None:
        self._call = None
        self._cancel_keepalive()
        self._cancel_subscribe_ping()
        if self._state == "stopped":
            return  # stop() cancelled the call and closes the connection
        if isinstance(result, Failure):
            reason = f"call failed: {result.getErrorMessage()}"
        else:
            code, message = result
            try:
                name = Code(code).name
            except ValueError:
                name = str(code)
            reason = f"call ended: {name} {message}"
        lasted = self._reactor.seconds() - self._call_started
        if self._delivered_this_call or lasted >= self._healthy_after_s:
            self.backoff.reset()
        # One call per connection: a fresh dial gets a fresh h2 state and a
        # fresh DNS/endpoint resolution.
        self._connection = None
        closing = connection.close()
        self._closing.append(closing)
        closing.addBoth(self._forget_closing, closing)
        self._schedule_retry(reason)

    def _forget_closing(self, _: object, closing: Deferred[None]) -> None:
        if closing in self._closing:
            self._closing.remove(closing)

    def _schedule_retry(self, reason: str) -> None:
        delay = self.backoff.next_delay()
        self._set_state("backoff", reason, delay)
        self._retry = self._reactor.callLater(delay, self._attempt)

    # --- subscription confirmed ----------------------------------------------------------

    def _confirm_subscription(self, connection: H2ClientConnection, call: Deferred[tuple[int, str]]) -> None:
        try:
            ping = connection.ping()
        except Exception:
            # No clock to time a PING with (a test's bare connection): the first message will tell.
            return
        self._subscribe_ping = ping
        ping.addTimeout(self._keepalive_timeout_s, self._reactor)

        def answered(rtt: float) -> None:
            self._subscribe_ping = None
            self._subscribed(call)

        def unanswered(failure: Failure) -> None:
            # Cancelled by _cancel_subscribe_ping: the call ended or stop() ran, nothing to do.
            self._subscribe_ping = None
            if self._call is call and connection is self._connection and self._state == "connected":
                log.warn("push consumer: no PING ACK after SubscribePush ({error}); dropping the connection",
                         error=failure.getErrorMessage())
                connection.abort()

        ping.addCallbacks(answered, unanswered)

    def _cancel_subscribe_ping(self) -> None:
        ping, self._subscribe_ping = self._subscribe_ping, None
        if ping is not None:
            ping.cancel()

    def _subscribed(self, call: Deferred[tuple[int, str]]) -> None:
        """The backend has read ``call``: run ``on_subscribed`` once for it."""
        if self._subscribed_call is call or self._call is not call:
            return
        self._subscribed_call = call
        self.subscriptions += 1
        log.info("push consumer subscribed (call {n})", n=self.subscriptions, gateway_id=self._gateway_id)
        if self._on_subscribed is not None:
            try:
                self._on_subscribed()
            except Exception:
                self.handler_errors += 1
                log.failure("push on_subscribed handler failed")

    # --- keepalive ----------------------------------------------------------------------

    def _schedule_keepalive(self) -> None:
        if self._keepalive_interval_s is not None and self._state == "connected":
            self._keepalive = self._reactor.callLater(self._keepalive_interval_s, self._send_keepalive)

    def _cancel_keepalive(self) -> None:
        if self._keepalive is not None and self._keepalive.active():
            self._keepalive.cancel()
        self._keepalive = None

    def _send_keepalive(self) -> None:
        self._keepalive = None
        connection = self._connection
        if connection is None:
            return
        ping = connection.ping().addTimeout(self._keepalive_timeout_s, self._reactor)

        def answered(rtt: float) -> None:
            if connection is self._connection:
                self._schedule_keepalive()

        def unanswered(failure: Failure) -> None:
            if connection is self._connection and self._state == "connected":
                log.warn("push consumer keepalive failed ({error}); dropping the connection",
                         error=failure.getErrorMessage())
                connection.abort()  # the call errbacks, and we redial

        ping.addCallbacks(answered, unanswered)

    # --- events ------------------------------------------------------------------------

    def _message(self, payload: bytes) -> None:
        try:
            event = push_pb2.PushEvent.FromString(payload)
        except DecodeError:
            self.malformed_messages += 1
            log.warn("push consumer skipped a malformed PushEvent ({size} bytes)", size=len(payload))
            return
        if event.WhichOneof("kind") is None:
            self.unknown_events += 1
            log.debug("push consumer skipped a PushEvent of unknown kind")
            return
        self.events_received += 1
        self._delivered_this_call += 1
        call = self._call
        if call is not None and self._subscribed_call is not call:
            self._subscribed(call)
        try:
            self._on_event(event)
        except Exception:
            self.handler_errors += 1
            log.failure("push event handler failed; the event is dropped")
