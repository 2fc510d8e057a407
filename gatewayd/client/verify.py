"""Checking what the gateway signed: responses and events, against its published keys."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from gatewayd._proto.gateway.v1.gateway_pb2 import ExecuteCommandResponse, GatewayEvent
from gatewayd.client.errors import VerificationError
from gatewayd.deferreds import settle_each
from gatewayd.signing import event_signing_input_of, key_id_for, response_signing_input_of, sha256, verify


@dataclass(frozen=True)
class VerifiedResponse:
    """An ExecuteCommand answer whose signature, payload hash and request_id were checked."""

    request_id: str
    result_code: str
    timestamp_ms: int
    key_id: str
    payload_bytes: bytes

    @property
    def ok(self) -> bool:
        return self.result_code == "ok"

    def json(self) -> Any:
        """The payload parsed as JSON (``None`` for an empty payload)."""
        return json.loads(self.payload_bytes) if self.payload_bytes else None


@dataclass(frozen=True)
class VerifiedEvent:
    """A GatewayEvent whose signature and payload hash were checked."""

    event_type: str
    event_id: str
    timestamp_ms: int
    key_id: str
    payload_bytes: bytes

    def json(self) -> Any:
        return json.loads(self.payload_bytes) if self.payload_bytes else None

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready view (payload parsed when it is JSON, else kept as text)."""
        try:
            payload: Any = self.json()
        except ValueError:
            payload = self.payload_bytes.decode("utf-8", "replace")
        return {"event_type": self.event_type, "event_id": self.event_id,
                "timestamp_ms": self.timestamp_ms, "key_id": self.key_id, "payload": payload}


def parse_published_keys(body: bytes) -> dict[str, bytes]:
    """``{"keys": [{"key_id", "public_key"}]}`` into ``{key_id: raw public key}``.

    A key whose ``key_id`` does not match its public key is refused: the id is
    derived from the key (PROTOCOL.md section 2), so a mismatch is tampering or a bug.
    """
    try:
        document = json.loads(body)
        entries = document["keys"]
        keys: dict[str, bytes] = {}
        for entry in entries:
            raw = base64.b64decode(entry["public_key"], validate=True)
            key_id = entry["key_id"]
            if len(raw) != 32 or key_id_for(raw) != key_id:
                raise VerificationError(f"published key {key_id!r} does not match its key_id")
            keys[key_id] = raw
    except (ValueError, KeyError, TypeError, binascii.Error) as e:
        raise VerificationError(f"malformed gateway-keys document: {e}") from None
    return keys


class KeyCache:
    """The gateway's published keys, fetched on first use and cached.

    An unknown ``key_id`` (the gateway rotated) refetches once; a key still
    unknown after that fails verification. Concurrent lookups share one fetch.
    """

    def __init__(self, fetch: Callable[[], Deferred[Mapping[str, bytes]]]) -> None:
        self._fetch = fetch
        self._keys: dict[str, bytes] | None = None
        self._waiters: list[Deferred[None]] = []

    @property
    def keys(self) -> Mapping[str, bytes]:
        return dict(self._keys or {})

    def refresh(self) -> Deferred[None]:
        """Fetch the published keys now (one fetch shared by concurrent callers)."""
        # Each caller gets its own Deferred, so that one cancelling does not cancel the fetch.
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        if len(self._waiters) == 1:
            self._fetch().addCallback(self._store).addBoth(self._fetched)
        return waiter

    def _fetched(self, result: Any) -> None:
        waiters, self._waiters = self._waiters, []
        settle_each(waiters, None if not isinstance(result, Failure) else result)

    def _store(self, keys: Mapping[str, bytes]) -> None:
        self._keys = dict(keys)

    def public_key(self, key_id: str) -> Deferred[bytes]:
        """The raw public key named ``key_id``; VerificationError when the gateway does not publish it."""
        if self._keys is not None and key_id in self._keys:
            return defer.succeed(self._keys[key_id])

        def after_fetch(_: None) -> bytes:
            assert self._keys is not None
            if key_id not in self._keys:
                raise VerificationError(f"signed by key {key_id!r}, which the gateway does not publish")
            return self._keys[key_id]

        return self.refresh().addCallback(after_fetch)


def verify_response(
    response: ExecuteCommandResponse, device_session_id: str, request_id: str, public_key: bytes
) -> VerifiedResponse:
    """Check ``response`` answers ``request_id`` and is signed by ``public_key``; return its content."""
    e = response.envelope
    if not response.HasField("envelope"):
        raise VerificationError("response without an envelope")
    if e.request_id != request_id:
        raise VerificationError(f"response answers request {e.request_id!r}, not {request_id!r}")
    if e.payload_hash != sha256(response.payload_bytes):
        raise VerificationError("response payload does not match its payload_hash")
    if not verify(public_key, response_signing_input_of(e, device_session_id), response.signature):
        raise VerificationError(f"bad response signature (key {e.key_id!r})")
    return VerifiedResponse(e.request_id, e.result_code, e.timestamp_ms, e.key_id, response.payload_bytes)


def verify_event(event: GatewayEvent, public_key: bytes) -> VerifiedEvent:
    """Check ``event`` is signed by ``public_key`` and its payload matches its hash."""
    if event.payload_hash != sha256(event.payload_bytes):
        raise VerificationError(f"event {event.event_id!r}: payload does not match its payload_hash")
    if not verify(public_key, event_signing_input_of(event), event.signature):
        raise VerificationError(f"event {event.event_id!r}: bad signature (key {event.key_id!r})")
    return VerifiedEvent(event.event_type, event.event_id, event.timestamp_ms, event.key_id, event.payload_bytes)
