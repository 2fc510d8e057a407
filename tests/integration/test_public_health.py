"""``/healthz`` and ``/readyz`` over both HTTP versions, with real and scripted dependencies."""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from gatewayd.config import StoresConfig
from gatewayd.public.app import ReadinessCheck
from gatewayd.stores import build_stores
from gatewayd.testing.public import PublicHarness, h2c, http1
from gatewayd.testing.redis import RedisServer


@pytest.mark.parametrize("over_h2", [False, True], ids=["http1", "h2c"])
@pytest_twisted.ensureDeferred
async def test_healthz(over_h2: bool) -> None:
    h = await PublicHarness.start(readiness={"stores": False})
    try:
        answer = await (h2c if over_h2 else http1)(h.port, "GET", "/healthz")
        assert answer.status == 200
        assert answer.json() == {"status": "ok"}
        assert answer.headers["content-type"] == "application/json"
    finally:
        await h.stop()


@pytest.mark.parametrize("over_h2", [False, True], ids=["http1", "h2c"])
@pytest_twisted.ensureDeferred
async def test_readyz_ready_when_every_dependency_is(over_h2: bool) -> None:
    checks: dict[str, ReadinessCheck] = {
        "stores": True,
        "push": lambda: deferLater(reactor, 0.01, lambda: True),
        "metrics": lambda: True,
    }
    h = await PublicHarness.start(readiness=checks, check_backend=True)
    try:
        answer = await (h2c if over_h2 else http1)(h.port, "GET", "/readyz")
        assert answer.status == 200, answer
        assert answer.json() == {
            "status": "ready",
            "checks": {"stores": "ok", "push": "ok", "metrics": "ok", "backend": "ok"},
        }
        assert answer.headers["cache-control"] == "no-store"
    finally:
        await h.stop()


@pytest_twisted.ensureDeferred
async def test_readyz_names_each_failing_dependency_and_times_out_quickly() -> None:
    def boom() -> bool:
        raise RuntimeError("dependency exploded")

    never: Deferred[bool] = Deferred()
    checks: dict[str, ReadinessCheck] = {"stores": lambda: never, "push": lambda: False, "metrics": boom}
    h = await PublicHarness.start(readiness=checks, readiness_timeout_s=0.2, check_backend=True)
    try:
        start = time.monotonic()
        answer = await http1(h.port, "GET", "/readyz")
        assert time.monotonic() - start < 2.0
        assert answer.status == 503
        assert answer.json() == {
            "status": "not_ready",
            "checks": {"stores": "timeout", "push": "not_ready", "metrics": "error", "backend": "ok"},
        }
        assert b"exploded" not in answer.body
        # healthz does not depend on readiness
        assert (await http1(h.port, "GET", "/healthz")).status == 200
    finally:
        await h.stop()


@pytest_twisted.ensureDeferred
async def test_readyz_follows_real_backend_and_redis(redis_server: RedisServer) -> None:
    stores = build_stores(StoresConfig(kind="redis", redis_url=redis_server.url, timeout_s=0.3), reactor)
    h = await PublicHarness.start(readiness={"stores": stores.ping}, check_backend=True, rate=stores.rate)
    try:
        deadline = time.monotonic() + 5
        while (answer := await h2c(h.port, "GET", "/readyz")).status != 200:
            assert time.monotonic() < deadline, answer
            await deferLater(reactor, 0.02)
        assert answer.json()["checks"] == {"stores": "ok", "backend": "ok"}

        redis_server.stop()
        answer = await http1(h.port, "GET", "/readyz")
        assert answer.status == 503
        assert answer.json()["checks"] == {"stores": "not_ready", "backend": "ok"}

        await h.backend_port.stopListening()
        await h.client.close()  # and drop the keep-alive connection the backend would otherwise still serve
        answer = await h2c(h.port, "GET", "/readyz")
        assert answer.status == 503
        assert answer.json() == {
            "status": "not_ready",
            "checks": {"stores": "not_ready", "backend": "not_ready"},
        }
    finally:
        await h.stop()
        await stores.close()
