"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import defer

from gatewayd.testing.harness import Harness


@pytest.fixture
def harness() -> Iterator[Harness]:
    """A ``Harness`` (test server and raw clients), closed after the test."""
    h = Harness()
    yield h
    pytest_twisted.blockon(defer.ensureDeferred(h.close()))
