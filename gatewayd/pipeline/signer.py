"""Signed answers: ExecuteCommandResponse for callers, GatewayEvent for streams."""

from __future__ import annotations

from gatewayd._proto.gateway.v1.gateway_pb2 import ExecuteCommandResponse, GatewayEvent
from gatewayd.pipeline.context import Clock, now_ms
from gatewayd.signing import GatewayKey, event_signing_input, framed_response_signing_input, sha256

RESPONSE_PROTOCOL_VERSION = 1


class _Signer:
    """What both signers share: the key, the clock, and the stamp every signed thing carries."""

    def __init__(self, key: GatewayKey, clock: Clock) -> None:
        self._key = key
        self._clock = clock

    @property
    def key_id(self) -> str:
        return self._key.key_id

    def use_key(self, key: GatewayKey) -> None:
        """Sign with ``key`` from now on (SIGHUP reload); what is already signed stays as it is."""
        self._key = key

    def _stamp(self, payload: bytes, timestamp_ms: int | None = None) -> tuple[bytes, int, str]:
        """``(payload_hash, timestamp_ms, key_id)``; the timestamp defaults to the gateway's clock."""
        timestamp = now_ms(self._clock) if timestamp_ms is None else timestamp_ms
        return sha256(payload), timestamp, self._key.key_id


class ResponseSigner(_Signer):
    """Builds and signs ExecuteCommandResponses with the gateway's current key."""

    def sign(
        self, device_session_id: str, request_id: str, result_code: str, payload: bytes
    ) -> ExecuteCommandResponse:
        """The response to ``request_id``, stamped with the gateway's time; signed over the
        response signing input with the caller's ``device_session_id``."""
        payload_hash, timestamp, key_id = self._stamp(payload)
        key = self._key
        signature = key.sign(
            framed_response_signing_input(
                RESPONSE_PROTOCOL_VERSION, device_session_id, request_id, timestamp, result_code,
                payload_hash, key.framed_key_id,
            )
        )
        response = ExecuteCommandResponse(payload_bytes=payload, signature=signature)
        # Filled in place: a ResponseEnvelope built apart would be copied into the response.
        envelope = response.envelope
        envelope.protocol_version = RESPONSE_PROTOCOL_VERSION
        envelope.request_id = request_id
        envelope.timestamp_ms = timestamp
        envelope.result_code = result_code
        envelope.payload_hash = payload_hash
        envelope.key_id = key_id
        return response


class EventSigner(_Signer):
    """Builds and signs GatewayEvents, once per event (the result is fanned out as is)."""

    def sign(
        self, event_type: str, event_id: str, payload: bytes, timestamp_ms: int | None = None
    ) -> GatewayEvent:
        """The signed event; ``timestamp_ms`` defaults to the gateway's clock."""
        payload_hash, timestamp, key_id = self._stamp(payload, timestamp_ms)
        signature = self._key.sign(event_signing_input(event_type, event_id, timestamp, payload_hash, key_id))
        return GatewayEvent(
            event_type=event_type,
            event_id=event_id,
            timestamp_ms=timestamp,
            payload_bytes=payload,
            payload_hash=payload_hash,
            key_id=key_id,
            signature=signature,
        )
