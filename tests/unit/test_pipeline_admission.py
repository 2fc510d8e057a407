"""Stages 5 (replay) and 6 (rate limit) share one store call; the outcome is theirs in order.
And the default budgets of PROTOCOL.md section 7, on a Clock."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from gatewayd.config import Budget, Config, LimitsConfig
from gatewayd.devmode import dev_config
from gatewayd.pipeline.context import RequestContext
from gatewayd.pipeline.rate_limit import BudgetPlan
from gatewayd.pipeline.replay import ReplayStage
from gatewayd.rpc.codes import Code
from gatewayd.stores.base import Admission, StoreUnavailable
from gatewayd.stores.memory import MemoryRateLimiter, MemoryReplayStore, MemoryStores
from tests.unit.test_pipeline_stages import GENEROUS, Device, Rig

MakeRig = Callable[..., Rig]


@pytest.fixture(params=["deferred", "memory"])
def make_rig(request: pytest.FixtureRequest) -> MakeRig:
    """Rigs whose stores answer through Deferreds (the base ``Stores`` over the memory stores, as Redis
    answers) or ``MemoryStores``, whose answers the replay stage takes at once (``admit_now``, no
    Deferred): every test here runs with both, and the outcomes must be the same."""
    memory = request.param == "memory"

    def make(**kwargs: Any) -> Rig:
        return Rig(memory_stores=memory, **kwargs)

    return make


def tight(**budgets: Budget) -> LimitsConfig:
    return dataclasses.replace(GENEROUS, **budgets)


def test_a_replayed_request_is_refused_before_any_budget_is_charged(make_rig: MakeRig) -> None:
    rig = make_rig(limits=tight(session=Budget(rate=0.01, burst=2)))
    first = rig.device.command(request_id="r-1")
    rig.execute(first)
    for _ in range(5):
        assert rig.reject(first).code == Code.ALREADY_EXISTS
    # Had the replays been charged, the session's second unit would be gone.
    assert rig.execute(rig.device.command(request_id="r-2")).envelope.result_code == "ok"
    assert rig.reject(rig.device.command(request_id="r-3")).code == Code.RESOURCE_EXHAUSTED


def test_a_request_refused_for_its_budget_has_used_its_request_id(make_rig: MakeRig) -> None:
    rig = make_rig(limits=tight(session=Budget(rate=1.0, burst=1)))
    rig.execute(rig.device.command(request_id="r-1"))
    again = rig.device.command(request_id="r-2")
    assert rig.reject(again).code == Code.RESOURCE_EXHAUSTED
    rig.clock.advance(5.0)  # the budget has refilled; the request id is still reserved
    assert rig.reject(again).code == Code.ALREADY_EXISTS
    assert rig.execute(rig.device.command(request_id="r-3")).envelope.result_code == "ok"


def test_observers_see_both_stages_with_the_deciding_one_rejecting(make_rig: MakeRig) -> None:
    rig = make_rig(limits=tight(user=Budget(rate=0.01, burst=1)), observe=True)
    rig.execute(rig.device.command())
    rig.stages_seen.clear()
    rig.reject(rig.device.command())
    assert rig.stages_seen[-2:] == [("replay", "ok"), ("rate_limit", "resource_exhausted")]
    rig.stages_seen.clear()
    replayed = rig.device.command(request_id="once")
    rig.clock.advance(200.0)
    rig.execute(replayed)
    rig.stages_seen.clear()
    rig.reject(replayed)
    assert rig.stages_seen[-1] == ("replay", "already_exists")


def test_a_reload_gives_the_shared_store_call_the_new_budgets(make_rig: MakeRig) -> None:
    rig = make_rig(limits=tight(ip=Budget(rate=0.01, burst=1)))
    rig.execute(rig.device.command())
    assert rig.reject(rig.device.command()).code == Code.RESOURCE_EXHAUSTED
    routes = rig.pipeline.stages[-1]._routes  # type: ignore[attr-defined]
    rig.pipeline.reconfigure(routes, tight(ip=Budget(rate=0.01, burst=50)))
    assert rig.execute(rig.device.command()).envelope.result_code == "ok"
    subscription = rig.pipeline.subscription_stages
    assert [s.name for s in subscription][-2:] == ["replay", "rate_limit"]
    assert subscription[-2] is rig.pipeline.stages[-3] and subscription[-1] is rig.pipeline.stages[-2]


# --- default budgets (PROTOCOL.md section 7) ----------------------------------------------------------


def test_one_session_calling_one_message_type_100_times_a_second_for_5_s_is_never_refused(make_rig: MakeRig) -> None:
    rig = make_rig(limits=LimitsConfig())
    for i in range(500):
        rig.clock.advance(0.01)
        response = rig.execute(rig.device.command("user.profile.get", b"", request_id=f"r-{i}"))
        assert response.envelope.result_code == "ok", i
    assert len(rig.backend.calls) == 500


def test_dev_mode_lets_2000_calls_a_second_through_from_one_ip(make_rig: MakeRig) -> None:
    limits = dev_config(Config(), None).limits
    assert limits.ip.rate >= 2000
    rig = make_rig(limits=limits)
    devices = []
    for n in range(20):  # 20 users, 100 calls a second each, all from 127.0.0.1
        device = Device(rig.clock, f"ds_{n}", f"usr_{n}", seed=n + 1)
        rig.sessions[device.session.device_session_id] = device.session
        devices.append(device)
    for i in range(50):  # 0.5 s: 1,000 calls, far over the production IP budget's burst of 400
        rig.clock.advance(0.01)
        for device in devices:
            response = rig.execute(device.command("user.profile.get", b"", request_id=f"r-{i}"), peer="127.0.0.1:5")
            assert response.envelope.result_code == "ok", (i, device.session.device_session_id)


def test_dev_mode_keeps_a_larger_configured_ip_budget() -> None:
    big = Budget(rate=5000.0, burst=9000)
    assert dev_config(Config().replace(limits={"ip": big}), None).limits.ip == big
    assert dev_config(Config(), None).limits.ip == Budget(rate=2000.0, burst=4000)
    assert Config().limits.ip == Budget(rate=200.0, burst=400)  # production keeps its default


# --- the replay stage and MemoryStores -----------------------------------------------------------------


def test_memory_stores_are_asked_at_once_and_a_full_replay_store_is_unavailable(make_rig: MakeRig) -> None:
    rig = make_rig()
    rig.replay.inner._deadlines.max_entries = 1
    rig.execute(rig.device.command())
    assert rig.reject(rig.device.command()).code == Code.UNAVAILABLE
    assert rig.backend.calls and len(rig.backend.calls) == 1


def test_an_admit_replaced_on_the_instance_is_the_one_called() -> None:
    """Tracing's ``trace_stores`` replaces ``admit`` on the instance (a span per call): the replay
    stage must then call it rather than ``admit_now``."""
    clock = Clock()
    stores = MemoryStores(MemoryReplayStore(clock), MemoryRateLimiter(clock))
    plan = BudgetPlan(GENEROUS, {"user.notes.create"})
    assert ReplayStage(stores, 30.0, plan)._admit_now is not None
    seen: list[str] = []
    admit = stores.admit

    def traced_admit(key: str, ttl_s: float, budgets: Any) -> Deferred[Admission]:
        seen.append(key)
        return admit(key, ttl_s, budgets)

    stores.admit = traced_admit  # type: ignore[method-assign]
    stage = ReplayStage(stores, 30.0, plan)
    assert stage._admit_now is None
    rig = Rig()
    request = rig.device.command()
    ctx = RequestContext(rig.call(), request.envelope, request.payload_bytes, request.signature)
    ctx.session = rig.device.session
    assert stage.check(ctx) is None and seen == ["replay:ds_1:" + ctx.env.request_id]
    assert ctx.budgets is not None and all(d.allowed for d in ctx.budgets)


def test_memory_admit_now_answers_as_admit() -> None:
    clock = Clock()
    budgets = [("a", Budget(rate=1.0, burst=1))]
    sync = MemoryStores(MemoryReplayStore(clock), MemoryRateLimiter(clock))
    deferred = MemoryStores(MemoryReplayStore(clock), MemoryRateLimiter(clock))
    for key in ["k1", "k1", "k2"]:
        answer: list[Any] = []
        deferred.admit(key, 10.0, budgets).addBoth(answer.append)
        decisions = sync.admit_now(key, 10.0, budgets)
        assert answer[0] == (Admission(False, ()) if decisions is None else Admission(True, decisions))
    full = MemoryStores(MemoryReplayStore(clock, max_entries=1), MemoryRateLimiter(clock))
    full.admit_now("x", 10.0, budgets)
    with pytest.raises(StoreUnavailable):
        full.admit_now("y", 10.0, budgets)
