"""Building signed requests (PROTOCOL.md section 2) as a device does."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

from gatewayd._proto.gateway.v1.gateway_pb2 import (
    ExecuteCommandRequest,
    RequestEnvelope,
    SubscribeEventsRequest,
)
from gatewayd.client.keys import DeviceKey
from gatewayd.signing import EMPTY_SHA256, request_signing_input_of, sha256

PROTOCOL_VERSION = 1
SUBSCRIBE_MESSAGE_TYPE = "gateway.subscribe"

RandomBytes = Callable[[int], bytes]


class SecondsClock(Protocol):
    """What signing needs of a clock: ``IReactorTime.seconds`` (a reactor or a ``Clock``)."""

    def seconds(self) -> float: ...


def new_request_id(random_bytes: RandomBytes = os.urandom) -> str:
    """A fresh request id: ``r-`` and 24 hex digits (96 random bits), inside ``[A-Za-z0-9._:-]``."""
    return "r-" + random_bytes(12).hex()


def now_ms(clock: SecondsClock) -> int:
    return int(clock.seconds() * 1000)


def request_envelope(
    device_session_id: str,
    message_type: str,
    payload_hash: bytes,
    *,
    clock: SecondsClock,
    request_id: str | None = None,
    random_bytes: RandomBytes = os.urandom,
    timestamp_ms: int | None = None,
    protocol_version: int = PROTOCOL_VERSION,
) -> RequestEnvelope:
    """An unsigned envelope stamped with ``clock``'s time and a fresh request id, unless
    ``timestamp_ms`` / ``request_id`` say otherwise."""
    return RequestEnvelope(
        protocol_version=protocol_version,
        device_session_id=device_session_id,
        request_id=request_id if request_id is not None else new_request_id(random_bytes),
        timestamp_ms=now_ms(clock) if timestamp_ms is None else timestamp_ms,
        message_type=message_type,
        payload_hash=payload_hash,
    )


def sign_envelope(key: DeviceKey, envelope: RequestEnvelope) -> bytes:
    """The device's Ed25519 signature over ``envelope``'s request signing input (PROTOCOL.md section 3)."""
    return key.sign(request_signing_input_of(envelope))


def sign_request(
    key: DeviceKey,
    device_session_id: str,
    message_type: str,
    payload: bytes,
    *,
    clock: SecondsClock,
    request_id: str | None = None,
    random_bytes: RandomBytes = os.urandom,
) -> ExecuteCommandRequest:
    """A signed ExecuteCommandRequest carrying ``payload`` (JSON bytes, may be empty)."""
    envelope = request_envelope(device_session_id, message_type, sha256(payload), clock=clock,
                                request_id=request_id, random_bytes=random_bytes)
    return ExecuteCommandRequest(envelope=envelope, payload_bytes=payload, signature=sign_envelope(key, envelope))


def sign_subscribe(
    key: DeviceKey,
    device_session_id: str,
    *,
    clock: SecondsClock,
    request_id: str | None = None,
    random_bytes: RandomBytes = os.urandom,
) -> SubscribeEventsRequest:
    """A signed SubscribeEventsRequest (message_type ``gateway.subscribe``, hash of ``b""``)."""
    envelope = request_envelope(device_session_id, SUBSCRIBE_MESSAGE_TYPE, EMPTY_SHA256, clock=clock,
                                request_id=request_id, random_bytes=random_bytes)
    return SubscribeEventsRequest(envelope=envelope, signature=sign_envelope(key, envelope))
