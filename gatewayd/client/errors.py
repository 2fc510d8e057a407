"""What the client raises: RPC statuses, public REST errors, failed verification."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from google.protobuf.message import Message

from gatewayd.rpc.codes import Code
from gatewayd.rpc.details import retry_delay_s


class GatewayClientError(Exception):
    """Base of every error the client raises."""


class RpcCallError(GatewayClientError):
    """The call ended with a non-OK status: ``code`` (a ``Code``), the server's ``message``,
    any status ``metadata`` the protocol carried (``retry-after``...; lowercase names), and
    the error ``details`` (``google.protobuf.Any``: ``google.rpc.RetryInfo``...)."""

    def __init__(self, code: int, message: str = "", metadata: Mapping[str, str] | None = None,
                 details: Sequence[Message] = ()) -> None:
        try:
            self.code: Code | int = Code(code)
        except ValueError:
            self.code = code
        self.message = message
        self.metadata: Mapping[str, str] = dict(metadata or {})
        self.details: tuple[Message, ...] = tuple(details)
        super().__init__(str(self))

    @property
    def retry_after(self) -> float | None:
        """Seconds to wait before retrying, when the gateway said: its ``RetryInfo`` detail,
        else its ``retry-after`` metadata (whole seconds); ``None`` otherwise."""
        delay = retry_delay_s(self.details)
        if delay is not None:
            return delay
        try:
            return float(self.metadata["retry-after"])
        except (KeyError, ValueError):
            return None

    @property
    def code_name(self) -> str:
        """The code's lowercase Connect spelling (``"unauthenticated"``), or its number if unknown."""
        return self.code.connect_name if isinstance(self.code, Code) else str(self.code)

    def __str__(self) -> str:
        text = f"{self.code_name}: {self.message}" if self.message else self.code_name
        retry_after = self.retry_after
        if retry_after is None:
            return text
        seconds = f"{retry_after:.3f}".rstrip("0").rstrip(".")  # milliseconds at most: "1.2", "3"
        return f"{text} (retry after {seconds} s)"


class GatewayUnreachableError(RpcCallError):
    """The gateway could not be reached, or the connection broke: UNAVAILABLE, from the client side."""

    def __init__(self, message: str) -> None:
        super().__init__(Code.UNAVAILABLE, message)


class PublicApiError(GatewayClientError):
    """The public REST surface answered with an error: HTTP ``status``, ``code`` and ``message``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        self.status = status
        self.code = code
        self.message = message
        super().__init__(f"HTTP {status} {code}: {message}" if message else f"HTTP {status} {code}")


class VerificationError(GatewayClientError):
    """A response or event failed verification (signature, hash, key, request_id): do not trust it."""


class NotLoggedInError(GatewayClientError):
    """A call needs a device session, and there is none: log in first."""
