"""The client's signing and verification: against the shared vectors, the gateway's own signers,
and every way an answer can be wrong; the key cache on a fake fetch; the device key file."""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey
from twisted.internet import defer
from twisted.internet.task import Clock

from gatewayd._proto.gateway.v1.gateway_pb2 import (
    ExecuteCommandResponse,
    GatewayEvent,
    ResponseEnvelope,
)
from gatewayd.client import DeviceKey, DeviceKeyError, VerificationError, sign_request, sign_subscribe
from gatewayd.client.sign import new_request_id
from gatewayd.client.verify import KeyCache, parse_published_keys, verify_event, verify_response
from gatewayd.pipeline.signer import EventSigner, ResponseSigner
from gatewayd.signing import EMPTY_SHA256, GatewayKey, request_signing_input, sha256, verify

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "signing.json").read_text())
SEED = bytes.fromhex(VECTORS["seed_hex"])


def _clock_at(ms: int) -> Clock:
    clock = Clock()
    clock.advance(ms / 1000)
    return clock


# --- requests ---------------------------------------------------------------------------


@pytest.mark.parametrize("vector", [v for v in VECTORS["requests"] if v["protocol_version"] == 1],
                         ids=lambda v: v["name"])
def test_sign_request_matches_the_shared_vectors(vector: dict[str, Any]) -> None:
    key = DeviceKey.from_seed(SEED)
    assert key.public_key.hex() == VECTORS["public_key_hex"]
    assert key.public_key_b64 == VECTORS["public_key_b64"]
    timestamp_ms = int(vector["timestamp_ms"])
    clock = Clock()
    clock.seconds = lambda: timestamp_ms / 1000  # type: ignore[method-assign]
    payload = bytes.fromhex(vector["payload_hex"])
    if vector["message_type"] == "gateway.subscribe":
        request: Any = sign_subscribe(key, vector["device_session_id"], clock=clock,
                                      request_id=vector["request_id"])
    else:
        request = sign_request(key, vector["device_session_id"], vector["message_type"], payload,
                               clock=clock, request_id=vector["request_id"])
        assert request.payload_bytes == payload
    e = request.envelope
    if int(vector["timestamp_ms"]) < 2**52:  # float seconds are exact up to here
        assert e.timestamp_ms == timestamp_ms
        assert request.signature.hex() == vector["signature_hex"]
    assert e.payload_hash.hex() == vector["payload_hash_hex"]
    assert (e.protocol_version, e.device_session_id, e.request_id, e.message_type) == (
        1, vector["device_session_id"], vector["request_id"], vector["message_type"])


def test_sign_request_stamps_the_injected_clock_and_a_fresh_id() -> None:
    key = DeviceKey.generate()
    clock = _clock_at(1_700_000_123_456)
    first = sign_request(key, "ds_1", "user.notes.create", b'{"text":"x"}', clock=clock)
    clock.advance(2.5)
    second = sign_request(key, "ds_1", "user.notes.create", b'{"text":"x"}', clock=clock)
    assert (first.envelope.timestamp_ms, second.envelope.timestamp_ms) == (1_700_000_123_456, 1_700_000_125_956)
    assert first.envelope.request_id != second.envelope.request_id
    e = first.envelope
    assert e.payload_hash == sha256(b'{"text":"x"}')
    signed = request_signing_input(1, "ds_1", e.request_id, e.timestamp_ms, e.message_type, e.payload_hash)
    assert verify(key.public_key, signed, first.signature)


def test_subscribe_request_hashes_the_empty_payload() -> None:
    request = sign_subscribe(DeviceKey.generate(), "ds_1", clock=_clock_at(5))
    assert request.envelope.message_type == "gateway.subscribe"
    assert request.envelope.payload_hash == EMPTY_SHA256


