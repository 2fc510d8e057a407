"""PROTOCOL.md section 5: a backend's HTTP status as a result code (``ok``, ``not_found``...).

One table for both surfaces: the signed ExecuteCommandResponse's ``result_code`` and the
error code the public REST API passes on when a backend 4xx carries no known code.
"""

from __future__ import annotations

_RESULT_CODES = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    409: "already_exists",
    412: "failed_precondition",
    429: "resource_exhausted",
    501: "unimplemented",
    503: "unavailable",
    504: "deadline_exceeded",
}


def result_code_for_status(status: int) -> str:
    """``ok`` for 2xx, the table's code, other 4xx ``invalid_argument``, anything else ``internal``.

    The protocol names 5xx as ``internal``; 1xx and 3xx (a backend that redirects)
    are the backend misbehaving too, so they are ``internal`` as well.
    """
    if 200 <= status < 300:
        return "ok"
    code = _RESULT_CODES.get(status)
    if code is not None:
        return code
    return "invalid_argument" if 400 <= status < 500 else "internal"


__all__ = ["result_code_for_status"]
