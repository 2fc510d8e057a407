"""Revocation is final (PROTOCOL.md section 8), also while a SubscribeEvents call is being verified.

An invalidation that arrives between a subscription's session lookup and its registration
with the hub must end it FAILED_PRECONDITION with nothing sent. Everything runs on a Clock
with lookups and verifications held in Deferreds the test fires, so each interleaving is
exact: the real Pipeline, SessionCache, Hub, Dispatcher and SubscribeEvents, a fake backend.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred

from gatewayd._proto.push.v1 import push_pb2
from gatewayd.backend.rest import Session
from gatewayd.pipeline.pipeline import SUBSCRIBE_EVENTS_PATH, VerifiedCaller
from gatewayd.pipeline.signer import EventSigner
from gatewayd.push.dispatcher import Dispatcher
from gatewayd.push.hub import Hub
from gatewayd.push.revocations import Revocations, Verdict
from gatewayd.push.subscribe import SERVER_TIME_EVENT, SubscribeEvents
from gatewayd.rpc.call import Call, Encoded
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from tests.unit.test_pipeline_stages import Device, Rig

USER, SESSION = "usr_1", "ds_1"


class Stream:
    def __init__(self) -> None:
        self.received: list[str] = []
        self.closed = False

    def send(self, message: Any) -> None:
        assert isinstance(message, Encoded)
        self.received.append(message.message.event_type)


class HeldLookups(Rig):
    """The pipeline rig whose backend session lookups wait until the test answers them."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[Deferred[Session | None]] = []
        self.hub = Hub(self.clock)
        self.signer = EventSigner(self.key, self.clock)
        self.subscribe = SubscribeEvents(self.pipeline, self.hub, self.signer, self.clock)
        self.dispatcher = Dispatcher(self.hub, self.signer, self.cache.invalidate, self.cache.invalidate_user)

    def _lookup(self, device_session_id: str, call: Any = None) -> Deferred[Session | None]:
        self.lookups.append(device_session_id)
        d: Deferred[Session | None] = Deferred()
        self.held.append(d)
        return d

    def answer_lookup(self, session: Session | None) -> None:
        self.held.pop(0).callback(session)

    def open(self, device: Device | None = None) -> tuple[Stream, list[Any]]:
        stream = Stream()
        request = (device or self.device).subscribe()
        outcome: list[Any] = []
        call = Call(SUBSCRIBE_EVENTS_PATH, "grpc", {}, "203.0.113.7")
        self.subscribe(call, request, stream).addBoth(outcome.append)
        return stream, outcome

    def invalidate(self, user_id: str, device_session_id: str) -> None:
        self.dispatcher(push_pb2.PushEvent(session_invalidation=push_pb2.SessionInvalidation(
            user_id=user_id, device_session_id=device_session_id, reason="test")))

    def publish_note(self) -> None:
        self.dispatcher(push_pb2.PushEvent(client_event=push_pb2.ClientEvent(
            user_id=USER, event_type="user.note.created", event_id="n1", payload_bytes=b"{}")))


def code_of(outcome: list[Any]) -> Code:
    assert len(outcome) == 1, outcome
    failure = outcome[0]
    assert hasattr(failure, "value") and isinstance(failure.value, RpcError), failure
    return failure.value.code


@pytest.fixture
def rig() -> HeldLookups:
    return HeldLookups()


# The three forms of SessionInvalidation: one session (user named or not), every session of the user.
INVALIDATIONS = [(USER, SESSION), ("", SESSION), (USER, "")]


@pytest.mark.parametrize(("user_id", "device_session_id"), INVALIDATIONS)
def test_invalidated_during_the_session_lookup_the_stale_answer_is_refused_and_not_cached(
        rig: HeldLookups, user_id: str, device_session_id: str) -> None:
    stream, outcome = rig.open()
    assert rig.lookups == [SESSION] and outcome == []
    rig.invalidate(user_id, device_session_id)
    # The backend's answer was on its way before the revocation: it still says "active".
    rig.answer_lookup(rig.device.session)

    assert code_of(outcome) == Code.FAILED_PRECONDITION
    assert stream.received == [] and len(rig.hub) == 0
    assert (rig.dispatcher.stats.invalidations, rig.hub.stats.subscriptions_refused, rig.hub.stats.streams_revoked) \
        == (1, 1, 0)
    rig.publish_note()
    assert stream.received == []
    # Nothing is kept once no subscription is being verified.
    assert len(rig.hub.revocations) == 0 and rig.hub.revocations.outstanding == 0
    # The stale "active" answer was not cached: the next call asks the backend again.
    rig.cache.get(SESSION)
    assert rig.lookups == [SESSION, SESSION]


def test_without_an_invalidation_the_same_interleaving_registers(rig: HeldLookups) -> None:
    stream, outcome = rig.open()
    rig.answer_lookup(rig.device.session)
    assert outcome == [] and len(rig.hub) == 1
    assert stream.received == [SERVER_TIME_EVENT]
    rig.publish_note()
    assert stream.received == [SERVER_TIME_EVENT, "user.note.created"]


@pytest.mark.parametrize(("user_id", "device_session_id"), [(USER, "ds_other"), ("usr_other", "")])
def test_an_invalidation_of_someone_else_changes_nothing(
        rig: HeldLookups, user_id: str, device_session_id: str) -> None:
    stream, outcome = rig.open()
    rig.invalidate(user_id, device_session_id)
    rig.answer_lookup(rig.device.session)
    assert outcome == [] and len(rig.hub) == 1
    assert stream.received == [SERVER_TIME_EVENT]