def test_request_ids_fit_the_identifier_alphabet_and_use_the_injected_randomness() -> None:
    ids = {new_request_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", i) for i in ids)
    assert new_request_id(lambda n: b"\x00" * n) == "r-" + "00" * 12


# --- responses and events --------------------------------------------------------------


@pytest.mark.parametrize("vector", VECTORS["responses"], ids=lambda v: v["name"])
def test_verify_response_accepts_the_shared_vectors(vector: dict[str, Any]) -> None:
    payload = bytes.fromhex(vector["payload_hex"])
    response = ExecuteCommandResponse(
        envelope=ResponseEnvelope(
            protocol_version=vector["protocol_version"], request_id=vector["request_id"],
            timestamp_ms=int(vector["timestamp_ms"]), result_code=vector["result_code"],
            payload_hash=bytes.fromhex(vector["payload_hash_hex"]), key_id=vector["key_id"]),
        payload_bytes=payload, signature=bytes.fromhex(vector["signature_hex"]))
    public_key = bytes.fromhex(VECTORS["public_key_hex"])
    verified = verify_response(response, vector["device_session_id"], vector["request_id"], public_key)
    assert (verified.result_code, verified.payload_bytes) == (vector["result_code"], payload)
    with pytest.raises(VerificationError):
        verify_response(response, vector["device_session_id"] + "x", vector["request_id"], public_key)


@pytest.mark.parametrize("vector", VECTORS["events"], ids=lambda v: v["name"])
def test_verify_event_accepts_the_shared_vectors(vector: dict[str, Any]) -> None:
    event = GatewayEvent(
        event_type=vector["event_type"], event_id=vector["event_id"], timestamp_ms=int(vector["timestamp_ms"]),
        payload_bytes=bytes.fromhex(vector["payload_hex"]), payload_hash=bytes.fromhex(vector["payload_hash_hex"]),
        key_id=vector["key_id"], signature=bytes.fromhex(vector["signature_hex"]))
    verified = verify_event(event, bytes.fromhex(VECTORS["public_key_hex"]))
    assert verified.event_id == vector["event_id"]


GATEWAY = GatewayKey(SigningKey(bytes(range(1, 33))))


def _signed_response(payload: bytes = b'{"a":1}', result_code: str = "ok") -> ExecuteCommandResponse:
    return ResponseSigner(GATEWAY, _clock_at(1_000)).sign("ds_1", "req-1", result_code, payload)


def test_verify_response_accepts_what_the_gateway_signs() -> None:
    verified = verify_response(_signed_response(result_code="not_found"), "ds_1", "req-1", GATEWAY.public_key)
    assert (verified.request_id, verified.result_code, verified.key_id, verified.timestamp_ms) == (
        "req-1", "not_found", GATEWAY.key_id, 1_000)
    assert verified.json() == {"a": 1} and not verified.ok


@pytest.mark.parametrize("tamper", ["payload", "result_code", "timestamp", "request_id", "signature",
                                    "session", "key", "no envelope"])
def test_verify_response_refuses_every_tampering(tamper: str) -> None:
    response = _signed_response()
    session, request_id, public_key = "ds_1", "req-1", GATEWAY.public_key
    if tamper == "payload":
        response.payload_bytes = b'{"a":2}'
    elif tamper == "result_code":
        response.envelope.result_code = "internal"
    elif tamper == "timestamp":
        response.envelope.timestamp_ms += 1
    elif tamper == "request_id":
        request_id = "req-2"
    elif tamper == "signature":
        response.signature = bytes(64)
    elif tamper == "session":
        session = "ds_2"
    elif tamper == "key":
        public_key = GatewayKey.generate().public_key
    elif tamper == "no envelope":
        response.ClearField("envelope")
    with pytest.raises(VerificationError):
        verify_response(response, session, request_id, public_key)


def test_verify_event_refuses_a_changed_payload_or_signature() -> None:
    event = EventSigner(GATEWAY, _clock_at(7)).sign("user.note.created", "ev_1", b'{"note_id":"n"}')
    assert verify_event(event, GATEWAY.public_key).json() == {"note_id": "n"}
    changed = GatewayEvent()
    changed.CopyFrom(event)
    changed.payload_bytes = b'{"note_id":"m"}'
    changed.payload_hash = sha256(changed.payload_bytes)
    with pytest.raises(VerificationError):
        verify_event(changed, GATEWAY.public_key)
    changed.CopyFrom(event)
    changed.payload_bytes = b'{"note_id":"m"}'
    with pytest.raises(VerificationError):
        verify_event(changed, GATEWAY.public_key)


# --- published keys and the cache -----------------------------------------------------


def _document(*keys: GatewayKey) -> bytes:
    return json.dumps({"keys": [k.published().as_json() for k in keys]}).encode()


def test_parse_published_keys_checks_each_key_id() -> None:
    other = GatewayKey.generate()
    assert parse_published_keys(_document(GATEWAY, other)) == {GATEWAY.key_id: GATEWAY.public_key,
                                                               other.key_id: other.public_key}
    lying = json.loads(_document(GATEWAY))
    lying["keys"][0]["key_id"] = other.key_id
    for body in (json.dumps(lying).encode(), b"{}", b"not json", b'{"keys":[{"key_id":"x","public_key":"%%"}]}'):
        with pytest.raises(VerificationError):
            parse_published_keys(body)


class FakeFetch:
    def __init__(self) -> None:
        self.calls: list[defer.Deferred[Mapping[str, bytes]]] = []

    def __call__(self) -> defer.Deferred[Mapping[str, bytes]]:
        d: defer.Deferred[Mapping[str, bytes]] = defer.Deferred()
        self.calls.append(d)
        return d


def _result(d: defer.Deferred[Any]) -> Any:
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "the Deferred has not fired"
    return out[0]


def test_key_cache_fetches_once_and_shares_the_fetch() -> None:
    fetch = FakeFetch()
    cache = KeyCache(fetch)
    first, second = cache.public_key(GATEWAY.key_id), cache.public_key(GATEWAY.key_id)
    assert len(fetch.calls) == 1 and not first.called
    fetch.calls[0].callback({GATEWAY.key_id: GATEWAY.public_key})
    assert _result(first) == _result(second) == GATEWAY.public_key
    assert _result(cache.public_key(GATEWAY.key_id)) == GATEWAY.public_key
    assert len(fetch.calls) == 1


def test_key_cache_refetches_once_for_an_unknown_key_id() -> None:
    fetch = FakeFetch()
    cache = KeyCache(fetch)
    cache.public_key(GATEWAY.key_id)
    fetch.calls[0].callback({GATEWAY.key_id: GATEWAY.public_key})
    rotated = GatewayKey.generate()
    lookup = cache.public_key(rotated.key_id)
    assert len(fetch.calls) == 2
    fetch.calls[1].callback({GATEWAY.key_id: GATEWAY.public_key, rotated.key_id: rotated.public_key})
    assert _result(lookup) == rotated.public_key

    unknown = cache.public_key("0011223344556677")
    assert len(fetch.calls) == 3
    fetch.calls[2].callback({GATEWAY.key_id: GATEWAY.public_key})
    failure = _result(unknown)
    assert failure.check(VerificationError) and "does not publish" in str(failure.value)
    assert len(fetch.calls) == 3


def test_key_cache_reports_a_failed_fetch_and_tries_again_next_time() -> None:
    fetch = FakeFetch()
    cache = KeyCache(fetch)
    lookup = cache.public_key(GATEWAY.key_id)
    fetch.calls[0].errback(ConnectionError("down"))
    assert _result(lookup).check(ConnectionError)
    again = cache.public_key(GATEWAY.key_id)
    fetch.calls[1].callback({GATEWAY.key_id: GATEWAY.public_key})
    assert _result(again) == GATEWAY.public_key


# --- the device key file -----------------------------------------------------------------


def test_device_key_file_round_trip_and_mode(tmp_path: Path) -> None:
    key = DeviceKey.generate()
    path = tmp_path / "device.key"
    path.write_text("placeholder")
    os.chmod(path, 0o644)
    key.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert DeviceKey.load(path).public_key == key.public_key


@pytest.mark.parametrize("content", ["not base64 !!", "AAAA"])
def test_device_key_file_errors_name_the_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "device.key"
    path.write_text(content)
    with pytest.raises(DeviceKeyError, match=re.escape("device.key")):
        DeviceKey.load(path)
    with pytest.raises(DeviceKeyError, match=re.escape("missing.key")):
        DeviceKey.load(tmp_path / "missing.key")
