"""Turn backend push events into hub actions: publish client events, revoke sessions."""

from __future__ import annotations

from collections.abc import Callable

from twisted.logger import Logger

from gatewayd._proto.push.v1 import push_pb2
from gatewayd.observability.stats import DispatcherStats
from gatewayd.pipeline.signer import EventSigner
from gatewayd.push.hub import Hub
from gatewayd.rpc.call import Encoded

log = Logger()


class Dispatcher:
    """The push consumer's ``on_event``.

    A ClientEvent is signed once and its one ``Encoded`` form fanned out. A
    SessionInvalidation drops the session cache entries first (so the next
    ExecuteCommand with that session is UNAUTHENTICATED at once), then has the
    hub end the streams with FAILED_PRECONDITION and refuse the ones still
    being verified.
    """

    def __init__(
        self,
        hub: Hub,
        signer: EventSigner,
        invalidate_session: Callable[[str], None],
        invalidate_user: Callable[[str], None],
    ) -> None:
        self.hub = hub
        self.signer = signer
        self.invalidate_session = invalidate_session
        self.invalidate_user = invalidate_user
        self.events_in = 0
        self.invalidations = 0

    @property
    def stats(self) -> DispatcherStats:
        """Client events and invalidations received so far (for ``/metrics``)."""
        return DispatcherStats(events_in=self.events_in, invalidations=self.invalidations)

    def __call__(self, event: push_pb2.PushEvent) -> None:
        kind = event.WhichOneof("kind")
        if kind == "client_event":
            self.publish(event.client_event)
        elif kind == "session_invalidation":
            self.invalidate(event.session_invalidation)

    def publish(self, event: push_pb2.ClientEvent) -> int:
        self.events_in += 1
        if not event.user_id or not event.event_type:
            log.warn("push event without user_id or event_type dropped")
            return 0
        signed = self.signer.sign(
            event.event_type, event.event_id, event.payload_bytes, event.timestamp_ms or None
        )
        return self.hub.publish(event.user_id, event.device_session_id, Encoded(signed))

    def invalidate(self, invalidation: push_pb2.SessionInvalidation) -> int:
        self.invalidations += 1
        if invalidation.device_session_id:
            self.invalidate_session(invalidation.device_session_id)
        elif invalidation.user_id:
            self.invalidate_user(invalidation.user_id)
        else:
            return 0
        return self.hub.revoke(invalidation.user_id, invalidation.device_session_id)
