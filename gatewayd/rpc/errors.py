"""The one exception every layer uses to end a call with a status."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from google.protobuf.message import Message

from gatewayd.rpc.codes import Code


class RpcError(Exception):
    """End the call with ``code`` and a short, safe ``message``.

    ``metadata`` is sent with the status: as trailers over gRPC and gRPC-Web,
    as response headers and error ``metadata`` over Connect (for example
    ``{"retry-after": "3"}``). Keys are lowercase ASCII.

    ``details`` are protobuf messages (``google.rpc.RetryInfo``...; see
    ``rpc.details``) sent as the protocol carries them: ``grpc-status-details-bin``
    over gRPC and gRPC-Web, the error's ``details`` over Connect. Decoded on the
    client side they are ``google.protobuf.Any``.
    """

    def __init__(self, code: Code, message: str = "", metadata: Mapping[str, str] | None = None,
                 details: Sequence[Message] = ()) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.metadata: Mapping[str, str] = metadata or {}
        self.details: tuple[Message, ...] = tuple(details)

    def __repr__(self) -> str:
        return f"RpcError({self.code.name}, {self.message!r})"

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"
