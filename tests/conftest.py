"""Shared fixtures for the test suite."""

from gatewayd.testing.redis import redis_server  # noqa: F401  (fixture: a private redis-server)
