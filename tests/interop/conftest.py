"""Fixtures for the interop tests: gatewayd's own server on a loopback port, serving health."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_twisted

from gatewayd.health import HealthService
from gatewayd.testing.server import serve
from tests.interop._support import HEALTH_SERVICES, HealthServer


@pytest_twisted.async_yield_fixture
async def health_server() -> AsyncIterator[HealthServer]:
    health = HealthService(HEALTH_SERVICES)
    running = await serve(health.methods())
    try:
        yield HealthServer(health, running)
    finally:
        await running.stop()
