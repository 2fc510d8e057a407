"""After the push stream (re)opens, invalidations it missed still end their streams (push/resync.py).

The real SessionCache, Hub, Dispatcher, SubscribeEvents and Pipeline on a Clock; the backend's
session lookups are held in Deferreds the test answers, so every interleaving is exact.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from twisted.internet.defer import Deferred

from gatewayd.backend.rest import BackendUnavailable, Session
from gatewayd.observability.stats import ResyncStats
from gatewayd.pipeline.pipeline import SUBSCRIBE_EVENTS_PATH
from gatewayd.push.resync import SessionResync
from gatewayd.push.revocations import Revocations, Verdict
from gatewayd.push.subscribe import SERVER_TIME_EVENT, SubscribeEvents
from gatewayd.rpc.call import Call
from gatewayd.rpc.codes import Code
from tests.unit.test_pipeline_stages import Device
from tests.unit.test_revocation_race import HeldLookups, HeldPipeline, Stream, code_of, verified


class Rig(HeldLookups):
    """HeldLookups with a resync wired as service.py wires it, and lookups answered by session id."""

    def __init__(self, concurrency: int = 2) -> None:
        super().__init__()
        self.resync = SessionResync(self.hub, self.cache, self.hub.revoke, concurrency)
        self.held_by_id: list[tuple[str, Deferred[Session | None]]] = []

    def _lookup(self, device_session_id: str, call: Any = None) -> Deferred[Session | None]:
        d = super()._lookup(device_session_id, call)
        self.held_by_id.append((device_session_id, d))
        return d

    def answer(self, device_session_id: str, session: Session | Exception | None) -> None:
        for i, (held_id, d) in enumerate(self.held_by_id):
            if held_id == device_session_id:
                del self.held_by_id[i]
                self.held.remove(d)
                if isinstance(session, Exception):
                    d.errback(session)
                else:
                    d.callback(session)
                return
        raise AssertionError(f"no lookup of {device_session_id} in flight: {self.held_by_id}")

    def in_flight(self) -> list[str]:
        return [held_id for held_id, _ in self.held_by_id]

    def open_device(self, device: Device) -> tuple[Stream, list[Any]]:
        """A registered stream for ``device`` (its first lookup answered active)."""
        stream, outcome = self.open(device)
        self.answer(device.session.device_session_id, device.session)
        assert outcome == [] and stream.received == [SERVER_TIME_EVENT]
        return stream, outcome


@pytest.fixture
def rig() -> Rig:
    return Rig()


def devices(rig: Rig, n: int) -> list[Device]:
    return [Device(rig.clock, f"ds_{i}", f"usr_{i}", seed=i + 1) for i in range(n)]


def test_open_streams_are_rechecked_with_bounded_concurrency_and_the_missed_revocations_end_them(
        rig: Rig) -> None:
    active, revoked, unknown, moved, failing = devices(rig, 5)
    opened = {d.session.device_session_id: rig.open_device(d) for d in (active, revoked, unknown, moved, failing)}
    # The cache holds every session as active; the push stream was down while they changed.
    assert len(rig.cache) == 5

    rig.resync()
    assert len(rig.cache) == 0  # the whole cache is dropped
    assert rig.resync.pending == 5 and rig.resync.stats.pending == 5
    assert len(rig.in_flight()) == 2  # at most `concurrency` lookups at a time

    answers: dict[str, Session | Exception | None] = {
        "ds_0": active.session,
        "ds_1": replace(revoked.session, status="revoked"),
        "ds_2": None,  # 404: the backend forgot it
        "ds_3": replace(moved.session, user_id="usr_someone_else"),
        "ds_4": BackendUnavailable("backend timed out"),
    }
    while rig.in_flight():
        assert len(rig.in_flight()) <= 2
        device_session_id = rig.in_flight()[0]
        rig.answer(device_session_id, answers[device_session_id])
    assert rig.resync.pending == 0
    assert sorted(rig.lookups[5:]) == sorted(answers)  # each open session asked once more

    assert opened["ds_0"][1] == [] and len(rig.hub) == 1
    for ended in ("ds_1", "ds_2", "ds_3"):
        assert code_of(opened[ended][1]) == Code.FAILED_PRECONDITION, ended
    assert code_of(opened["ds_4"][1]) == Code.UNAVAILABLE  # could not be re-verified: fail closed
    assert (rig.resync.checked, rig.resync.revoked, rig.resync.unverified) == (4, 3, 1)
    assert rig.resync.stats == ResyncStats(runs=1, sessions_checked=4, sessions_revoked=3, lookup_errors=1, errors=0,
                                           streams_ended=4, pending=0)
    assert rig.hub.stats.streams_revoked == 3  # the unverified stream ended UNAVAILABLE: not a revocation
    # Nothing more reaches the ended streams; the active one still gets events.
    rig.publish_note()  # usr_1's note: its stream ended
    assert opened["ds_1"][0].received == [SERVER_TIME_EVENT]


def test_a_subscription_verified_before_the_stream_came_back_is_rechecked_once_registered(rig: Rig) -> None:
    # Its session lookup answered "active" during the outage; the stores are still answering.
    pipeline = HeldPipeline()
    subscribe = SubscribeEvents(pipeline, rig.hub, rig.signer, rig.clock)  # type: ignore[arg-type]
    early, early_outcome = Stream(), []
    subscribe(Call(SUBSCRIBE_EVENTS_PATH, "grpc", {}, "p"), None, early).addBoth(early_outcome.append)  # type: ignore[arg-type]
    rig.resync()
    assert rig.in_flight() == []  # nothing registered yet
    # One that starts verifying after the stream is back needs no second look.
    late, late_outcome = Stream(), []
    subscribe(Call(SUBSCRIBE_EVENTS_PATH, "grpc", {}, "p"), None, late).addBoth(late_outcome.append)  # type: ignore[arg-type]

    pipeline.pending.pop(0).callback(verified("usr_1", "ds_1"))
    assert early.received == [SERVER_TIME_EVENT] and len(rig.hub) == 1
    assert rig.in_flight() == ["ds_1"]  # registered, and looked up again
    pipeline.pending.pop(0).callback(verified("usr_2", "ds_2"))
    assert rig.in_flight() == ["ds_1"] and len(rig.hub) == 2

    rig.answer("ds_1", Session("ds_1", "usr_1", bytes(32), "revoked"))
    assert code_of(early_outcome) == Code.FAILED_PRECONDITION
    assert late_outcome == [] and len(rig.hub) == 1


def test_a_new_resync_supersedes_the_queue_of_the_one_under_way() -> None:
    rig = Rig(concurrency=1)
    devs = devices(rig, 3)
    outcomes = [rig.open_device(d)[1] for d in devs]
    rig.resync()
    assert rig.in_flight() == ["ds_0"]
    rig.resync()  # the push stream dropped and came back again
    # The answer in flight is handed over but not cached; the queue starts over with every session.
    rig.answer("ds_0", devs[0].session)
    assert rig.in_flight() == ["ds_0"] and rig.resync.pending == 3
    for d in devs:
        rig.answer(d.session.device_session_id, d.session)
    assert rig.resync.pending == 0 and rig.in_flight() == []
    assert all(outcome == [] for outcome in outcomes) and len(rig.hub) == 3
    assert rig.resync.runs == 2 and len(rig.cache) == 3


def test_nothing_open_nothing_asked(rig: Rig) -> None:
    rig.resync()
    assert rig.lookups == [] and rig.resync.pending == 0
    done: list[Any] = []
    rig.resync.when_idle().addCallback(done.append)
    assert done == [None]
    with pytest.raises(ValueError):
        SessionResync(rig.hub, rig.cache, rig.hub.revoke, concurrency=0)


def test_mark_recheck_concerns_only_older_tickets_and_never_hides_a_revocation() -> None:
    revocations = Revocations()
    old = revocations.take()
    revocations.record("", "ds_revoked")
    revocations.mark_recheck()
    young = revocations.take()
    assert revocations.revoked_since(old, "usr_1", "ds_1") is Verdict.RECHECK
    assert revocations.revoked_since(old, "usr_1", "ds_revoked") is Verdict.REVOKED
    assert revocations.revoked_since(young, "usr_1", "ds_1") is Verdict.CLEAR
