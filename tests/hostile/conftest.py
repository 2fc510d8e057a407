"""One real ``twist gatewayd --dev`` process per hostile test module, configured by its ``GATEWAY_CONFIG``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.hostile.support import GatewayProcess, run_gateway


@pytest.fixture(scope="module")
def gateway(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """The module's gateway process (TOML from the module's ``GATEWAY_CONFIG``), shared by its tests."""
    config: str = getattr(request.module, "GATEWAY_CONFIG", "")
    yield from run_gateway(tmp_path_factory.mktemp("gateway"), config)
