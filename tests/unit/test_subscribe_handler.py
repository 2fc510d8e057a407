"""The SubscribeEvents handler's life cycle: verify, register, greet, wait, end (gatewayd/push/subscribe.py)."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from gatewayd.backend.rest import Session
from gatewayd.pipeline.pipeline import VerifiedCaller
from gatewayd.pipeline.signer import EventSigner
from gatewayd.push.hub import REVOKED, Hub
from gatewayd.push.subscribe import SubscribeEvents
from gatewayd.rpc.call import Call
from gatewayd.rpc.codes import Code
from gatewayd.rpc.errors import RpcError
from gatewayd.signing import GatewayKey

CALLER = VerifiedCaller(Session("ds_1", "u_1", b"k" * 32, "active"), "r1", 0)


class Verification:
    """A pipeline whose verification the test completes (or that completes at once with ``now``)."""

    def __init__(self, now: VerifiedCaller | None = None) -> None:
        self.now = now
        self.pending: defer.Deferred[VerifiedCaller] | None = None
        self.cancelled = False

    def verify_subscription(self, call: Call, request: Any) -> defer.Deferred[VerifiedCaller]:
        if self.now is not None:
            return defer.succeed(self.now)

        def cancel(d: defer.Deferred[VerifiedCaller]) -> None:
            self.cancelled = True

        self.pending = defer.Deferred(cancel)
        return self.pending


class Stream:
    """A ``ServerStream`` recording what is sent; ``overflow`` ends it at the first send."""

    def __init__(self, overflow: bool = False) -> None:
        self.sent: list[Any] = []
        self.closed = False
        self.overflow = overflow

    def send(self, message: Any) -> None:
        if self.closed:
            return
        self.sent.append(message)
        self.closed = self.overflow


def handler(verification: Verification) -> tuple[SubscribeEvents, Hub]:
    clock = Clock()
    hub = Hub(clock)
    return SubscribeEvents(verification, hub, EventSigner(GatewayKey.generate(), clock), clock), hub  # type: ignore[arg-type]


def call() -> Call:
    return Call(method="/gateway.v1.Gateway/SubscribeEvents", protocol="grpc", metadata={}, peer="127.0.0.1")


def outcome(d: defer.Deferred[Any]) -> list[Any]:
    results: list[Any] = []
    d.addBoth(results.append)
    return results


def test_registers_after_verification_greets_and_waits_until_revoked() -> None:
    verification = Verification()
    subscribe, hub = handler(verification)
    stream = Stream()
    d = subscribe(call(), None, stream)
    assert len(hub) == 0 and hub.revocations.outstanding == 1  # the ticket is held while verifying
    assert verification.pending is not None
    verification.pending.callback(CALLER)
    assert len(hub) == 1 and hub.revocations.outstanding == 0
    assert [m.message.event_type for m in stream.sent] == ["gateway.server_time"]
    results = outcome(d)
    assert results == []  # the call stays open
    assert hub.revoke("u_1", "ds_1") == 1
    assert len(hub) == 0
    assert isinstance(results[0], Failure) and results[0].value is REVOKED


@pytest.mark.parametrize("verified_at_once", [False, True])
def test_cancelling_an_open_stream_unregisters_it(verified_at_once: bool) -> None:
    verification = Verification(now=CALLER if verified_at_once else None)
    subscribe, hub = handler(verification)
    d = subscribe(call(), None, Stream())
    if verification.pending is not None:
        verification.pending.callback(CALLER)
    assert len(hub) == 1
    results = outcome(d)
    d.cancel()  # the client went away
    assert len(hub) == 0
    assert results[0].check(defer.CancelledError)


def test_cancelling_during_verification_cancels_it_and_registers_nothing() -> None:
    verification = Verification()
    subscribe, hub = handler(verification)
    stream = Stream()
    d = subscribe(call(), None, stream)
    results = outcome(d)
    d.cancel()  # the client went away (or the deadline passed) while the session was looked up
    assert verification.cancelled
    assert results[0].check(defer.CancelledError)
    assert len(hub) == 0 and hub.revocations.outstanding == 0 and stream.sent == []


def test_a_refused_verification_ends_the_call_with_its_error() -> None:
    verification = Verification()
    subscribe, hub = handler(verification)
    results = outcome(subscribe(call(), None, Stream()))
    assert verification.pending is not None
    verification.pending.errback(RpcError(Code.UNAUTHENTICATED, "bad signature"))
    assert results[0].value.code is Code.UNAUTHENTICATED
    assert len(hub) == 0 and hub.revocations.outstanding == 0


def test_a_greeting_that_overflows_the_stream_ends_the_subscription() -> None:
    subscribe, hub = handler(Verification(now=CALLER))
    results = outcome(subscribe(call(), None, Stream(overflow=True)))
    assert results == [None]  # the stream already ended the call (RESOURCE_EXHAUSTED); nothing to wait for
    assert len(hub) == 0


def test_a_registration_refused_after_an_immediate_verification_fails_the_returned_deferred() -> None:
    class RevokedWhileVerifying(Verification):
        def verify_subscription(self, call: Call, request: Any) -> defer.Deferred[VerifiedCaller]:
            hub.revoke("u_1", "ds_1")  # the invalidation arrives after the ticket was taken
            return defer.succeed(CALLER)

    subscribe, hub = handler(RevokedWhileVerifying())
    stream = Stream()
    results = outcome(subscribe(call(), None, stream))
    assert isinstance(results[0], Failure) and results[0].value is REVOKED
    assert len(hub) == 0 and hub.revocations.outstanding == 0 and stream.sent == []


def test_an_immediate_verification_registers_and_greets_before_returning() -> None:
    verification = Verification(now=CALLER)
    subscribe, hub = handler(verification)
    stream = Stream()
    d = subscribe(call(), None, stream)
    assert isinstance(d, defer.Deferred) and not d.called  # waits for the subscription's end
    assert len(hub) == 1 and hub.revocations.outstanding == 0
    assert [m.message.event_type for m in stream.sent] == ["gateway.server_time"]
    results = outcome(d)
    hub.revoke("u_1", "ds_1")
    assert results[0].value is REVOKED and len(hub) == 0
