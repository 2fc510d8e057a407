"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_twisted
from twisted.internet import defer

from gatewayd.testing.client import Closer
from gatewayd.testing.harness import Harness


@pytest.fixture
def harness() -> Iterator[Harness]:
    """A ``Harness`` (test server and raw clients), closed after the test."""
    h = Harness()
    yield h
    pytest_twisted.blockon(defer.ensureDeferred(h.close()))


@pytest_twisted.async_yield_fixture
async def closer() -> AsyncIterator[Closer]:
    """A ``Closer``; what was handed to it is closed after the test."""
    c = Closer()
    try:
        yield c
    finally:
        await c.close()
