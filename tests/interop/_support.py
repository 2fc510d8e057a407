"""Helpers for the interop tests: the health server under test and the Node gate."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from gatewayd.health import HealthService
from gatewayd.testing.server import RunningServer
from tests.interop._clients import node_available

HEALTH_SERVICES = ["", "gateway.v1.Gateway"]


@dataclass
class HealthServer:
    health: HealthService
    server: RunningServer

    @property
    def url(self) -> str:
        return self.server.url

    def h2_streams(self) -> list[dict[int, object]]:
        return [dict(conn.streams) for conn in self.server.factory.h2_connections]

    def idle(self) -> bool:
        """No call in flight, no Watch registered, no HTTP/2 stream open."""
        return (
            not self.server.app.active
            and self.health.watcher_count() == 0
            and all(not streams for streams in self.h2_streams())
        )

    def state(self) -> str:
        return (
            f"active={len(self.server.app.active)} watchers={self.health.watcher_count()} "
            f"h2_streams={[list(s) for s in self.h2_streams()]}"
        )


def require_node() -> pytest.MarkDecorator:
    """Skip without Node and the npm packages, except in CI where their absence is a failure."""
    return pytest.mark.skipif(
        not node_available() and not os.environ.get("CI"),
        reason="node or node_modules missing: run scripts/test-setup.sh (npm ci)",
    )
