"""Checking what the gateway signs against the wire contract, independently of the client.

``published_keys`` fetches the gateway's keys; ``check_event`` verifies one event's payload
hash, key id and Ed25519 signature over PROTOCOL.md's event signing input, and
``check_response`` one ExecuteCommandResponse's over the response signing input, with
``gatewayd.signing`` alone (the client's own verification is what is under test elsewhere).
``RawStream`` records a stream's raw messages from a client transport, unverified.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from typing import Any

import treq
from twisted.python.failure import Failure
from twisted.web.client import HTTPConnectionPool

from gatewayd._proto.gateway.v1.gateway_pb2 import ExecuteCommandResponse, GatewayEvent, SubscribeEventsRequest
from gatewayd.client import DeviceKey, RpcCallError
from gatewayd.client.client import GATEWAY_KEYS_PATH, SUBSCRIBE_EVENTS_PATH, DeviceSession
from gatewayd.client.wire import RpcTransport
from gatewayd.rpc.codes import Code
from gatewayd.signing import event_signing_input_of, key_id_for, response_signing_input_of, sha256, verify
from gatewayd.testing.client import RunningGateway, login, signed_subscribe_request
from gatewayd.testing.wait import until

SERVER_TIME = "gateway.server_time"
NOTE_CREATED = "user.note.created"


def _reactor(reactor: Any) -> Any:
    if reactor is None:
        from twisted.internet import reactor
    return reactor


async def published_keys(url: str, reactor: Any = None) -> dict[str, bytes]:
    """The gateway's published keys, ``{key_id: raw Ed25519 public key}``, each id checked."""
    pool = HTTPConnectionPool(_reactor(reactor), persistent=False)
    try:
        response = await treq.get(url + GATEWAY_KEYS_PATH, pool=pool)
        body = await response.content()
    finally:
        await pool.closeCachedConnections()
    assert response.code == 200, body
    keys = {}
    for entry in json.loads(body)["keys"]:
        raw = base64.b64decode(entry["public_key"], validate=True)
        assert len(raw) == 32 and key_id_for(raw) == entry["key_id"], entry
        keys[entry["key_id"]] = raw
    assert keys
    return keys


def check_event(event: GatewayEvent, keys: Mapping[str, bytes]) -> Any:
    """Assert ``event`` is signed by a published gateway key over PROTOCOL.md's event signing
    input and its payload matches its hash; returns the payload parsed as JSON."""
    assert event.key_id in keys, (event.key_id, list(keys))
    assert event.payload_hash == sha256(event.payload_bytes), event
    assert verify(keys[event.key_id], event_signing_input_of(event), event.signature), f"bad signature on {event}"
    return json.loads(event.payload_bytes)


def check_response(response: ExecuteCommandResponse, device_session_id: str, keys: Mapping[str, bytes]) -> None:
    """Assert ``response`` is signed by one of ``keys`` (``{key_id: public key}``) over PROTOCOL.md's
    response signing input with the caller's ``device_session_id``, and its payload matches its hash."""
    envelope = response.envelope
    assert envelope.key_id in keys, (envelope.key_id, list(keys))
    assert envelope.payload_hash == sha256(response.payload_bytes), response
    signed = response_signing_input_of(envelope, device_session_id)
    assert verify(keys[envelope.key_id], signed, response.signature), f"bad signature on {response}"


def check_server_time(event: GatewayEvent, keys: dict[str, bytes], reactor: Any = None) -> None:
    """Assert ``event`` is a verified ``gateway.server_time`` within a minute of the reactor's time."""
    assert event.event_type == SERVER_TIME, event
    payload = check_event(event, keys)
    assert set(payload) == {"server_time_ms"}, payload
    now_ms = _reactor(reactor).seconds() * 1000
    assert abs(payload["server_time_ms"] - now_ms) < 60_000, payload
    assert event.event_id


def check_note(event: GatewayEvent, keys: dict[str, bytes], note: dict[str, str]) -> None:
    """Assert ``event`` is a verified ``user.note.created`` carrying exactly ``note``."""
    assert event.event_type == NOTE_CREATED, event
    assert check_event(event, keys) == note


async def same_user_sessions(gw: RunningGateway, email: str, count: int = 2
                             ) -> list[tuple[DeviceKey, DeviceSession]]:
    """``count`` device sessions (each with its own key) of one user."""
    devices = [await login(gw.url, email) for _ in range(count)]
    assert len({s.user_id for _, s in devices}) == 1
    assert len({s.device_session_id for _, s in devices}) == count
    return devices


def subscribe_request(device: tuple[DeviceKey, DeviceSession]) -> SubscribeEventsRequest:
    """A signed SubscribeEventsRequest for ``device`` (as ``login`` returns it)."""
    key, session = device
    return signed_subscribe_request(key, session.device_session_id)


class RawStream:
    """One SubscribeEvents call on a client transport: raw messages parsed, not verified."""

    def __init__(self, transport: RpcTransport, request: SubscribeEventsRequest) -> None:
        self.messages: list[GatewayEvent] = []
        self.outcome: Any = None  # None while open; then None-result or Failure
        self.ended = False
        self.done = transport.server_streaming(SUBSCRIBE_EVENTS_PATH, request.SerializeToString(),
                                               self._message)
        self.done.addBoth(self._end)

    def _message(self, raw: bytes) -> None:
        event = GatewayEvent()
        event.ParseFromString(raw)
        self.messages.append(event)

    def _end(self, result: Any) -> None:
        self.ended = True
        self.outcome = result

    async def wait_messages(self, count: int) -> None:
        """Wait (bounded) until ``count`` messages came; assert they did (not an early end)."""
        await until(lambda: len(self.messages) >= count or self.ended,
                    lambda: f"{count} messages; got {[m.event_type for m in self.messages]}")
        assert len(self.messages) >= count, (self.messages, self.outcome)

    async def wait_end(self) -> Any:
        """Wait (bounded) for the end; the outcome (None, or the Failure)."""
        await until(lambda: self.ended, "the stream to end")
        return self.outcome

    def status(self) -> Code:
        """The stream's end status (OK, or the RpcCallError's code)."""
        assert self.ended
        if isinstance(self.outcome, Failure):
            self.outcome.trap(RpcCallError)
            error = self.outcome.value
            assert isinstance(error, RpcCallError)
            return Code(error.code)
        return Code.OK

    def cancel(self) -> None:
        """Cancel the call unless it has ended."""
        if not self.ended:
            self.done.cancel()


def h2_stream_count(gw: RunningGateway) -> int:
    """HTTP/2 streams open on the gateway's side, over all its connections."""
    return sum(len(conn.streams) for conn in gw.gateway.factory.h2_connections)


__all__ = ["NOTE_CREATED", "SERVER_TIME", "RawStream", "check_event", "check_note", "check_server_time",
           "h2_stream_count", "published_keys", "same_user_sessions", "subscribe_request"]
