"""``BudgetPlan``: the budget keys a request spends, the IP key remembered per peer within a bound."""

from __future__ import annotations

import pytest

from gatewayd._proto.gateway.v1.gateway_pb2 import RequestEnvelope
from gatewayd.backend.rest import Session
from gatewayd.config import LimitsConfig
from gatewayd.pipeline import rate_limit
from gatewayd.pipeline.context import RequestContext
from gatewayd.pipeline.rate_limit import UNROUTED, BudgetPlan
from gatewayd.rpc.call import Call


def keys(plan: BudgetPlan, peer: str, message_type: str = "user.profile.get") -> list[str]:
    envelope = RequestEnvelope(device_session_id="ds_1", message_type=message_type)
    ctx = RequestContext(Call("/m", "grpc", {}, peer), envelope, b"", b"",
                         session=Session("ds_1", "u_1", b"k" * 32, "active"))
    return [key for key, _ in plan.budgets(ctx)]


def test_the_four_budget_keys() -> None:
    plan = BudgetPlan(LimitsConfig(), {"user.profile.get"})
    assert keys(plan, "203.0.113.5") == ["ip:203.0.113.5", "session:ds_1", "user:u_1", "type:u_1:user.profile.get"]
    assert keys(plan, "203.0.113.5", "made.up")[3] == f"type:u_1:{UNROUTED}"


def test_the_ip_key_is_remembered_within_a_bound_and_stays_right(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rate_limit, "_MAX_IP_KEYS", 2)
    plan = BudgetPlan(LimitsConfig(), set())
    peers = ["2001:db8:1:2::5", "2001:db8:1:2::9", "::ffff:198.51.100.7", "2001:db8:1:2::5"]
    expected = ["ip:2001:db8:1:2::/64", "ip:2001:db8:1:2::/64", "ip:198.51.100.7", "ip:2001:db8:1:2::/64"]
    assert [keys(plan, peer)[0] for peer in peers] == expected
    assert len(plan._ip_keys) <= 2
