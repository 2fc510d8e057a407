"""Public auth budgets over real sockets: per IP (X-Forwarded-For believed only from trusted
proxies), per email across IPs, per challenge across IPs, and shared by two gateways through a
private redis-server."""

from __future__ import annotations

import json

import pytest_twisted

from gatewayd.config import Budget, PublicConfig
from gatewayd.testing.public import Answer, PublicHarness, h2c, http1
from gatewayd.testing.redis import RedisServer, ready, redis_stores

SEND = "/api/v1/public/auth/send-email-code"
CONFIRM = "/api/v1/public/auth/confirm-email-code"
JSON = {"Content-Type": "application/json"}
KEY = "A" * 43 + "="
ROOMY = Budget(rate=0.001, burst=1000)
SLOW = 0.001  # one per 1000 s: a spent budget stays spent for the test's life


def send_body(email: str) -> bytes:
    return json.dumps({"email": email}).encode()


async def send(h: PublicHarness, email: str, ip: str | None = None, *, over_h2: bool = False) -> Answer:
    headers = {**JSON, **({"X-Forwarded-For": ip} if ip else {})}
    return await (h2c if over_h2 else http1)(h.port, "POST", SEND, headers, send_body(email))


def assert_throttled(answer: Answer) -> int:
    assert answer.status == 429, answer
    assert answer.json()["error"]["code"] == "resource_exhausted"
    retry_after = answer.headers["retry-after"]
    assert retry_after.isdigit(), retry_after
    return int(retry_after)


@pytest_twisted.ensureDeferred
async def test_burst_from_one_ip_is_throttled_other_ips_are_not() -> None:
    config = PublicConfig(login_ip=Budget(rate=SLOW, burst=3), send_email=ROOMY)
    h = await PublicHarness.start(config=config, trusted_proxies=["127.0.0.1"])
    try:
        for i in range(3):
            assert (await send(h, f"user{i}@example.com", "203.0.113.7", over_h2=i == 1)).status == 200
        retry_after = assert_throttled(await send(h, "user9@example.com", "203.0.113.7"))
        # The fourth unit is due one emission interval (1000 s) after the burst, rounded up.
        assert 998 <= retry_after <= 1000
        assert_throttled(await send(h, "user9@example.com", "203.0.113.7", over_h2=True))
        assert (await send(h, "user9@example.com", "198.51.100.20")).status == 200
        assert (await send(h, "user10@example.com", "198.51.100.21", over_h2=True)).status == 200
        assert len(h.backend_received) == 5
    finally:
        await h.stop()


@pytest_twisted.ensureDeferred
async def test_ip_budget_covers_both_kinds_of_login_request() -> None:
    config = PublicConfig(login_ip=Budget(rate=SLOW, burst=2), send_email=ROOMY, confirm_challenge=ROOMY)
    h = await PublicHarness.start(config=config, trusted_proxies=["127.0.0.1"])
    try:
        sent = await send(h, "a@example.com", "203.0.113.9")
        challenge = sent.json()["challenge_id"]
        body = json.dumps({"challenge_id": challenge, "code": "000000", "client_public_key": KEY}).encode()
        headers = {**JSON, "X-Forwarded-For": "203.0.113.9"}
        assert (await http1(h.port, "POST", CONFIRM, headers, body)).status == 200
        assert_throttled(await http1(h.port, "POST", CONFIRM, headers, body))
        assert_throttled(await send(h, "b@example.com", "203.0.113.9"))
        assert h.backend_received == [("POST", SEND), ("POST", CONFIRM)]
    finally:
        await h.stop()


@pytest_twisted.ensureDeferred
async def test_email_budget_holds_across_ips_and_letter_case() -> None:
    config = PublicConfig(login_ip=ROOMY, send_email=Budget(rate=SLOW, burst=2))
    h = await PublicHarness.start(config=config, trusted_proxies=["127.0.0.1"])
    try:
        assert (await send(h, "victim@example.com", "203.0.113.1")).status == 200
        assert (await send(h, "Victim@Example.COM", "203.0.113.2", over_h2=True)).status == 200
        assert_throttled(await send(h, "victim@example.com", "203.0.113.3"))
        assert_throttled(await send(h, "VICTIM@example.com", "203.0.113.4", over_h2=True))
        assert (await send(h, "someone-else@example.com", "203.0.113.3")).status == 200
        assert len(h.backend_received) == 3
    finally:
        await h.stop()


@pytest_twisted.ensureDeferred
async def test_challenge_budget_holds_across_ips() -> None:
    config = PublicConfig(login_ip=ROOMY, send_email=ROOMY, confirm_challenge=Budget(rate=SLOW, burst=2))
    h = await PublicHarness.start(config=config, trusted_proxies=["127.0.0.1"])
    try:
        challenge = (await send(h, "guessed@example.com")).json()["challenge_id"]
        for i, expected in enumerate([401, 401, 429, 429]):
            guess = json.dumps(
                {"challenge_id": challenge, "code": f"99999{i}", "client_public_key": KEY}
            ).encode()
            headers = {**JSON, "X-Forwarded-For": f"198.51.100.{i + 1}"}
            answer = await http1(h.port, "POST", CONFIRM, headers, guess)
            assert answer.status == expected, answer
        assert h.backend_received == [("POST", SEND), ("POST", CONFIRM), ("POST", CONFIRM)]
        # Another challenge has its own budget.
        other = (await send(h, "other@example.com")).json()["challenge_id"]
        body = json.dumps({"challenge_id": other, "code": "000000", "client_public_key": KEY}).encode()
        assert (await http1(h.port, "POST", CONFIRM, JSON, body)).status == 200
    finally:
        await h.stop()


