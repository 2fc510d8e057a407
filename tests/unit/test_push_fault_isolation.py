"""An exception while handling one push event, or re-checking one session, must not stop the others.

The push consumer (tests/integration/test_push_consumer.py) logs, counts and goes on when its
handler raises. Behind it: the resync keeps checking its queue when one session's check raises,
and a fan-out keeps sending to the other streams when one stream's send
raises.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.logger import capturedLogs

from gatewayd.push.hub import Hub
from gatewayd.push.resync import SessionResync
from gatewayd.rpc.codes import Code
from tests.unit.test_push_fanout import USER, Stream, TurnClock, event
from tests.unit.test_push_resync import Rig, devices
from tests.unit.test_revocation_race import code_of


def test_a_resync_check_that_raises_ends_that_session_unavailable_and_the_queue_goes_on() -> None:
    rig = Rig(concurrency=1)
    devs = devices(rig, 3)
    outcomes = [rig.open_device(d)[1] for d in devs]

    def revoke(user_id: str, device_session_id: str) -> int:
        if device_session_id == "ds_1":
            raise RuntimeError("a bug while ending ds_1's streams")
        return rig.hub.revoke(user_id, device_session_id)

    rig.resync = SessionResync(rig.hub, rig.cache, revoke, concurrency=1)
    rig.resync()
    with capturedLogs() as logged:
        for d in devs:
            assert rig.in_flight() == [d.session.device_session_id]  # one at a time, in order
            rig.answer(d.session.device_session_id, replace(d.session, status="revoked"))
    assert rig.resync.pending == 0 and rig.in_flight() == []
    done: list[Any] = []
    rig.resync.when_idle().addCallback(done.append)
    assert done == [None]
    # ds_1 failed closed; ds_0 and ds_2, before and after it, were revoked as the backend said.
    assert [code_of(o) for o in outcomes] == [Code.FAILED_PRECONDITION, Code.UNAVAILABLE, Code.FAILED_PRECONDITION]
    stats = rig.resync.stats
    assert (stats.errors, stats.sessions_revoked, stats.streams_ended) == (1, 3, 3)
    [failure] = [e for e in logged if "re-checking a session failed" in e.get("log_format", "")]
    assert failure["device_session_id"] == "ds_1" and "log_failure" in failure


def test_a_stream_whose_send_raises_does_not_cost_the_others_their_events() -> None:
    clock = TurnClock()
    hub = Hub(clock, fanout_batch=10)
    log: list[Any] = []
    streams = [Stream(log) for _ in range(3)]
    ends: dict[int, list[Any]] = {}
    for i, stream in enumerate(streams):
        sub = hub.register(USER, f"ds_{i}", stream)
        sub.done.addBoth(ends.setdefault(id(stream), []).append)

    broken: list[Stream] = []

    def break_once(stream: Stream) -> None:
        if not broken:  # the first stream the hub sends to, whichever that is
            broken.append(stream)
            raise RuntimeError("a bug in one stream's send")

    for stream in streams:
        stream.on_send = break_once
    with capturedLogs() as events:
        for event_id in ("ev_1", "ev_2"):
            hub.publish(USER, "", event(event_id))  # the publisher never sees the stream's exception
        clock.turn()
    assert [s.received for s in streams if s is not broken[0]] == [["ev_1", "ev_2"]] * 2
    assert hub.stats.send_errors == 1 and len(hub) == 2  # the broken stream was ended, once
    assert code_of(ends[id(broken[0])]) is Code.INTERNAL
    assert all(not ends[id(s)] for s in streams if s is not broken[0])
    assert any("failed to take an event" in e.get("log_format", "") and "log_failure" in e for e in events)
