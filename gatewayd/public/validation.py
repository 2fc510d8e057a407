"""Strict shapes for the public auth bodies (PROTOCOL.md section 4), and the public error type.

A body is accepted only when it is UTF-8 JSON holding one object with exactly
the known fields, each a string of a sane length and charset: no extra or
missing field, no duplicate key, no ``NaN``, no nesting bomb. What passes is
re-encoded canonically before it is forwarded, so the backend never sees the
client's bytes, only values this module vouched for.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

MAX_EMAIL_CHARS = 254
MAX_EMAIL_LOCAL_CHARS = 64
MAX_DOMAIN_LABEL_CHARS = 63
PUBLIC_KEY_BYTES = 32

#: Dot-atom local part of RFC 5322 (ASCII), no quoted strings: "sane", not exhaustive.
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
#: A DNS label: letters, digits, inner hyphens (punycode ``xn--`` labels included).
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?")
#: The charset of device_session_id and request_id (PROTOCOL.md section 2), used for challenge ids too.
CHALLENGE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
#: Email codes: short alphanumerics (the reference backend issues six digits).
EMAIL_CODE = re.compile(r"[A-Za-z0-9]{1,32}")
#: Standard base64 alphabet, padded; 32 bytes encode to 44 characters.
_BASE64 = re.compile(r"[A-Za-z0-9+/]{43}=")


class PublicError(Exception):
    """An answer of the public surface other than success: HTTP ``status`` and a JSON error body.

    ``code`` is a lowercase status name (``invalid_argument``...); ``message``
    is short and safe to show anyone. ``retry_after_s`` (whole seconds) adds
    a ``Retry-After`` header.
    """

    def __init__(self, status: int, code: str, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s

    def body(self) -> bytes:
        return error_body(self.code, self.message)


def error_body(code: str, message: str) -> bytes:
    """``{"error": {"code": code, "message": message}}`` as compact UTF-8 JSON."""
    return json.dumps({"error": {"code": code, "message": message}}, separators=(",", ":")).encode()


def invalid(message: str) -> PublicError:
    return PublicError(400, "invalid_argument", message)


@dataclass(frozen=True, slots=True)
class SendEmailCode:
    """A validated ``send-email-code`` body."""

    email: str

    def as_json(self) -> bytes:
        return _dumps({"email": self.email})


@dataclass(frozen=True, slots=True)
class ConfirmEmailCode:
    """A validated ``confirm-email-code`` body."""

    challenge_id: str
    code: str
    client_public_key: str

    def as_json(self) -> bytes:
        key = self.client_public_key
        return _dumps({"challenge_id": self.challenge_id, "code": self.code, "client_public_key": key})


def _dumps(value: dict[str, str]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def check_content_type(value: str | None) -> None:
    """Accept ``application/json`` with any parameters (``; charset=utf-8``); else 415."""
    media_type = (value or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise PublicError(415, "invalid_argument", "Content-Type must be application/json")


def check_size(body: bytes, max_body_bytes: int) -> None:
    """Refuse a body over ``max_body_bytes`` with 413."""
    if len(body) > max_body_bytes:
        raise PublicError(413, "resource_exhausted", f"request body over {max_body_bytes} bytes")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError("duplicate key")
        result[key] = value
    return result


def parse_object(body: bytes, fields: tuple[str, ...]) -> dict[str, str]:
    """The JSON object in ``body`` with exactly ``fields``, each a string; else 400."""
    try:
        text = body.decode("utf-8")
        data = json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise invalid("body is not a JSON object") from None
    if not isinstance(data, dict):
        raise invalid("body is not a JSON object")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        # Names of unknown fields are the client's text: say how many, not which.
        raise invalid(f"unknown field(s); expected exactly: {', '.join(fields)}")
    for name in fields:
        if name not in data:
            raise invalid(f"{name} is required")
        if not isinstance(data[name], str):
            raise invalid(f"{name} must be a string")
    return data


def valid_email(email: str) -> bool:
    """A sane ASCII address: ``local@domain``, dot-atom local part, at least two DNS labels."""
    if len(email) > MAX_EMAIL_CHARS or email.count("@") != 1:
        return False
    local, domain = email.split("@")
    if not 1 <= len(local) <= MAX_EMAIL_LOCAL_CHARS or not _LOCAL.fullmatch(local):
        return False
    labels = domain.split(".")
    if len(labels) < 2:
        return False
    return all(len(label) <= MAX_DOMAIN_LABEL_CHARS and _LABEL.fullmatch(label) for label in labels)


def valid_public_key(value: str) -> bool:
    """Standard padded base64 of exactly 32 bytes."""
    if not _BASE64.fullmatch(value):
        return False
    try:
        return len(base64.b64decode(value, validate=True)) == PUBLIC_KEY_BYTES
    except (binascii.Error, ValueError):
        return False


def parse_send_email_code(body: bytes) -> SendEmailCode:
    """A validated ``{"email"}`` body; ``PublicError(400)`` otherwise."""
    email = parse_object(body, ("email",))["email"]
    if not valid_email(email):
        raise invalid(f"email must be a valid address of at most {MAX_EMAIL_CHARS} characters")
    return SendEmailCode(email)


def parse_confirm_email_code(body: bytes) -> ConfirmEmailCode:
    """A validated ``{"challenge_id", "code", "client_public_key"}`` body; ``PublicError(400)`` otherwise."""
    data = parse_object(body, ("challenge_id", "code", "client_public_key"))
    if not CHALLENGE_ID.fullmatch(data["challenge_id"]):
        raise invalid("challenge_id must be 1 to 128 characters of [A-Za-z0-9._:-]")
    if not EMAIL_CODE.fullmatch(data["code"]):
        raise invalid("code must be 1 to 32 letters or digits")
    if not valid_public_key(data["client_public_key"]):
        raise invalid("client_public_key must be standard base64 of a 32-byte Ed25519 key")
    return ConfirmEmailCode(data["challenge_id"], data["code"], data["client_public_key"])
