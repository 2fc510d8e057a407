"""SubscribeEvents: verify (stages 1-6), register with the hub, then greet with the server time."""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer
from twisted.python.failure import Failure

from gatewayd._proto.gateway.v1.gateway_pb2 import SubscribeEventsRequest
from gatewayd.pipeline.pipeline import Pipeline, VerifiedCaller
from gatewayd.pipeline.signer import EventSigner
from gatewayd.push.hub import Hub
from gatewayd.push.revocations import Ticket
from gatewayd.rpc.call import Call, Encoded, ServerStream

SERVER_TIME_EVENT = "gateway.server_time"


class SubscribeEvents:
    """The StreamHandler of ``/gateway.v1.Gateway/SubscribeEvents``.

    Registration happens before ``gateway.server_time`` is sent, so every
    event published after the client has received it reaches the stream. A
    session (or user) invalidated at any time after the call arrived ends it
    with FAILED_PRECONDITION, before or after registration.
    Cancelling the returned Deferred (client gone, deadline) unregisters.
    """

    def __init__(self, pipeline: Pipeline, hub: Hub, signer: EventSigner, clock: Any) -> None:
        self.pipeline = pipeline
        self.hub = hub
        self.signer = signer
        self.clock = clock
        self._prefix = "st_" + os.urandom(6).hex() + "_"
        self._counter = 0
        self._greeting: tuple[int, Encoded] | None = None

    def __call__(self, call: Call, request: SubscribeEventsRequest, stream: ServerStream) -> defer.Deferred[None]:
        # The ticket is taken before the session lookup starts: an invalidation that arrives
        # while the call is verified (backend, Redis round trips) refuses the registration.
        # Callbacks, not a coroutine: an open stream then holds no coroutine, frame, context
        # or inlineCallbacks state, only its subscription's Deferred (fewer objects for every
        # cyclic GC pass to walk, gatewayd/gc_policy.py; less CPU per open).
        revocations = self.hub.revocations
        ticket = revocations.take()
        try:
            verified = self.pipeline.verify_subscription(call, request)
        except BaseException:
            revocations.release(ticket)
            raise
        if verified.called and not verified.paused and not isinstance(verified.result, Failure):
            # Verified at once (memory stores, a cached session: most opens): go on now, as addBoth
            # would, without its callback run and the Deferred chained to the subscription's.
            # (called, paused and result are what Deferred.__await__ reads too.)
            caller: Any = verified.result
            try:
                waiting = self._verified(caller, ticket, stream)
            except BaseException:
                return defer.fail()
            return defer.succeed(None) if waiting is None else waiting
        return verified.addBoth(self._verified, ticket, stream)

    def _verified(self, caller: VerifiedCaller | Failure, ticket: Ticket, stream: ServerStream) -> Any:
        """Register, greet, and wait for the subscription's end (the returned Deferred chains to it)."""
        hub = self.hub
        try:
            if isinstance(caller, Failure):
                return caller
            sub = hub.register(caller.user_id, caller.device_session_id, stream, ticket)
        finally:
            hub.revocations.release(ticket)
        stream.send(self._server_time())
        if stream.closed:  # the greeting overflowed the stream's buffer: the call has ended
            hub.unregister(sub)
            return None
        # The call waits on the subscription's end; cancelling it (client gone, deadline) unregisters.
        return sub.done

    def _server_time(self) -> Encoded:
        """The signed ``gateway.server_time`` event for this millisecond.

        Streams that open in the same millisecond share one event (one signature,
        framed once per wire format): in a reconnect storm that is most of them.
        """
        now_ms = int(self.clock.seconds() * 1000)
        greeting = self._greeting
        if greeting is not None and greeting[0] == now_ms:
            return greeting[1]
        self._counter += 1
        payload = b'{"server_time_ms":%d}' % now_ms  # json.dumps(..., separators=(",", ":")), byte for byte
        event = Encoded(self.signer.sign(SERVER_TIME_EVENT, f"{self._prefix}{self._counter}", payload, now_ms))
        self._greeting = (now_ms, event)
        return event

