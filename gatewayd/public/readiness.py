"""Readiness checks for ``/readyz``: small callables answering a Deferred[bool] that never errbacks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred

#: A session id no backend issues (ids are opaque, but this one is only ever a probe).
PROBE_SESSION_ID = "gatewayd-readiness-probe"


class _SessionLookup(Protocol):
    def get_session(self, device_session_id: str) -> Deferred[Any]: ...


def backend_reachable(client: _SessionLookup) -> Callable[[], Deferred[bool]]:
    """Ready when the backend answers a session lookup at all (404 for the probe id is the usual answer)."""

    def check() -> Deferred[bool]:
        return client.get_session(PROBE_SESSION_ID).addCallbacks(lambda _: True, lambda _: False)

    return check
