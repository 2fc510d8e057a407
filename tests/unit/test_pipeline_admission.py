"""Stages 5 (replay) and 6 (rate limit) share one store call; the outcome is theirs in order.
And the default budgets of PROTOCOL.md section 7, on a Clock."""

from __future__ import annotations

import dataclasses

from gatewayd.config import Budget, Config, LimitsConfig
from gatewayd.devmode import dev_config
from gatewayd.rpc.codes import Code
from tests.unit.test_pipeline_stages import GENEROUS, Device, Rig


def tight(**budgets: Budget) -> LimitsConfig:
    return dataclasses.replace(GENEROUS, **budgets)


def test_a_replayed_request_is_refused_before_any_budget_is_charged() -> None:
    rig = Rig(limits=tight(session=Budget(rate=0.01, burst=2)))
    first = rig.device.command(request_id="r-1")
    rig.execute(first)
    for _ in range(5):
        assert rig.reject(first).code == Code.ALREADY_EXISTS
    # Had the replays been charged, the session's second unit would be gone.
    assert rig.execute(rig.device.command(request_id="r-2")).envelope.result_code == "ok"
    assert rig.reject(rig.device.command(request_id="r-3")).code == Code.RESOURCE_EXHAUSTED


def test_a_request_refused_for_its_budget_has_used_its_request_id() -> None:
    rig = Rig(limits=tight(session=Budget(rate=1.0, burst=1)))
    rig.execute(rig.device.command(request_id="r-1"))
    again = rig.device.command(request_id="r-2")
    assert rig.reject(again).code == Code.RESOURCE_EXHAUSTED
    rig.clock.advance(5.0)  # the budget has refilled; the request id is still reserved
    assert rig.reject(again).code == Code.ALREADY_EXISTS
    assert rig.execute(rig.device.command(request_id="r-3")).envelope.result_code == "ok"


def test_observers_see_both_stages_with_the_deciding_one_rejecting() -> None:
    rig = Rig(limits=tight(user=Budget(rate=0.01, burst=1)), observe=True)
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


def test_a_reload_gives_the_shared_store_call_the_new_budgets() -> None:
    rig = Rig(limits=tight(ip=Budget(rate=0.01, burst=1)))
    rig.execute(rig.device.command())
    assert rig.reject(rig.device.command()).code == Code.RESOURCE_EXHAUSTED
    routes = rig.pipeline.stages[-1]._routes  # type: ignore[attr-defined]
    rig.pipeline.reconfigure(routes, tight(ip=Budget(rate=0.01, burst=50)))
    assert rig.execute(rig.device.command()).envelope.result_code == "ok"
    subscription = rig.pipeline.subscription_stages
    assert [s.name for s in subscription][-2:] == ["replay", "rate_limit"]
    assert subscription[-2] is rig.pipeline.stages[-3] and subscription[-1] is rig.pipeline.stages[-2]


# --- default budgets (PROTOCOL.md section 7) ----------------------------------------------------------


def test_one_session_calling_one_message_type_100_times_a_second_for_5_s_is_never_refused() -> None:
    rig = Rig(limits=LimitsConfig())
    for i in range(500):
        rig.clock.advance(0.01)
        response = rig.execute(rig.device.command("user.profile.get", b"", request_id=f"r-{i}"))
        assert response.envelope.result_code == "ok", i
    assert len(rig.backend.calls) == 500


def test_dev_mode_lets_2000_calls_a_second_through_from_one_ip() -> None:
    limits = dev_config(Config(), None).limits
    assert limits.ip.rate >= 2000
    rig = Rig(limits=limits)
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
