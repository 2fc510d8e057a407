"""Small helpers shared by test modules of several folders (unit, integration, interop)."""

from __future__ import annotations

from typing import Any


def record_connections(factory: Any) -> list[Any]:
    """Wrap ``factory.buildProtocol``: from now on the address of each connection it builds is
    appended to the returned list (the count of connections a client or server opened)."""
    built: list[Any] = []
    build = factory.buildProtocol

    def recording(addr: Any) -> Any:
        built.append(addr)
        return build(addr)

    factory.buildProtocol = recording
    return built
