"""gRPC/Connect status codes, their Connect names, and the HTTP status -> code inference both specs share.

The code -> HTTP status table of Connect unary errors is Connect's own rule and
lives in ``rpc/protocols/connect.py``.
"""

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
        """The lowercase name Connect uses in error bodies (``"invalid_argument"``, ``"canceled"``)."""
        return _CONNECT_NAMES[self]

    @classmethod
    def from_connect_name(cls, name: str) -> Code:
        """The code for a Connect error name; unknown names are ``UNKNOWN``."""
        return _BY_CONNECT_NAME.get(name, cls.UNKNOWN)


# Connect spells the names as gRPC's constants in lowercase, except CANCELLED: "canceled".
_CONNECT_NAMES = {code: "canceled" if code is Code.CANCELLED else code.name.lower() for code in Code}
_BY_CONNECT_NAME = {name: code for code, name in _CONNECT_NAMES.items()}

# HTTP status -> code, for an HTTP error that carries no RPC status (gRPC's
# "HTTP to gRPC status code mapping"; Connect's "HTTP to Error Code" is the same).
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
