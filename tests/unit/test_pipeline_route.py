"""Routing (stage 7), the signed response, the event signer and the method table entries."""

from __future__ import annotations

from typing import Any

import pytest

from gatewayd._proto.gateway.v1.gateway_pb2 import ExecuteCommandRequest, GatewayEvent, SubscribeEventsRequest
from gatewayd.backend.rest import BackendAnswer
from gatewayd.pipeline.pipeline import EXECUTE_COMMAND_PATH, SUBSCRIBE_EVENTS_PATH, gateway_methods
from gatewayd.pipeline.result_codes import result_code_for_status
from gatewayd.pipeline.signer import EventSigner
from gatewayd.rpc.methods import MethodTable
from gatewayd.signing import event_signing_input, key_id_for, response_signing_input, sha256, verify
from tests.unit.test_pipeline_stages import START_MS, Rig

# PROTOCOL.md section 5, row by row, plus the "other" rows.
STATUS_TABLE = [
    (200, "ok"), (201, "ok"), (202, "ok"), (299, "ok"),
    (400, "invalid_argument"), (401, "unauthenticated"), (403, "permission_denied"), (404, "not_found"),
    (409, "already_exists"), (412, "failed_precondition"), (429, "resource_exhausted"),
    (501, "unimplemented"), (503, "unavailable"), (504, "deadline_exceeded"),
    (500, "internal"), (502, "internal"), (599, "internal"),
    (402, "invalid_argument"), (405, "invalid_argument"), (418, "invalid_argument"),
    (422, "invalid_argument"), (499, "invalid_argument"),
    # Not in the table: a redirect or informational answer is the backend misbehaving.
    (302, "internal"), (100, "internal"),
]


@pytest.mark.parametrize(("status", "code"), STATUS_TABLE)
def test_result_code_for_status(status: int, code: str) -> None:
    assert result_code_for_status(status) == code


@pytest.mark.parametrize(("status", "code"), [(200, "ok"), (404, "not_found"), (503, "unavailable")])
def test_every_backend_answer_becomes_a_verifiable_signed_response(status: int, code: str) -> None:
    rig = Rig()
    body = b'{"answer":%d}' % status
    rig.backend.answer = BackendAnswer(status, body)
    rig.clock.advance(0.25)  # the response carries the gateway's time, not the request's
    response = rig.execute(rig.device.command(request_id="r-9", timestamp_ms=START_MS))
    env = response.envelope
    assert (env.protocol_version, env.request_id, env.result_code) == (1, "r-9", code)
    assert env.timestamp_ms == START_MS + 250
    assert env.payload_hash == sha256(body) and response.payload_bytes == body
    assert env.key_id == rig.key.key_id == key_id_for(rig.key.public_key)
    signed = response_signing_input(1, "ds_1", "r-9", env.timestamp_ms, code, env.payload_hash, env.key_id)
    assert verify(rig.key.public_key, signed, response.signature)
    # Bound to the caller's session: the same bytes do not verify for another session.
    other = response_signing_input(1, "ds_2", "r-9", env.timestamp_ms, code, env.payload_hash, env.key_id)
    assert not verify(rig.key.public_key, other, response.signature)


def test_event_signer_signs_once_verifiably() -> None:
    rig = Rig()
    signer = EventSigner(rig.key, rig.clock)
    event = signer.sign("gateway.server_time", "ev-1", b'{"server_time_ms":1}')
    assert isinstance(event, GatewayEvent)
    assert event.timestamp_ms == START_MS and event.key_id == rig.key.key_id == signer.key_id
    assert event.payload_hash == sha256(event.payload_bytes)
    signed = event_signing_input("gateway.server_time", "ev-1", START_MS, event.payload_hash, event.key_id)
    assert verify(rig.key.public_key, signed, event.signature)
    stamped = signer.sign("user.note.created", "ev-2", b"{}", timestamp_ms=42)
    assert stamped.timestamp_ms == 42
    assert verify(
        rig.key.public_key,
        event_signing_input("user.note.created", "ev-2", 42, sha256(b"{}"), rig.key.key_id),
        stamped.signature,
    )


def test_gateway_methods_register_in_a_method_table() -> None:
    rig = Rig()

    async def subscribe(call: Any, request: Any, stream: Any) -> None:
        return None

    table = MethodTable()
    for method in gateway_methods(rig.pipeline, subscribe):
        table.add(method)
    execute = table.get(EXECUTE_COMMAND_PATH)
    events = table.get(SUBSCRIBE_EVENTS_PATH)
    assert execute is not None and events is not None
    assert execute.request_type is ExecuteCommandRequest and not execute.server_streaming
    assert events.request_type is SubscribeEventsRequest and events.response_type is GatewayEvent
    assert events.stream is subscribe
    assert table.services() == {"gateway.v1.Gateway"}
    assert execute.unary is not None
    d = execute.unary(rig.call(), rig.device.command())
    out: list[Any] = []
    d.addBoth(out.append)  # type: ignore[attr-defined]
    assert out[0].envelope.result_code == "ok"
