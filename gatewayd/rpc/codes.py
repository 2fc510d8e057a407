"""gRPC/Connect status codes and their HTTP mapping, in one table (as connect-go keeps it)."""

from __future__ import annotations

import enum


class Code(enum.IntEnum):
    """A gRPC status code; ``connect_name`` is its Connect spelling."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @property
    def connect_name(self) -> str:
        """The lowercase name Connect uses in error bodies (``"invalid_argument"``)."""
        return _CONNECT_NAMES[self]

    @property
    def http_status(self) -> int:
        """The HTTP status of a Connect unary error with this code."""
        return _CONNECT_HTTP_STATUS[self]

    @classmethod
    def from_connect_name(cls, name: str) -> Code:
        """The code for a Connect error name; unknown names are ``UNKNOWN``."""
        return _BY_CONNECT_NAME.get(name, cls.UNKNOWN)


_CONNECT_NAMES = {code: code.name.lower() for code in Code}
_BY_CONNECT_NAME = {name: code for code, name in _CONNECT_NAMES.items()}

# The Connect protocol reference's code -> HTTP status table.
_CONNECT_HTTP_STATUS = {
    Code.OK: 200,
    Code.CANCELLED: 499,
    Code.UNKNOWN: 500,
    Code.INVALID_ARGUMENT: 400,
    Code.DEADLINE_EXCEEDED: 504,
    Code.NOT_FOUND: 404,
    Code.ALREADY_EXISTS: 409,
    Code.PERMISSION_DENIED: 403,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.FAILED_PRECONDITION: 400,
    Code.ABORTED: 409,
    Code.OUT_OF_RANGE: 400,
    Code.UNIMPLEMENTED: 501,
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DATA_LOSS: 500,
    Code.UNAUTHENTICATED: 401,
}

# HTTP status -> code, for an HTTP error that carries no RPC status (gRPC's
# "HTTP to gRPC status code mapping").
_HTTP_TO_CODE = {
    400: Code.INTERNAL,
    401: Code.UNAUTHENTICATED,
    403: Code.PERMISSION_DENIED,
    404: Code.UNIMPLEMENTED,
    429: Code.UNAVAILABLE,
    502: Code.UNAVAILABLE,
    503: Code.UNAVAILABLE,
    504: Code.UNAVAILABLE,
}


def code_for_http_status(status: int) -> Code:
    """The code a client infers from an HTTP status without RPC status."""
    return _HTTP_TO_CODE.get(status, Code.UNKNOWN)
