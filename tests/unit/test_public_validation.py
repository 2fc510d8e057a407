"""Strict shapes of the public auth bodies, and the sanitizing of backend answers."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewayd.public.abuse import RequestKind
from gatewayd.public.backend_answers import answer_error, safe_message, success_body
from gatewayd.public.validation import (
    ConfirmEmailCode,
    PublicError,
    SendEmailCode,
    check_content_type,
    check_size,
    parse_confirm_email_code,
    parse_send_email_code,
    valid_email,
    valid_public_key,
)

KEY = base64.b64encode(bytes(range(32))).decode()


@pytest.mark.parametrize(
    "value", ["application/json", "application/json; charset=utf-8", " Application/JSON ;x=y"]
)
def test_json_content_types_pass(value: str) -> None:
    check_content_type(value)


@pytest.mark.parametrize(
    "value", [None, "", "text/plain", "application/jsonx", "application/json-patch+json", "json"]
)
def test_other_content_types_are_415(value: str | None) -> None:
    with pytest.raises(PublicError) as info:
        check_content_type(value)
    assert info.value.status == 415


def test_size_limit_is_inclusive() -> None:
    check_size(b"x" * 10, 10)
    with pytest.raises(PublicError) as info:
        check_size(b"x" * 11, 10)
    assert info.value.status == 413
    assert json.loads(info.value.body())["error"]["code"] == "resource_exhausted"


@pytest.mark.parametrize(
    "email",
    [
        "a@b.co",
        "first.last+tag@sub.example.com",
        "x@xn--bcher-kva.example",
        "a" * 64 + "@example.com",
        "a@" + ".".join(["b" * 63] * 3) + ".com",
    ],
)
def test_sane_emails_pass(email: str) -> None:
    assert valid_email(email)
    assert parse_send_email_code(json.dumps({"email": email}).encode()) == SendEmailCode(email)


@pytest.mark.parametrize(
    "email",
    [
        "",
        "plain",
        "@example.com",
        "a@",
        "a@b",
        "a@@b.com",
        "a b@c.com",
        ".a@b.com",
        "a.@b.com",
        "a..b@c.com",
        "a@-b.com",
        "a@b-.com",
        "a@b..com",
        "a" * 65 + "@example.com",
        "a@" + "b" * 64 + ".com",
        "a@" + ".".join(["b" * 60] * 5),
        "é@example.com",
        "a@exämple.com",
        "a@b.com\n",
        "a\x00@b.com",
        '"quoted"@b.com',
    ],
)
def test_insane_emails_fail(email: str) -> None:
    assert not valid_email(email)
    with pytest.raises(PublicError) as info:
        parse_send_email_code(json.dumps({"email": email}).encode())
    assert info.value.status == 400


def test_email_over_254_characters_fails_even_if_well_formed() -> None:
    email = "a" * 64 + "@" + ".".join(["b" * 62] * 3) + ".com"
    assert len(email) > 254
    assert not valid_email(email)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"null",
        b"[]",
        b'"x"',
        b"{",
        b'{"email": "a@b.co",}',
        b'{"email": "a@b.co", "email": "a@b.co"}',
        b'{"email": "a@b.co", "x": null}',
        b'{"Email": "a@b.co"}',
        b'{"email": ["a@b.co"]}',
        b'{"email": 1}',
        b"\xc3\x28",
        b"[" * 100_000,
        b'{"email": NaN}',
    ],
)
def test_malformed_send_bodies_are_400(body: bytes) -> None:
    with pytest.raises(PublicError) as info:
        parse_send_email_code(body)
    assert info.value.status == 400
    assert info.value.code == "invalid_argument"


def test_confirm_round_trips_canonically() -> None:
    body = b'{ "code" : "000000", "client_public_key": "%s", "challenge_id": "ch_1" }' % KEY.encode()
    parsed = parse_confirm_email_code(body)
    assert parsed == ConfirmEmailCode("ch_1", "000000", KEY)
    assert json.loads(parsed.as_json()) == {
        "challenge_id": "ch_1",
        "code": "000000",
        "client_public_key": KEY,
    }


@pytest.mark.parametrize(
    "key",
    [
        base64.b64encode(bytes(31)).decode(),
        base64.b64encode(bytes(33)).decode(),
        KEY.rstrip("="),
        base64.urlsafe_b64encode(b"\xff" * 32).decode(),
        KEY + "=",
        " " + KEY[1:],
        "",
    ],
)
def test_public_keys_must_be_padded_standard_base64_of_32_bytes(key: str) -> None:
    assert not valid_public_key(key)


@given(st.binary(min_size=32, max_size=32))
def test_every_32_byte_key_encoded_is_valid(raw: bytes) -> None:
    assert valid_public_key(base64.b64encode(raw).decode())


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise_anything_but_public_error(body: bytes) -> None:
    for parse in (parse_send_email_code, parse_confirm_email_code):
        try:
            parse(body)
        except PublicError as e:
            assert e.status == 400


# -- backend answers ----------------------------------------------------------------------------


def test_success_passes_on_only_the_contract_fields() -> None:
    body = json.dumps({"device_session_id": "ds_1", "user_id": "usr_1", "secret": "x"}).encode()
    assert json.loads(success_body(RequestKind.CONFIRM_EMAIL_CODE, body)) == {
        "device_session_id": "ds_1",
        "user_id": "usr_1",
    }
    with pytest.raises(PublicError) as info:
        success_body(RequestKind.SEND_EMAIL_CODE, b'{"challenge_id": 5}')
    assert info.value.status == 503


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            401,
            b'{"error": {"code": "unauthenticated", "message": "wrong code"}}',
            (401, "unauthenticated", "wrong code"),
        ),
        (404, b"", (404, "not_found", "unknown or expired challenge")),
        (418, b'{"error": {"code": "teapot"}}', (418, "invalid_argument", "the request was refused")),
        (412, b'{"error": "flat"}', (412, "failed_precondition", "the request was refused")),
        (
            409,
            b'{"error": {"code": "already_exists", "message": 7}}',
            (409, "already_exists", "the request was refused"),
        ),
    ],
)
def test_backend_client_errors_keep_status_and_get_a_safe_body(
    status: int, body: bytes, expected: tuple[int, str, str]
) -> None:
    error = answer_error(status, body)
    assert (error.status, error.code, error.message) == expected


@pytest.mark.parametrize("status", [500, 501, 503, 504, 302, 101])
def test_other_backend_statuses_are_unavailable(status: int) -> None:
    error = answer_error(status, b'{"error": {"code": "internal", "message": "db down at 10.0.0.1"}}')
    assert (error.status, error.code) == (503, "unavailable")
    assert "10.0.0.1" not in error.message


@pytest.mark.parametrize(
    "message",
    [
        "Traceback (most recent call last):",
        'File "/app/x.py", line 3',
        "KeyError('x')",
        "x" * 161,
        "two\nlines",
        "ValueError: Exception in handler",
        "object at 0x7f00deadbeef",
        "naïve",
    ],
)
def test_unsafe_messages_are_replaced(message: str) -> None:
    assert safe_message(message, "not_found") == "unknown or expired challenge"


def test_backend_429_gets_a_retry_after() -> None:
    error = answer_error(429, b"{}")
    assert error.status == 429 and error.retry_after_s == 1
