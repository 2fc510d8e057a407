"""The method table: RPC paths to their message types and handlers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message

from gatewayd.rpc.call import Call, ServerStream

UnaryHandler = Callable[[Call, Any], Awaitable[Message]]
"""``handler(call, request) -> response``; raise ``RpcError`` to fail."""

StreamHandler = Callable[[Call, Any, ServerStream], Awaitable[None]]
"""``handler(call, request, stream)``; returns when the stream ends with OK,
raises ``RpcError`` to end it with that status. Cancelling the returned
Deferred (client reset, deadline) must free everything the handler holds."""


@dataclass(frozen=True, slots=True)
class Method:
    """One RPC method: exactly one of ``unary`` and ``stream`` is set.

    ``bidi``: the ``stream`` handler gets a ``RequestStream`` (rpc/bidi.py) instead of one
    request message, and request messages reach it as they arrive.
    """

    path: str
    request_type: type[Message]
    response_type: type[Message]
    unary: UnaryHandler | None = None
    stream: StreamHandler | None = None
    bidi: bool = False

    @property
    def server_streaming(self) -> bool:
        return self.stream is not None

    @property
    def service(self) -> str:
        """The fully qualified service name (``gateway.v1.Gateway``)."""
        return self.path.split("/")[1]


class MethodTable:
    """Paths (``/package.Service/Method``) to ``Method``s."""

    def __init__(self) -> None:
        self._methods: dict[str, Method] = {}

    def add(self, method: Method) -> None:
        """Register ``method``; a path is registered once."""
        if (method.unary is None) == (method.stream is None):
            raise ValueError(f"{method.path}: exactly one of unary and stream must be set")
        if method.path in self._methods:
            raise ValueError(f"{method.path} is already registered")
        self._methods[method.path] = method

    def get(self, path: str) -> Method | None:
        return self._methods.get(path)

    def services(self) -> set[str]:
        return {m.service for m in self._methods.values()}

    def __iter__(self) -> Iterator[Method]:
        return iter(self._methods.values())
