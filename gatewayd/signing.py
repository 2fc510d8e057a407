"""Signing inputs of PROTOCOL.md section 2, key ids, and the gateway's keys.

``frame(p1, ..., pn)`` prefixes each part with its length as a 4-byte
big-endian integer; strings are UTF-8, integers decimal ASCII, hashes raw.
Everything here is pure and shared by the gateway, the client and the tests.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from nacl.bindings import (
    crypto_sign,
    crypto_sign_BYTES,
    crypto_sign_open,
    crypto_sign_PUBLICKEYBYTES,
    crypto_sign_seed_keypair,
)
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey

REQUEST_CONTEXT = b"gatewayd/v1/request"
RESPONSE_CONTEXT = b"gatewayd/v1/response"
EVENT_CONTEXT = b"gatewayd/v1/event"

_LENGTH = struct.Struct(">I")


def frame(*parts: bytes) -> bytes:
    """Length-prefix and concatenate ``parts``."""
    out = bytearray()  # appending in place: no intermediate bytes per part
    pack = _LENGTH.pack
    for part in parts:
        out += pack(len(part))
        out += part
    return bytes(out)


def _int(value: int) -> bytes:
    return b"%d" % value  # decimal ASCII, as str(int(value)).encode()


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


EMPTY_SHA256 = sha256(b"")

# The signing inputs below are ``frame(...)`` of their parts, written out as one join with the
# constant parts framed once (they run twice per call): ``frame`` is their definition and
# tests/unit/test_signing_vectors.py pins them to it and to the published vectors.
_pack = _LENGTH.pack
_REQUEST_HEAD = frame(REQUEST_CONTEXT)
_RESPONSE_HEAD = frame(RESPONSE_CONTEXT)
_VERSION_1 = frame(b"1")


def _version(protocol_version: int) -> bytes:
    return _VERSION_1 if protocol_version == 1 else frame(_int(protocol_version))


def request_signing_input(
    protocol_version: int,
    device_session_id: str,
    request_id: str,
    timestamp_ms: int,
    message_type: str,
    payload_hash: bytes,
) -> bytes:
    """The bytes a device signs for one request."""
    return _signing_input(_REQUEST_HEAD, protocol_version, device_session_id, request_id, timestamp_ms,
                          message_type, payload_hash, b"")


def response_signing_input(
    protocol_version: int,
    device_session_id: str,
    request_id: str,
    timestamp_ms: int,
    result_code: str,
    payload_hash: bytes,
    key_id: str,
) -> bytes:
    """The bytes the gateway signs for one response (the caller's session id included)."""
    return framed_response_signing_input(
        protocol_version, device_session_id, request_id, timestamp_ms, result_code, payload_hash, frame(key_id.encode())
    )


def framed_response_signing_input(
    protocol_version: int,
    device_session_id: str,
    request_id: str,
    timestamp_ms: int,
    result_code: str,
    payload_hash: bytes,
    framed_key_id: bytes,
) -> bytes:
    """``response_signing_input`` with the key id already framed (``frame(key_id.encode())``,
    the same for every response a key signs)."""
    return _signing_input(_RESPONSE_HEAD, protocol_version, device_session_id, request_id, timestamp_ms,
                          result_code, payload_hash, framed_key_id)


def _signing_input(head: bytes, protocol_version: int, device_session_id: str, request_id: str,
                   timestamp_ms: int, name: str, payload_hash: bytes, tail: bytes) -> bytes:
    """A request's or response's signing input: ``head``, the version, the four fields and the payload
    hash each framed, then ``tail`` (already framed), written out as one join."""
    pack = _pack
    session, request, timestamp, label = (
        device_session_id.encode(), request_id.encode(), b"%d" % timestamp_ms, name.encode()
    )
    return b"".join((
        head, _version(protocol_version),
        pack(len(session)), session,
        pack(len(request)), request,
        pack(len(timestamp)), timestamp,
        pack(len(label)), label,
        pack(len(payload_hash)), payload_hash,
        tail,
    ))


def event_signing_input(
    event_type: str, event_id: str, timestamp_ms: int, payload_hash: bytes, key_id: str
) -> bytes:
    """The bytes the gateway signs once per event."""
    return frame(
        EVENT_CONTEXT,
        event_type.encode(),
        event_id.encode(),
        _int(timestamp_ms),
        payload_hash,
        key_id.encode(),
    )


class RequestFields(Protocol):
    """What a request's signing input is built from: a ``RequestEnvelope``."""

    protocol_version: int
    device_session_id: str
    request_id: str
    timestamp_ms: int
    message_type: str
    payload_hash: bytes


class ResponseFields(Protocol):
    """What a response's signing input is built from: a ``ResponseEnvelope`` (and the caller's session)."""

    protocol_version: int
    request_id: str
    timestamp_ms: int
    result_code: str
    payload_hash: bytes
    key_id: str


class EventFields(Protocol):
    """What an event's signing input is built from: a ``GatewayEvent``."""

    event_type: str
    event_id: str
    timestamp_ms: int
    payload_hash: bytes
    key_id: str


def request_signing_input_of(envelope: RequestFields) -> bytes:
    """``request_signing_input`` over a ``RequestEnvelope``'s fields."""
    return request_signing_input(
        envelope.protocol_version, envelope.device_session_id, envelope.request_id, envelope.timestamp_ms,
        envelope.message_type, envelope.payload_hash,
    )


def response_signing_input_of(envelope: ResponseFields, device_session_id: str) -> bytes:
    """``response_signing_input`` over a ``ResponseEnvelope``'s fields and the caller's ``device_session_id``."""
    return response_signing_input(
        envelope.protocol_version, device_session_id, envelope.request_id, envelope.timestamp_ms,
        envelope.result_code, envelope.payload_hash, envelope.key_id,
    )


def event_signing_input_of(event: EventFields) -> bytes:
    """``event_signing_input`` over a ``GatewayEvent``'s fields."""
    return event_signing_input(event.event_type, event.event_id, event.timestamp_ms, event.payload_hash, event.key_id)


def key_id_for(public_key: bytes) -> str:
    """Lowercase hex of the first 8 bytes of SHA-256 of the raw 32-byte public key."""
    return hashlib.sha256(public_key).digest()[:8].hex()


def verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` is a valid Ed25519 signature of ``message`` by ``public_key``.

    pynacl's ``crypto_sign_open`` directly, with the checks ``VerifyKey.verify`` makes first
    (a key of 32 bytes, a signature of 64: libsodium reads that many), without its objects.
    """
    if (type(public_key) is not bytes or len(public_key) != crypto_sign_PUBLICKEYBYTES
            or type(signature) is not bytes or len(signature) != crypto_sign_BYTES):
        return False
    try:
        crypto_sign_open(signature + message, public_key)
    except (BadSignatureError, TypeError):
        return False
    return True


@dataclass(frozen=True)
class PublishedKey:
    """A gateway public key clients may verify against."""

    key_id: str
    public_key: bytes

    def as_json(self) -> dict[str, str]:
        return {"key_id": self.key_id, "public_key": base64.b64encode(self.public_key).decode()}


class KeyFileError(Exception):
    """A key file is missing, unreadable or malformed; the message names the file."""


def read_seed(path: Path, what: str) -> bytes:
    """The 32-byte Ed25519 seed in a key file (base64 on one line); ``KeyFileError`` naming
    ``what`` and the file otherwise."""
    try:
        text = path.read_text().strip()
    except OSError as e:
        raise KeyFileError(f"{what} {path}: {e.strerror or e}") from None
    try:
        seed = base64.b64decode(text, validate=True)
    except ValueError:
        raise KeyFileError(f"{what} {path}: not base64") from None
    if len(seed) != 32:
        raise KeyFileError(f"{what} {path}: expected a 32-byte seed, found {len(seed)} bytes")
    return seed


def write_seed(path: Path, seed: bytes) -> None:
    """Write a key file with mode 0600 (never readable by others, even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(base64.b64encode(seed).decode() + "\n")
    os.chmod(path, 0o600)  # an existing file keeps its mode on O_CREAT


class GatewayKey:
    """The Ed25519 key that signs responses and events."""

    def __init__(self, signing_key: SigningKey) -> None:
        self._signing_key = signing_key
        self.public_key = bytes(signing_key.verify_key)
        self.key_id = key_id_for(self.public_key)
        self.framed_key_id = frame(self.key_id.encode())  # the last part of every response signing input
        # libsodium's 64-byte secret key (seed and public key), for crypto_sign without SigningKey's objects.
        self._secret = crypto_sign_seed_keypair(bytes(signing_key))[1]

    def sign(self, message: bytes) -> bytes:
        """The 64-byte detached signature of ``message``."""
        return crypto_sign(message, self._secret)[:crypto_sign_BYTES]  # signature, then the message

    @classmethod
    def generate(cls) -> GatewayKey:
        return cls(SigningKey.generate())

    @classmethod
    def load(cls, path: Path) -> GatewayKey:
        """Read a key file: the base64 32-byte Ed25519 seed on one line."""
        return cls(SigningKey(read_seed(path, "signing key")))

    def save(self, path: Path) -> None:
        """Write the seed to ``path`` with mode 0600 (never readable by others, even briefly)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        write_seed(path, bytes(self._signing_key))

    @classmethod
    def load_or_create(cls, path: Path) -> GatewayKey:
        """Dev mode: the key in ``path``, generated there first if absent."""
        if not path.exists():
            key = cls.generate()
            key.save(path)
            return key
        return cls.load(path)

    def published(self) -> PublishedKey:
        return PublishedKey(self.key_id, self.public_key)


def load_public_key(path: Path) -> PublishedKey:
    """Read a published (verify-only) key file: the base64 32-byte public key."""
    try:
        raw = base64.b64decode(path.read_text().strip(), validate=True)
    except OSError as e:
        raise KeyFileError(f"public key {path}: {e.strerror or e}") from None
    except ValueError:
        raise KeyFileError(f"public key {path}: not base64") from None
    if len(raw) != 32:
        raise KeyFileError(f"public key {path}: expected 32 bytes, found {len(raw)}")
    return PublishedKey(key_id_for(raw), raw)


@dataclass(frozen=True)
class Keyring:
    """The key that signs now, and every key published for verification (rotation)."""

    signer: GatewayKey
    published: tuple[PublishedKey, ...]

    @classmethod
    def of(cls, signer: GatewayKey, extra: tuple[PublishedKey, ...] = ()) -> Keyring:
        keys = [signer.published()] + [k for k in extra if k.key_id != signer.key_id]
        return cls(signer, tuple(keys))

    def as_json(self) -> dict[str, list[dict[str, str]]]:
        return {"keys": [k.as_json() for k in self.published]}
