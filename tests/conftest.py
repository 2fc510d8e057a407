"""Shared fixtures for the test suite (gatewayd's pytest plugin adds the ``gatewayd_*`` ones)."""

from collections.abc import Iterator

import pytest

from gatewayd.testing.redis import RedisServer


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A started private ``RedisServer``, closed after the test."""
    with RedisServer() as server:
        yield server
