"""gateway.server_time: one signed event per millisecond, shared by the streams opening in it."""

from __future__ import annotations

import json

from twisted.internet.task import Clock

from gatewayd.pipeline.signer import EventSigner
from gatewayd.push.hub import Hub
from gatewayd.push.subscribe import SERVER_TIME_EVENT, SubscribeEvents
from gatewayd.signing import GatewayKey, event_signing_input_of, verify


def test_streams_opening_in_one_millisecond_share_one_signed_event() -> None:
    clock = Clock()
    clock.advance(1_795_000_000.0004)
    key = GatewayKey.generate()
    subscribe = SubscribeEvents(pipeline=None, hub=Hub(), signer=EventSigner(key, clock), clock=clock)  # type: ignore[arg-type]
    first, second = subscribe._server_time(), subscribe._server_time()
    assert first is second
    clock.advance(0.001)
    third = subscribe._server_time()
    assert third is not first
    for encoded, ms in ((first, 1_795_000_000_000), (third, 1_795_000_000_001)):
        event = encoded.message
        assert event.event_type == SERVER_TIME_EVENT
        assert event.payload_bytes == json.dumps({"server_time_ms": ms}, separators=(",", ":")).encode()
        assert verify(key.public_key, event_signing_input_of(event), event.signature)
    assert first.message.event_id != third.message.event_id