def test_an_invalidation_after_registration_ends_the_stream(rig: HeldLookups) -> None:
    stream, outcome = rig.open()
    rig.answer_lookup(rig.device.session)
    rig.invalidate(USER, SESSION)
    assert code_of(outcome) == Code.FAILED_PRECONDITION
    assert (rig.hub.stats.streams_revoked, rig.hub.stats.subscriptions_refused) == (1, 0)
    rig.invalidate(USER, SESSION)  # again: nothing more to end
    assert rig.hub.stats.streams_revoked == 1 and rig.dispatcher.stats.invalidations == 2
    rig.publish_note()
    assert stream.received == [SERVER_TIME_EVENT]


def test_a_cancelled_verification_gives_its_ticket_back(rig: HeldLookups) -> None:
    stream = Stream()
    call = Call(SUBSCRIBE_EVENTS_PATH, "grpc", {}, "203.0.113.7")
    d = rig.subscribe(call, rig.device.subscribe(), stream)
    assert rig.hub.revocations.outstanding == 1
    rig.invalidate(USER, SESSION)
    assert len(rig.hub.revocations) == 1
    d.addErrback(lambda f: f.trap(CancelledError))
    d.cancel()
    assert rig.hub.revocations.outstanding == 0 and len(rig.hub.revocations) == 0


# --- after the session lookup: the replay and budget round trips --------------------------------


class HeldPipeline:
    """A pipeline whose verification (past the session lookup: Redis round trips) the test finishes."""

    def __init__(self) -> None:
        self.pending: list[Deferred[VerifiedCaller]] = []

    def verify_subscription(self, call: Call, request: Any) -> Deferred[VerifiedCaller]:
        d: Deferred[VerifiedCaller] = Deferred()
        self.pending.append(d)
        return d


def verified(user_id: str = USER, device_session_id: str = SESSION) -> VerifiedCaller:
    return VerifiedCaller(Session(device_session_id, user_id, bytes(32), "active"), "r-1", 1)


@pytest.mark.parametrize(("user_id", "device_session_id"), INVALIDATIONS)
def test_invalidated_while_the_stores_answer_the_stream_is_refused(
        rig: HeldLookups, user_id: str, device_session_id: str) -> None:
    pipeline = HeldPipeline()
    subscribe = SubscribeEvents(pipeline, rig.hub, rig.signer, rig.clock)  # type: ignore[arg-type]
    stream, outcome = Stream(), []
    subscribe(Call(SUBSCRIBE_EVENTS_PATH, "grpc", {}, "p"), None, stream).addBoth(outcome.append)  # type: ignore[arg-type]
    rig.invalidate(user_id, device_session_id)
    pipeline.pending.pop().callback(verified())
    assert code_of(outcome) == Code.FAILED_PRECONDITION
    assert stream.received == [] and len(rig.hub) == 0


def test_too_many_invalidations_during_one_verification_fail_closed(rig: HeldLookups) -> None:
    hub = Hub(rig.clock, max_tombstones=2)
    pipeline = HeldPipeline()
    subscribe = SubscribeEvents(pipeline, hub, rig.signer, rig.clock)  # type: ignore[arg-type]
    stream, outcome = Stream(), []
    subscribe(Call(SUBSCRIBE_EVENTS_PATH, "grpc", {}, "p"), None, stream).addBoth(outcome.append)  # type: ignore[arg-type]
    for n in range(5):
        hub.revoke(f"usr_{n + 10}", "")
        assert len(hub.revocations) <= 2
    pipeline.pending.pop().callback(verified())
    # The tombstones that might have named this user are gone: it cannot be told, so UNAVAILABLE.
    assert code_of(outcome) == Code.UNAVAILABLE
    assert stream.received == [] and len(hub) == 0 and len(hub.revocations) == 0
    assert hub.stats.subscriptions_refused == 1 and hub.stats.streams_revoked == 0


# --- the tombstones themselves -------------------------------------------------------------------


def test_tombstones_live_only_as_long_as_an_older_ticket() -> None:
    revocations = Revocations(max_tombstones=10)
    revocations.record(USER, "ds_before")
    assert len(revocations) == 0  # nobody was being verified
    first = revocations.take()
    revocations.record(USER, "ds_a")
    second = revocations.take()
    revocations.record("", "ds_b")
    revocations.record("usr_2", "")
    assert len(revocations) == 3
    assert revocations.revoked_since(first, USER, "ds_a") is Verdict.REVOKED
    assert revocations.revoked_since(second, USER, "ds_a") is Verdict.CLEAR  # before its ticket
    assert revocations.revoked_since(second, "usr_9", "ds_b") is Verdict.REVOKED
    assert revocations.revoked_since(second, "usr_2", "ds_x") is Verdict.REVOKED
    assert revocations.revoked_since(first, USER, "ds_before") is Verdict.CLEAR
    revocations.release(first)
    assert len(revocations) == 2  # ds_a: only the first ticket predated it
    revocations.release(first)  # idempotent
    revocations.release(second)
    assert len(revocations) == 0 and revocations.outstanding == 0


def test_the_bound_drops_the_oldest_and_only_older_tickets_become_unknown() -> None:
    revocations = Revocations(max_tombstones=2)
    old = revocations.take()
    revocations.record("usr_1", "")
    revocations.record("usr_2", "")
    young = revocations.take()
    revocations.record("usr_3", "")
    assert len(revocations) == 2
    assert revocations.revoked_since(old, "usr_9", "ds_9") is Verdict.UNKNOWN
    assert revocations.revoked_since(old, "usr_3", "ds_9") is Verdict.REVOKED
    assert revocations.revoked_since(young, "usr_9", "ds_9") is Verdict.CLEAR
    assert revocations.revoked_since(young, "usr_3", "ds_9") is Verdict.REVOKED
    with pytest.raises(ValueError):
        Revocations(max_tombstones=0)