@pytest_twisted.ensureDeferred
async def test_forwarded_for_is_ignored_from_an_untrusted_peer() -> None:
    config = PublicConfig(login_ip=Budget(rate=SLOW, burst=2), send_email=ROOMY)
    # A trusted network that is not the test's peer (127.0.0.1): its X-Forwarded-For means nothing.
    h = await PublicHarness.start(config=config, trusted_proxies=["192.0.2.0/24"])
    try:
        assert (await send(h, "a@example.com", "203.0.113.1")).status == 200
        assert (await send(h, "b@example.com", "203.0.113.2", over_h2=True)).status == 200
        # Every spoofed address counts against the real peer.
        assert_throttled(await send(h, "c@example.com", "203.0.113.3"))
        assert_throttled(await send(h, "d@example.com", "203.0.113.4, 198.51.100.1", over_h2=True))
        assert_throttled(await send(h, "e@example.com"))
        assert len(h.backend_received) == 2
    finally:
        await h.stop()


@pytest_twisted.ensureDeferred
async def test_forwarded_for_is_believed_from_a_trusted_peer() -> None:
    config = PublicConfig(login_ip=Budget(rate=SLOW, burst=2), send_email=ROOMY)
    h = await PublicHarness.start(config=config, trusted_proxies=["127.0.0.0/8"])
    try:
        for i in range(6):
            assert (await send(h, f"u{i}@example.com", f"203.0.113.{i}", over_h2=i % 2 == 1)).status == 200
        # The last untrusted hop is the client: a client cannot escape by prepending addresses.
        assert (await send(h, "x@example.com", "1.1.1.1, 203.0.113.50")).status == 200
        assert (await send(h, "y@example.com", "2.2.2.2, 203.0.113.50")).status == 200
        assert_throttled(await send(h, "z@example.com", "3.3.3.3, 203.0.113.50"))
        # No header at all from the trusted proxy: the proxy itself is the client.
        assert (await send(h, "p@example.com")).status == 200
        assert (await send(h, "q@example.com")).status == 200
        assert_throttled(await send(h, "r@example.com"))
    finally:
        await h.stop()


# -- shared through Redis -------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_two_gateways_share_budgets_through_redis(redis_server: RedisServer) -> None:
    stores_a, stores_b = redis_stores(redis_server.url, "gw:"), redis_stores(redis_server.url, "gw:")
    config = PublicConfig(login_ip=Budget(rate=SLOW, burst=3), send_email=Budget(rate=SLOW, burst=2))
    a = b = None
    try:
        await ready(stores_a, stores_b)
        a = await PublicHarness.start(config=config, rate=stores_a.rate, trusted_proxies=["127.0.0.1"])
        b = await PublicHarness.start(config=config, rate=stores_b.rate, trusted_proxies=["127.0.0.1"])
        # Per email, across gateways and IPs.
        assert (await send(a, "shared@example.com", "203.0.113.1")).status == 200
        assert (await send(b, "Shared@example.com", "203.0.113.2", over_h2=True)).status == 200
        assert_throttled(await send(a, "shared@example.com", "203.0.113.3"))
        assert_throttled(await send(b, "shared@example.com", "203.0.113.4"))
        # Per IP, across gateways: 203.0.113.1 spent one on a, two more, then none anywhere.
        assert (await send(b, "n1@example.com", "203.0.113.1")).status == 200
        assert (await send(a, "n2@example.com", "203.0.113.1")).status == 200
        assert_throttled(await send(b, "n3@example.com", "203.0.113.1"))
        assert_throttled(await send(a, "n3@example.com", "203.0.113.1", over_h2=True))
        assert len(a.backend_received) + len(b.backend_received) == 4

        keys = await stores_a.pool.execute("KEYS", "*")
        text = " ".join(k.decode() if isinstance(k, bytes) else k for k in keys)
        assert "gw:rate:pub:ip:203.0.113.1" in text
        assert "gw:rate:pub:email:" in text
        assert "shared" not in text.lower() and "example.com" not in text
    finally:
        for harness in (a, b):
            if harness is not None:
                await harness.stop()
        await stores_a.close()
        await stores_b.close()


@pytest_twisted.ensureDeferred
async def test_redis_down_fails_closed(redis_server: RedisServer) -> None:
    stores = redis_stores(redis_server.url, "gw:")
    h = None
    try:
        await ready(stores)
        h = await PublicHarness.start(rate=stores.rate)
        assert (await send(h, "a@example.com")).status == 200
        redis_server.stop()
        answer = await send(h, "b@example.com")
        assert answer.status == 503
        assert answer.json()["error"] == {
            "code": "unavailable",
            "message": "rate limit store unavailable; retry later",
        }
        assert h.backend_received == [("POST", SEND)]
    finally:
        if h is not None:
            await h.stop()
        await stores.close()
