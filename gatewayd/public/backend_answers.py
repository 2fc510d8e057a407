"""What a client is told of the backend's answer to a public auth call: only what the contract names.

A success passes on exactly the fields PROTOCOL.md section 4 names; a 4xx
passes on its status with an error code from the known set and a message
only when it is short, single-line, printable text (else a stock one); any
other field, and any 5xx or unexpected status, stays inside (503).
"""

from __future__ import annotations

import json
import re
from typing import Any

from gatewayd.pipeline.result_codes import result_code_for_status
from gatewayd.public.abuse import RequestKind
from gatewayd.public.validation import PublicError
from gatewayd.rpc.codes import Code

#: The fields each successful answer passes on (all strings).
SUCCESS_FIELDS: dict[RequestKind, tuple[str, ...]] = {
    RequestKind.SEND_EMAIL_CODE: ("challenge_id",),
    RequestKind.CONFIRM_EMAIL_CODE: ("device_session_id", "user_id"),
}
MAX_FIELD_CHARS = 256
MAX_MESSAGE_CHARS = 160

_KNOWN_CODES = frozenset(code.connect_name for code in Code if code is not Code.OK)
_STOCK_MESSAGES = {
    "invalid_argument": "the request was refused",
    "unauthenticated": "wrong or expired code",
    "permission_denied": "not allowed",
    "not_found": "unknown or expired challenge",
    "resource_exhausted": "too many attempts; retry later",
}
_SAFE_MESSAGE = re.compile(rf"[ -~]{{1,{MAX_MESSAGE_CHARS}}}")
# Text that smells of internals (tracebacks, source paths, exception reprs) never leaves.
_INTERNALS = re.compile(r"Traceback|File \"|Error\(|Exception|\.py\b|0x[0-9a-fA-F]{6,}|\bat line\b")



def unavailable() -> PublicError:
    """The answer when the backend cannot be reached, or answered what it must not."""
    return PublicError(503, "unavailable", "backend unavailable; retry later")


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def success_body(kind: RequestKind, body: bytes) -> bytes:
    """The contract's fields of a 2xx answer, re-encoded; ``PublicError(503)`` if they are not there."""
    data = _json_object(body)
    if data is None:
        raise unavailable()
    out = {}
    for name in SUCCESS_FIELDS[kind]:
        value = data.get(name)
        if not isinstance(value, str) or not 0 < len(value) <= MAX_FIELD_CHARS:
            raise unavailable()
        out[name] = value
    return json.dumps(out, separators=(",", ":")).encode()


def safe_message(message: Any, code: str) -> str:
    """``message`` when it is safe to show a client, else the stock message for ``code``."""
    if isinstance(message, str) and _SAFE_MESSAGE.fullmatch(message) and not _INTERNALS.search(message):
        return message
    return _STOCK_MESSAGES.get(code, "the request was refused")


def client_error(status: int, body: bytes, retry_after: str | None = None) -> PublicError:
    """The sanitized ``PublicError`` for a backend 4xx answer (its status kept)."""
    data = _json_object(body) or {}
    error = data.get("error")
    error = error if isinstance(error, dict) else {}
    code = error.get("code")
    if not isinstance(code, str) or code not in _KNOWN_CODES:
        code = result_code_for_status(status)  # a 4xx: the table's code, else invalid_argument
    valid_retry_after = retry_after and retry_after.isdigit() and len(retry_after) < 8
    retry_after_s = int(retry_after) if retry_after and valid_retry_after else None
    if status == 429 and retry_after_s is None:
        retry_after_s = 1
    return PublicError(status, code, safe_message(error.get("message"), code), retry_after_s=retry_after_s)


def answer_error(status: int, body: bytes, retry_after: str | None = None) -> PublicError:
    """The ``PublicError`` a non-2xx backend answer becomes: its 4xx sanitized, anything else 503."""
    if 400 <= status <= 499:
        return client_error(status, body, retry_after)
    return unavailable()
