"""The dev backend's push side: an in-process bus and the ``push.v1.Push`` stream handler.

The HTTP routes publish ``PushEvent`` messages on a ``PushBus``; every open
``SubscribePush`` call (one per gateway instance) is a bus subscriber that
writes each event to its stream. Each event is serialized once
(``Encoded``) and the same object goes to every subscriber.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from gatewayd._proto.push.v1 import push_pb2
from gatewayd.rpc.call import Call, Encoded, ServerStream
from gatewayd.rpc.methods import Method

SUBSCRIBE_PUSH_PATH = "/push.v1.Push/SubscribePush"

Subscriber = Callable[[Encoded], None]
"""Receives each published event, already encoded; must not raise."""

_log = Logger()


class PushBus:
    """Fan-out of ``PushEvent``s to subscribers, in publication order.

    Delivery is synchronous and at-most-once: an event published while no one
    is subscribed is gone (as with the real push service, a gateway that
    reconnects does not get a replay). A subscriber that raises is logged and
    stays subscribed; the others still receive the event.
    """

    def __init__(self) -> None:
        self._subscribers: dict[int, Subscriber] = {}
        self._next_token = 0

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def subscribe(self, subscriber: Subscriber) -> int:
        """Add ``subscriber``; returns the token that ``unsubscribe`` takes."""
        token = self._next_token
        self._next_token += 1
        self._subscribers[token] = subscriber
        return token

    def unsubscribe(self, token: int) -> None:
        """Remove a subscriber; unknown or already removed tokens are ignored."""
        self._subscribers.pop(token, None)

    def publish(self, event: push_pb2.PushEvent) -> Encoded:
        """Encode ``event`` once and hand it to every current subscriber."""
        encoded = Encoded(event)
        # Copy: a subscriber may unsubscribe (itself or another) while we deliver.
        for subscriber in list(self._subscribers.values()):
            try:
                subscriber(encoded)
            except Exception:
                _log.failure("push subscriber failed")
        return encoded


class SubscribePushHandler:
    """Server-streaming handler for ``/push.v1.Push/SubscribePush``.

    Each call subscribes its stream to the bus and returns a Deferred that
    never fires on its own: the stream stays open until the caller (client
    reset, overflow, shutdown) cancels it, which unsubscribes.
    """

    def __init__(self, bus: PushBus) -> None:
        self._bus = bus

    def __call__(
        self, call: Call, request: push_pb2.SubscribePushRequest, stream: ServerStream
    ) -> Deferred[None]:
        token: int | None = None

        def deliver(encoded: Encoded) -> None:
            if stream.closed:
                # The stream ended without cancelling us (should not happen); stop feeding it.
                stop()
                return
            stream.send(encoded)

        def stop() -> None:
            nonlocal token
            if token is not None:
                self._bus.unsubscribe(token)
                token = None
                _log.info("push subscriber {gateway_id!r} gone", gateway_id=request.gateway_id)

        def cancel(_: Deferred[Any]) -> None:
            stop()

        done: Deferred[None] = Deferred(canceller=cancel)
        token = self._bus.subscribe(deliver)
        _log.info("push subscriber {gateway_id!r} from {peer}", gateway_id=request.gateway_id, peer=call.peer)
        return done


def push_methods(bus: PushBus) -> list[Method]:
    """The method table entries the backend's push port serves."""
    return [
        Method(
            SUBSCRIBE_PUSH_PATH,
            push_pb2.SubscribePushRequest,
            push_pb2.PushEvent,
            stream=SubscribePushHandler(bus),
        )
    ]
