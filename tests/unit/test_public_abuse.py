"""The request classifier, budget keys and the AbuseGuard, on an in-memory rate store and a Clock."""

from __future__ import annotations

import hashlib

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from gatewayd.config import Budget, PublicConfig
from gatewayd.public.abuse import (
    AbuseGuard,
    RequestKind,
    challenge_key,
    charges,
    classify,
    email_key,
    ip_key,
    retry_after_seconds,
)
from gatewayd.public.validation import ConfirmEmailCode, PublicError, SendEmailCode
from gatewayd.stores.base import RateDecision, StoreUnavailable
from gatewayd.stores.memory import MemoryRateLimiter

KEY = "A" * 43 + "="


def test_classifier_tells_the_auth_requests_apart() -> None:
    assert classify("/api/v1/public/auth/send-email-code") is RequestKind.SEND_EMAIL_CODE
    assert classify("/api/v1/public/auth/confirm-email-code") is RequestKind.CONFIRM_EMAIL_CODE
    for other in ("/api/v1/public/gateway-keys", "/healthz", "/api/v1/public/auth/send-email-code/", ""):
        assert classify(other) is None


def test_keys_are_namespaced_and_never_hold_an_email_in_the_clear() -> None:
    assert ip_key("203.0.113.5") == "pub:ip:203.0.113.5"
    assert ip_key("2001:db8:1:2:3:4:5:6") == ip_key("2001:db8:1:2:ffff::1") == "pub:ip:2001:db8:1:2::/64"
    assert ip_key("2001:db8:1:3::1") != ip_key("2001:db8:1:2::1")
    assert ip_key("::ffff:203.0.113.5") == "pub:ip:203.0.113.5"
    assert ip_key("not-an-ip").startswith("pub:ip:?")
    digest = hashlib.sha256(b"alice@example.com").hexdigest()
    assert email_key("Alice@Example.COM") == email_key("alice@example.com") == f"pub:email:{digest}"
    assert "alice" not in email_key("alice@example.com")
    assert challenge_key("ch_1") == "pub:challenge:" + hashlib.sha256(b"ch_1").hexdigest()


def test_each_kind_has_its_own_budgets() -> None:
    config = PublicConfig()
    send = charges(RequestKind.SEND_EMAIL_CODE, "203.0.113.5", SendEmailCode("a@b.co"), config)
    assert [(c.key, c.budget) for c in send] == [
        ("pub:ip:203.0.113.5", config.login_ip),
        (email_key("a@b.co"), config.send_email),
    ]
    confirm = charges(RequestKind.CONFIRM_EMAIL_CODE, "203.0.113.5", ConfirmEmailCode("ch", "1", KEY), config)
    assert [(c.key, c.budget) for c in confirm] == [
        ("pub:ip:203.0.113.5", config.login_ip),
        (challenge_key("ch"), config.confirm_challenge),
    ]


@pytest.mark.parametrize(("seconds", "header"), [(0.0, 1), (0.001, 1), (1.0, 1), (1.0001, 2), (59.5, 60)])
def test_retry_after_rounds_up_to_whole_seconds(seconds: float, header: int) -> None:
    assert retry_after_seconds(seconds) == header


def _outcome(d: Deferred[None]) -> PublicError | None:
    result: list[object] = []
    d.addBoth(result.append)
    (value,) = result
    if value is None:
        return None
    assert isinstance(value.value, PublicError)  # type: ignore[attr-defined]
    return value.value  # type: ignore[attr-defined]


def test_guard_refuses_with_retry_after_and_recovers_with_time() -> None:
    clock = Clock()
    config = PublicConfig(login_ip=Budget(rate=0.5, burst=2), send_email=Budget(rate=100, burst=100))
    guard = AbuseGuard(MemoryRateLimiter(clock), config)
    request = SendEmailCode("a@b.co")
    assert _outcome(guard.admit(RequestKind.SEND_EMAIL_CODE, "203.0.113.5", request)) is None
    assert _outcome(guard.admit(RequestKind.SEND_EMAIL_CODE, "203.0.113.5", request)) is None
    refused = _outcome(guard.admit(RequestKind.SEND_EMAIL_CODE, "203.0.113.5", request))
    assert refused is not None
    assert (refused.status, refused.code, refused.retry_after_s) == (429, "resource_exhausted", 2)
    assert _outcome(guard.admit(RequestKind.SEND_EMAIL_CODE, "203.0.113.6", request)) is None
    clock.advance(2.0)
    assert _outcome(guard.admit(RequestKind.SEND_EMAIL_CODE, "203.0.113.5", request)) is None


def test_an_ip_refusal_spends_nothing_of_the_email_budget() -> None:
    clock = Clock()
    config = PublicConfig(login_ip=Budget(rate=0.001, burst=1), send_email=Budget(rate=0.001, burst=1))
    guard = AbuseGuard(MemoryRateLimiter(clock), config)
    assert _outcome(guard.admit(RequestKind.SEND_EMAIL_CODE, "203.0.113.5", SendEmailCode("x@b.co"))) is None
    refused = _outcome(guard.admit(RequestKind.SEND_EMAIL_CODE, "203.0.113.5", SendEmailCode("y@b.co")))
    assert refused is not None and refused.status == 429
    # y@b.co's budget is intact: another IP may still send to it.
    assert _outcome(guard.admit(RequestKind.SEND_EMAIL_CODE, "203.0.113.6", SendEmailCode("y@b.co"))) is None


class _Failing:
    def __init__(self, error: Exception) -> None:
        self.error = error

    def consume(self, key: str, budget: Budget, cost: int = 1) -> Deferred[RateDecision]:
        return fail(self.error)


@pytest.mark.parametrize("error", [StoreUnavailable("down"), ConnectionError("reset")])
def test_guard_fails_closed_when_the_store_fails(error: Exception) -> None:
    guard = AbuseGuard(_Failing(error), PublicConfig())
    refused = _outcome(
        guard.admit(RequestKind.CONFIRM_EMAIL_CODE, "203.0.113.5", ConfirmEmailCode("c", "1", KEY))
    )
    assert refused is not None and (refused.status, refused.code) == (503, "unavailable")
