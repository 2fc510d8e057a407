"""gatewayd's pytest plugin: a dev gateway and logged-in clients as fixtures.

Installed with gatewayd and loaded by pytest through the ``pytest11`` entry point
``gatewayd`` (disable it with ``-p no:gatewayd``). Every fixture name starts with
``gatewayd_``, so it cannot shadow a project's own fixtures.

- ``gatewayd_dev``: a ``DevGateway`` started on the test's reactor (pytest-twisted's),
  stopped after the test: ``.url``, ``.rest_url``, ``.gateway_keys``, ``.login()``,
  ``.publish(...)``, ``.revoke(device_session_id)``.
- ``gatewayd_client``: a ``GatewayClient`` of it, logged in as a new user over Connect;
  ``@pytest.mark.parametrize("gatewayd_client", ["grpc", "grpc-web"], indirect=True)``
  picks another protocol.
- ``gatewayd_memory``: an ``InMemoryGateway`` (no sockets, no running reactor).
- ``gatewayd_config``: config sections the gateways above start with (``{}``); override
  it in a conftest or a test module to change limits, routes or budgets.

This module is imported whenever pytest starts in an environment where gatewayd is
installed, so it imports nothing of the gateway until a fixture is used.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from gatewayd.client.client import GatewayClient
    from gatewayd.testing.dev import DevGateway, InMemoryGateway


def _blockon(fixture: str) -> Any:
    """pytest-twisted's ``blockon``: run the reactor until a Deferred fires (``fixture`` needs it)."""
    try:
        import pytest_twisted
    except ImportError:
        pytest.fail(f"{fixture} runs gatewayd on the test's reactor and needs pytest-twisted: "
                    "pip install 'gatewayd[testing]' (or use gatewayd_memory)", pytrace=False)
    return pytest_twisted.blockon


def _await(fixture: str, coroutine: Any) -> Any:
    from twisted.internet.defer import Deferred

    return _blockon(fixture)(Deferred.fromCoroutine(coroutine))


@pytest.fixture
def gatewayd_config() -> dict[str, Any]:
    """``Config.replace`` sections for the gateways of ``gatewayd_dev`` and ``gatewayd_memory``."""
    return {}


@pytest.fixture
def gatewayd_dev(tmp_path: Path, gatewayd_config: dict[str, Any]) -> Iterator[DevGateway]:
    """A dev gateway and its reference backend on the test's reactor, stopped after the test."""
    from gatewayd.testing.dev import DevGateway

    dev: DevGateway = _await("gatewayd_dev", DevGateway.start(str(tmp_path / "gatewayd-dev"), **gatewayd_config))
    try:
        yield dev
    finally:
        _await("gatewayd_dev", dev.stop())


@pytest.fixture
def gatewayd_client(gatewayd_dev: DevGateway, request: pytest.FixtureRequest) -> GatewayClient:
    """A ``GatewayClient`` of ``gatewayd_dev`` logged in as a new user (Connect unless parametrized)."""
    protocol = getattr(request, "param", "connect")
    client: GatewayClient = _await("gatewayd_client", gatewayd_dev.login(protocol=protocol))
    return client


@pytest.fixture
def gatewayd_memory(tmp_path: Path, gatewayd_config: dict[str, Any]) -> Iterator[InMemoryGateway]:
    """A dev gateway on a ``MemoryNetwork``, closed after the test."""
    from gatewayd.testing.dev import InMemoryGateway

    gateway = InMemoryGateway.open(str(tmp_path / "gatewayd-memory"), **gatewayd_config)
    try:
        yield gateway
    finally:
        gateway.close()
