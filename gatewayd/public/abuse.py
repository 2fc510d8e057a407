"""Anti-abuse budgets for the public auth surface: which budgets a request spends, and spending them.

The classifier tells the kinds of public request apart so that each has its
own budgets (PROTOCOL.md section 4):

- every login request spends the client IP's budget (``PublicConfig.login_ip``);
- ``send-email-code`` also spends the email's (``send_email``), whatever the IP,
  so one inbox cannot be flooded from many addresses;
- ``confirm-email-code`` also spends the challenge's (``confirm_challenge``),
  so a six-digit code cannot be guessed from many addresses.

Keys are namespaced ``pub:<kind>:<id>``. Emails and challenge ids are hashed
(SHA-256 of the lowercased email; of the challenge id) so that neither ever
lands in the rate store in the clear. IPv6 clients are keyed by their /64,
the block one host usually owns, so hopping addresses inside it buys nothing.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from gatewayd.config import Budget, PublicConfig
from gatewayd.peer_address import budget_address
from gatewayd.public.validation import ConfirmEmailCode, PublicError, SendEmailCode
from gatewayd.stores.base import RateDecision, RateLimiter, StoreUnavailable

SEND_EMAIL_CODE_PATH = "/api/v1/public/auth/send-email-code"
CONFIRM_EMAIL_CODE_PATH = "/api/v1/public/auth/confirm-email-code"

_log = Logger()


class RequestKind(enum.Enum):
    """The kinds of public request that spend budgets."""

    SEND_EMAIL_CODE = SEND_EMAIL_CODE_PATH
    CONFIRM_EMAIL_CODE = CONFIRM_EMAIL_CODE_PATH

    @property
    def path(self) -> str:
        return str(self.value)


def classify(path: str) -> RequestKind | None:
    """The kind of a public request by its path; ``None`` for paths that spend no budget."""
    try:
        return RequestKind(path)
    except ValueError:
        return None


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


def ip_key(client_ip: str) -> str:
    """``pub:ip:<ip>``; an IPv6 address is keyed by its /64 network (``peer_address.budget_address``)."""
    return "pub:ip:" + budget_address(client_ip)


def email_key(email: str) -> str:
    """``pub:email:<sha256 hex of the lowercased email>``: never the address itself."""
    return "pub:email:" + _digest(email.strip().lower())


def challenge_key(challenge_id: str) -> str:
    """``pub:challenge:<sha256 hex of the challenge id>``."""
    return "pub:challenge:" + _digest(challenge_id)


@dataclass(frozen=True, slots=True)
class Charge:
    """One budget a request spends: the rate-store key and its budget."""

    key: str
    budget: Budget


def charges(
    kind: RequestKind, client_ip: str, request: SendEmailCode | ConfirmEmailCode, config: PublicConfig
) -> list[Charge]:
    """The budgets ``request`` spends, in the order they are checked (the IP's first)."""
    spent = [Charge(ip_key(client_ip), config.login_ip)]
    if kind is RequestKind.SEND_EMAIL_CODE:
        assert isinstance(request, SendEmailCode)
        spent.append(Charge(email_key(request.email), config.send_email))
    else:
        assert isinstance(request, ConfirmEmailCode)
        spent.append(Charge(challenge_key(request.challenge_id), config.confirm_challenge))
    return spent


def retry_after_seconds(retry_after_s: float) -> int:
    """``Retry-After`` is whole seconds: rounded up, and at least 1."""
    return max(1, math.ceil(retry_after_s))


class AbuseGuard:
    """Spends a public request's budgets; refuses with 429 (and Retry-After) or 503 (store down).

    Budgets are checked in order and the first denial stops: a request refused
    for its IP spends nothing of its email's budget. The rate store failing
    is a refusal too (fail closed).
    """

    def __init__(self, rate: RateLimiter, config: PublicConfig) -> None:
        self._rate = rate
        self._config = config

    @defer.inlineCallbacks
    def admit(
        self, kind: RequestKind, client_ip: str, request: SendEmailCode | ConfirmEmailCode
    ) -> Generator[Deferred[Any], Any, None]:
        """Fire when every budget allowed the request; errback ``PublicError`` otherwise."""
        for charge in charges(kind, client_ip, request, self._config):
            try:
                decision: RateDecision = yield self._rate.consume(charge.key, charge.budget)
            except StoreUnavailable:
                raise PublicError(503, "unavailable", "rate limit store unavailable; retry later") from None
            except Exception:
                # Anything else from the store is a bug or an outage: log it, and still fail closed.
                _log.failure("public: rate store failed")
                raise PublicError(503, "unavailable", "rate limit store unavailable; retry later") from None
            if not decision.allowed:
                raise PublicError(
                    429,
                    "resource_exhausted",
                    "too many requests; retry later",
                    retry_after_s=retry_after_seconds(decision.retry_after_s),
                )
